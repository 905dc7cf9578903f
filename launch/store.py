"""TorchX components: ``torchx run [-s SCHEDULER] launch/store.py:train|compare|frontier ...``.

``train`` launches the trainer (``python -m trainer``) as a distributed job through TorchX's own
``dist.ddp`` component (torchrun: nodes x processes per node, c10d rendezvous), so the same
command works on ``local_cwd`` here and on the cluster schedulers TorchX ships (slurm, kubernetes,
aws_batch, ...; see docs/launch.md). ``compare`` runs the whole ID-vs-SID comparison
(``python -m launch.compare``) as a one-process job that starts its own trainer runs; ``frontier``
(``python -m launch.frontier``) likewise, every arm at every embedding budget.

The annotations are plain ``typing`` types (no ``from __future__ import annotations``): TorchX
reads them at run time to build each component's ``--help`` and to convert the flags.
"""

# ruff: noqa: UP006, UP035, UP045  (TorchX 0.7 parses typing.Optional/Dict/List, not X | None)
import os
from typing import Dict, List, Optional, Sequence

import torchx
import torchx.specs as specs
from torchx.components import dist
from torchx.specs.finder import ComponentValidationException

from data_pipeline.cli import ConfigError
from launch.budget import parse_budgets
from store.models import registry
from store.tokenizer.config import option_flags

SHARDING = ("auto", "table_wise", "row_wise", "column_wise", "data_parallel")
"""What --sharding accepts (the trainer's --sharding.default)."""
MODELS = registry.names()
"""The trainer's model zoo (store.models.registry, which imports no torch)."""
METHODS = ("opmq", "rqvae", "opq")
"""The tokenizers (store.sid.METHODS, repeated for the same reason; a test checks both lists agree): the
one tokenizer option checked when the job is built."""


class ComponentArgError(ComponentValidationException, ValueError):
    """A bad argument of a component, named with its flag (``--model``, ``-j``). ``torchx run`` prints
    the message of a ComponentValidationException alone (no traceback) and exits 1; a caller of the
    component function gets a ValueError."""


def _check(flag: str, ok: bool, rule: str, value: object) -> None:
    if not ok:
        dashes = "-" if len(flag) == 1 else "--"  # torchx spells one-letter arguments -j, -h
        raise ComponentArgError(f"{dashes}{flag} {rule}, got {value!r}")


def _check_j(j: str) -> None:
    """``-j`` as dist.ddp reads it ([[MIN:]MAX x]NPROC), with every count >= 1 and MIN <= MAX."""
    try:
        min_nnodes, max_nnodes, nproc, _ = dist.parse_nnodes(j)
    except ValueError:
        _check("j", False, "must be NNODESxNPROC_PER_NODE, MIN:MAXxNPROC or NPROC (e.g. 1x2, 1:4x8, 2)", j)
        return
    _check("j", min(min_nnodes, max_nnodes, nproc) >= 1, "needs at least one node and one process", j)
    _check("j", min_nnodes <= max_nnodes, "needs MIN <= MAX nodes", j)


def _path_env(env: Optional[Dict[str, str]], venv: str) -> Dict[str, str]:
    """The role's env; with ``venv`` its bin/ goes first on PATH (the local schedulers prepend it)."""
    out = dict(env or {})
    if venv:
        bin_dir = os.path.join(os.path.abspath(venv), "bin")
        _check("venv", os.path.isdir(bin_dir), "must be a virtualenv folder with a bin/ inside", venv)
        out["PATH"] = bin_dir + (os.pathsep + out["PATH"] if out.get("PATH") else "")
    return out


def _tokenizer_flags(options: Dict[str, str]) -> List[str]:
    """``--tokenizer NAME=VALUE,...`` -> launch.compare's ``--tokenizer.NAME VALUE`` flags: an unknown
    name, a bad boolean or a method not in METHODS is refused naming ``--tokenizer`` (the other values are
    checked by launch.compare, as the tokenizer checks them, before any stage runs)."""
    try:
        flags = option_flags(options, prefix="--tokenizer.")
    except ConfigError as e:
        raise ComponentArgError(f"--tokenizer: {e}") from None
    method = options.get("method", METHODS[0])
    _check("tokenizer", method in METHODS, f"method must be one of {', '.join(METHODS)}", method)
    return flags


def train(
    *trainer_args: str,
    data: str,
    model: str = "store",
    sids: str = "",
    high_card: str = "",
    out: str = "runs/train",
    epochs: int = 1,
    batch_size: int = 512,
    max_steps: int = 0,
    sharding: str = "auto",
    sharding_tables: str = "",
    device: str = "auto",
    j: str = "1x2",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 4096,
    h: Optional[str] = None,
    max_retries: int = 0,
    checkpoint_every: int = 0,
    tensorboard_dir: str = "",
    name: str = "store-train",
    image: str = torchx.IMAGE,
    venv: str = "",
    env: Optional[Dict[str, str]] = None,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Train one model of the zoo with the distributed trainer (torchrun over nodes x processes).

    Extra trainer flags go after ``--``, e.g. ``-- --optim.dense_lr 3e-4 --model.num_layers 3``
    (see ``python -m trainer --help``).

    Args:
        trainer_args: extra flags passed to ``python -m trainer`` as they are
        data: dataset folder or object-store URI (s3://bucket/syn, gs://...; spec.json, train/, valid/,
            test/), as the job's hosts see it
        model: model of the zoo (store.models.registry.MODELS): store, id, dnn, ...; a wrong name
            is refused with the whole list
        sids: SID table folder from ``python -m store.tokenizer`` (needed by model store; gives model id
            the same token count)
        high_card: high-cardinality features 'f1,f2' overriding the dataset's ('none': only the item),
            which STORE tokenizes and the ID model keeps as raw-ID tables
        out: output folder of the run (checkpoints/, tensorboard/, metrics.json, summary.json)
        epochs: passes over the training split
        batch_size: rows per batch per process
        max_steps: stop after this many steps (0: run all epochs)
        sharding: sharding type of every embedding table: auto, table_wise, row_wise, column_wise or
            data_parallel (row_wise needs GPUs)
        sharding_tables: per-table overrides 'table=type,...' (e.g. 't_item=row_wise')
        device: auto (cuda if the host has GPUs), cpu or cuda
        j: {nnodes}x{nproc_per_node} (or {min_nnodes}:{max_nnodes}x{nproc_per_node}); on GPU hosts
            nproc_per_node must not exceed the GPUs per node
        cpu: CPUs per node (replica)
        gpu: GPUs per node (replica)
        memMB: memory per node in MB
        h: a registered named resource (overrides cpu, gpu and memMB)
        max_retries: restarts of a failed job; when > 0 the trainer runs with --resume and restarts
            continue from the newest checkpoint: the scheduler restarts the whole job (a lost node),
            and torchrun restarts the workers of every node (a crashed worker) up to max_retries
            times (PET_MAX_RESTARTS; the only restarts on local_cwd; with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1,
            so that a multi-node restart cannot hang, pytorch/pytorch#135712)
        checkpoint_every: write a checkpoint every N steps (0: only at the end; with max_retries > 0
            and 0 here, every 500 steps)
        tensorboard_dir: write the run's TensorBoard events to TENSORBOARD_DIR/<run name> (a folder
            shared by several runs shows them side by side); empty: OUT/tensorboard
        name: job name ({experiment}/{run} or {run})
        image: container image (docker/kubernetes/aws_batch); local_cwd and slurm use the current folder
        venv: a virtualenv whose bin/ goes first on PATH (local schedulers: .venv of this checkout)
        env: environment variables of every process, e.g. NCCL_DEBUG=INFO,OMP_NUM_THREADS=4
        rdzv_port: port of the c10d rendezvous on the first node (multi-node jobs)
        mounts: mounts for container schedulers (type=bind,src=/host,dst=/job[,readonly])
    """
    _check("model", model in MODELS, f"must be one of {', '.join(MODELS)}", model)
    _check("sharding", sharding in SHARDING, f"must be one of {', '.join(SHARDING)}", sharding)
    _check("device", device in ("auto", "cpu", "cuda"), "must be one of auto, cpu, cuda", device)
    _check("data", bool(data), "is required (a dataset folder or s3:// / gs:// URI)", data)
    _check("sids", model != "store" or bool(sids), "is required by --model store (a SID table folder)", sids)
    for flag, value in (("epochs", epochs), ("batch_size", batch_size)):
        _check(flag, value > 0, "must be > 0", value)
    for flag, value in (
        ("max_steps", max_steps),
        ("max_retries", max_retries),
        ("checkpoint_every", checkpoint_every),
    ):
        _check(flag, value >= 0, "must be >= 0", value)
    _check("gpu", gpu >= 0, "must be >= 0", gpu)
    _check("cpu", cpu > 0, "must be > 0", cpu)
    _check("memMB", memMB > 0, "must be > 0", memMB)
    _check("rdzv_port", 0 < rdzv_port < 65536, "must be a port number (1..65535)", rdzv_port)
    _check_j(j)

    args = [
        "--data", data, "--model", model, "--out", out, "--epochs", str(epochs),
        "--batch-size", str(batch_size), "--device", device, "--sharding.default", sharding,
    ]  # fmt: skip
    if sids:
        args += ["--sids", sids]
    if high_card:
        args += ["--high-card", high_card]
    if max_steps:
        args += ["--max-steps", str(max_steps)]
    if sharding_tables:
        args += ["--sharding.tables", sharding_tables]
    if max_retries > 0:  # a restarted job continues where the last checkpoint left it
        args += ["--resume", "--checkpoint.every", str(checkpoint_every or 500)]
        env = {
            "PET_MAX_RESTARTS": str(max_retries),  # torchrun's --max-restarts
            # A fresh TCP store per rendezvous round for the workers, not one shared with the agent: the
            # shared store keys each restart by TORCHELASTIC_RESTART_COUNT, which differs across nodes when
            # one node's worker crashed and the others were only restarted for it (pytorch/pytorch#135712),
            # and the restarted workers then wait for each other in init_process_group forever.
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
            **(env or {}),
        }
    elif checkpoint_every:
        args += ["--checkpoint.every", str(checkpoint_every)]
    if tensorboard_dir:
        run_name = name.rstrip("/").split("/")[-1] or model
        args += ["--logging.tensorboard_dir", os.path.join(tensorboard_dir, run_name)]
    args += list(trainer_args)

    app = dist.ddp(
        *args,
        m="trainer",
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=j,
        env=_path_env(env, venv),
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
    )
    return app


def _runs_app(
    module: str,
    role: str,
    name: str,
    trainer_args: Sequence[str],
    extra_args: List[str],
    extra_counts: Dict[str, int],
    *,
    data: str,
    out: str,
    epochs: int,
    batch_size: int,
    nproc: int,
    max_steps: int,
    tokenizer: Optional[Dict[str, str]],
    sids: str,
    high_card: str,
    seed: int,
    seeds: int,
    cpu: int,
    gpu: int,
    memMB: int,
    h: Optional[str],
    image: str,
    venv: str,
    env: Optional[Dict[str, str]],
) -> specs.AppDef:
    """The one-node job of a launcher that tokenizes and trains several runs (``python -m module``:
    launch.compare, launch.frontier): their shared arguments checked and spelled, ``extra_args`` after
    them and ``extra_counts`` ({flag: value}, checked > 0 and passed as --flag value)."""
    _check("data", bool(data), "is required (a dataset folder or s3:// / gs:// URI)", data)
    tokenizer_flags = _tokenizer_flags(tokenizer or {})
    counts = {"epochs": epochs, "batch_size": batch_size, "nproc": nproc, "seeds": seeds, **extra_counts}
    for flag, value in (*counts.items(), ("cpu", cpu), ("memMB", memMB)):
        _check(flag, value > 0, "must be > 0", value)
    _check("max_steps", max_steps >= 0, "must be >= 0", max_steps)
    _check("gpu", gpu >= 0, "must be >= 0", gpu)
    args = [
        "-m", module, "--data", data, "--out", out, *extra_args, "--epochs", str(epochs),
        "--batch-size", str(batch_size), "--nproc", str(nproc), "--max-steps", str(max_steps),
        "--seed", str(seed), "--seeds", str(seeds),
        *(a for flag, value in extra_counts.items() for a in (f"--{flag.replace('_', '-')}", str(value))),
        *tokenizer_flags,
    ]  # fmt: skip
    if sids:
        args += ["--sids", sids]
    if high_card:
        args += ["--high-card", high_card]
    args += [f"--trainer.{a[2:]}" if a.startswith("--") else a for a in trainer_args]
    return specs.AppDef(
        name=name,
        roles=[
            specs.Role(
                name=role,
                image=image,
                entrypoint="python",
                args=args,
                env=_path_env(env, venv),
                resource=specs.resource(cpu=cpu, gpu=gpu, memMB=memMB, h=h),
            )
        ],
    )


def compare(
    *trainer_args: str,
    data: str,
    out: str = "runs/compare",
    epochs: int = 3,
    batch_size: int = 512,
    nproc: int = 1,
    max_steps: int = 0,
    tokenizer: Optional[Dict[str, str]] = None,
    sids: str = "",
    high_card: str = "",
    seed: int = 0,
    seeds: int = 1,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,
    name: str = "store-compare",
    image: str = torchx.IMAGE,
    venv: str = "",
    env: Optional[Dict[str, str]] = None,
) -> specs.AppDef:
    """ID baseline vs STORE on one dataset: tokenize, train both with the same budget, write a report.

    Runs ``python -m launch.compare`` on one node; it starts the tokenizer and the two trainer runs
    (each on ``nproc`` processes) and writes OUT/report/report.md with plots and both TensorBoard
    runs. Stages whose outputs exist are skipped, so a restarted job continues. Trainer flags for both
    models go after ``--`` in the trainer's spelling (``--model.num_layers 3``) and reach launch.compare as
    its ``--trainer.*`` section (``--trainer.model.num_layers 3``); the tokenizer's options are ``--tokenizer NAME=VALUE,...``
    (launch.compare's ``--tokenizer.NAME VALUE``), each default the tokenizer's own.

    Args:
        trainer_args: extra flags for both trainer runs (e.g. --model.num_layers 3)
        data: dataset folder or object-store URI (s3://..., gs://...)
        out: output folder (sids/, id/, store/, report/)
        epochs: training epochs of each model (the per-epoch table shows the one-epoch effect)
        batch_size: rows per batch per process
        nproc: processes per trainer run (torchrun on this node)
        max_steps: stop each run after this many steps (0: all epochs)
        tokenizer: tokenizer options as NAME=VALUE pairs, e.g. num-sids=8,method=rqvae,min-steps=1000,
            select.train-rows=5000,disambiguate=true (the flags of python -m store.tokenizer --help; unset:
            the tokenizer's defaults, K=num-sids and C=codebook-size among them)
        sids: an existing SID table folder to use instead of tokenizing
        high_card: high-cardinality features 'f1,f2' overriding the dataset's ('none': only the item)
        seed: seed of the tokenizer and of both runs (the first seed with seeds > 1)
        seeds: train each arm this many times (seeds seed, seed+1, ...; tokenizer included): OUT/<arm>/seed<k>/,
            and the report gives mean +- std and the paired STORE - ID test with its verdict
        cpu: CPUs of the node
        gpu: GPUs of the node
        memMB: memory of the node in MB
        h: a registered named resource (overrides cpu, gpu and memMB)
        name: job name
        image: container image (container schedulers)
        venv: a virtualenv whose bin/ goes first on PATH (local schedulers: .venv of this checkout)
        env: environment variables, e.g. OMP_NUM_THREADS=4
    """
    return _runs_app(
        "launch.compare", "compare", name, trainer_args, [], {},
        data=data, out=out, epochs=epochs, batch_size=batch_size, nproc=nproc, max_steps=max_steps,
        tokenizer=tokenizer, sids=sids, high_card=high_card, seed=seed, seeds=seeds, cpu=cpu, gpu=gpu,
        memMB=memMB, h=h, image=image, venv=venv, env=env,
    )  # fmt: skip


def frontier(
    *trainer_args: str,
    data: str,
    out: str = "runs/frontier",
    arms: str = "id,store,id-hash,id-zch,sid-prefix,hybrid",
    budgets: str = "1,0.1,0.01",
    epochs: int = 3,
    batch_size: int = 512,
    nproc: int = 1,
    max_steps: int = 0,
    tokenizer: Optional[Dict[str, str]] = None,
    sids: str = "",
    high_card: str = "",
    seed: int = 0,
    seeds: int = 1,
    resamples: int = 1000,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,
    name: str = "store-frontier",
    image: str = torchx.IMAGE,
    venv: str = "",
    env: Optional[Dict[str, str]] = None,
) -> specs.AppDef:
    """Accuracy-memory frontier: every arm at every embedding budget and seed, test AUC against bytes.

    Runs ``python -m launch.frontier`` on one node; it starts the tokenizer and the trainer runs (each on
    ``nproc`` processes) and writes OUT/frontier.md, frontier.json and frontier.png. Finished runs are
    reused, so a restarted job continues. Trainer flags go after ``--`` in the trainer's spelling
    (``--model.num_layers 3``) and reach launch.frontier as ``--trainer.*``; the tokenizer's options are
    ``--tokenizer NAME=VALUE,...``.

    Args:
        trainer_args: extra flags for every trainer run (e.g. --model.num_layers 3)
        data: dataset folder or object-store URI (s3://..., gs://...)
        out: output folder (sids/, one folder per arm, logs/, frontier.md)
        arms: models to train, comma-separated, id (the baseline) among them
        budgets: row budgets of the budgeted arms: fractions of the largest tokenized feature's rows,
            <n>r rows or <x>MiB per tokenized feature, e.g. 1,0.1,4096r,2MiB
        epochs: training epochs of each run
        batch_size: rows per batch per process
        nproc: processes per trainer run (torchrun on this node)
        max_steps: stop each run after this many steps (0: all epochs)
        tokenizer: tokenizer options as NAME=VALUE pairs (the flags of python -m store.tokenizer --help)
        sids: an existing SID table folder to use instead of tokenizing
        high_card: high-cardinality features 'f1,f2' overriding the dataset's ('none': only the item)
        seed: the first seed
        seeds: seeds per run (seed, seed+1, ...; tokenizer included)
        resamples: bootstrap resamples of the paired intervals against id
        cpu: CPUs of the node
        gpu: GPUs of the node
        memMB: memory of the node in MB
        h: a registered named resource (overrides cpu, gpu and memMB)
        name: job name
        image: container image (container schedulers)
        venv: a virtualenv whose bin/ goes first on PATH (local schedulers: .venv of this checkout)
        env: environment variables, e.g. OMP_NUM_THREADS=4
    """
    arm_list = [a.strip() for a in arms.split(",") if a.strip()]
    for arm in arm_list:
        _check("arms", arm in MODELS, f"names models of the zoo ({', '.join(MODELS)})", arms)
    _check(
        "arms", "id" in arm_list and len(set(arm_list)) == len(arm_list), "must name id, each arm once", arms
    )
    try:
        parse_budgets(budgets)
    except ConfigError as e:
        raise ComponentArgError(str(e)) from None
    return _runs_app(
        "launch.frontier", "frontier", name, trainer_args, ["--arms", arms, "--budgets", budgets],
        {"resamples": resamples},
        data=data, out=out, epochs=epochs, batch_size=batch_size, nproc=nproc, max_steps=max_steps,
        tokenizer=tokenizer, sids=sids, high_card=high_card, seed=seed, seeds=seeds, cpu=cpu, gpu=gpu,
        memMB=memMB, h=h, image=image, venv=venv, env=env,
    )  # fmt: skip
