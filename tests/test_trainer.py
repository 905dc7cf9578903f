"""The trainer: flags and config validation, sharding choice, a sharded model against the unsharded one
(two gloo processes), a 2-process run that trains / evaluates / checkpoints and resumes on 1 rank,
kill-and-resume reproducing an uninterrupted run bit for bit, and the NaN / bad-data exits."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig
from torchrec.modules.embedding_configs import PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_pipeline.batch import Batch
from store.models.layers import EXCLUSIVE_INPUT
from trainer.config import ConfigError, parse_args
from trainer.distributed import TableInfo, choose_sharding_types

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


# -- tiny data -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from data_pipeline.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("trainer") / "data"
    generate_dataset(root, 2000, items=300, users=200, seed=0, progress=False)
    return root


def small_flags(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(data), "--model", "dnn", "--out", str(out), "--batch-size", "32",
        "--model.mlp_dims", "16", "--logging.progress", "false", "--logging.every_steps", "10",
        "--logging.tensorboard", "false", *extra,
    ]  # fmt: skip


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# -- config and flags ------------------------------------------------------------------------------
def test_bad_flags_name_flag_value_and_rule(data, tmp_path):
    with pytest.raises(ConfigError, match=r"--batch-size must be > 0, got 0"):
        parse_args(small_flags(data, tmp_path, "--batch-size", "0"))
    with pytest.raises(ConfigError, match=r"--model store needs --sids"):
        parse_args(small_flags(data, tmp_path, "--model", "store"))
    with pytest.raises(ConfigError, match=r"--model must be one of"):
        parse_args(small_flags(data, tmp_path, "--model", "nope"))
    with pytest.raises(ConfigError, match=r"--model.num_heads must divide"):
        parse_args(small_flags(data, tmp_path, "--model.num_heads", "5"))
    with pytest.raises(ConfigError, match=r"--sharding.tables expects"):
        parse_args(small_flags(data, tmp_path, "--sharding.tables", "t_item=diagonal"))
    with pytest.raises(ConfigError, match=r"--data must be an existing dataset folder"):
        parse_args(small_flags(tmp_path / "missing", tmp_path))


def test_cli_exit_code_2_for_bad_flag(data, tmp_path, capsys):
    from trainer.__main__ import main

    assert main(small_flags(data, tmp_path, "--epochs", "-1")) == 2
    assert "--epochs must be > 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--optim.dense_lr", "fast"], ["--optim.dense-lr", "'fast'"]),
        (["--logging.progress", "maybe"], ["--logging.progress", "'maybe'"]),
        (["--model.mlp_dims", "8,x"], ["--model.mlp-dims", "'8,x'"]),
        (["--checkpoint-every", "3"], ["--checkpoint-every", "--checkpoint.every"]),  # one flag per setting
    ],
)
def test_malformed_flags_exit_2_naming_flag_and_value(data, tmp_path, capsys, flags, named):
    with pytest.raises(SystemExit) as exit_:
        parse_args(small_flags(data, tmp_path, *flags))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and all(s in err for s in named), err


def test_flag_spellings_of_existing_commands(data, tmp_path):
    """Dashes or underscores, booleans as --flag/--no-flag on top and as a value in groups, int lists
    as comma lists: the command lines of the README, docs, tests and launchers keep working."""
    cfg = parse_args(small_flags(
        data, tmp_path, "--batch_size", "48", "--max-steps", "5", "--no-pipeline", "--no-bf16", "--resume",
        "--model.mlp_dims", "64,32", "--model.num-layers", "3", "--model.rotation", "false",
        "--model.vanilla_attention", "True", "--optim.sparse_lr", "0.1", "--eval.max_batches", "2",
        "--logging.tensorboard", "yes", "--checkpoint.every", "4", "--sharding.tables", "t_item=row_wise",
    ))  # fmt: skip
    assert (cfg.batch_size, cfg.max_steps, cfg.pipeline, cfg.bf16, cfg.resume) == (48, 5, False, False, True)
    m = cfg.model_config
    assert (m.mlp_dims, m.num_layers, m.rotation, m.vanilla_attention) == ((64, 32), 3, False, True)
    assert (cfg.optim.sparse_lr, cfg.eval.max_batches, cfg.checkpoint.every) == (0.1, 2, 4)
    assert (cfg.logging.progress, cfg.logging.tensorboard) == (False, True)
    assert cfg.table_overrides() == {"t_item": "row_wise"}


def test_sparse_lr_defaults_to_the_models_own(data, tmp_path):
    """Unset, --optim.sparse_lr is the model's default (FM and DeepFM learn their tables slower); a
    value given on the command line or in a TOML file wins for every model."""
    from store.models import registry

    def lr(*flags: str) -> float:
        return parse_args(small_flags(data, tmp_path, *flags)).optim.sparse_lr

    assert lr() == registry.SPARSE_LR == 0.05  # dnn
    assert lr("--model", "deepfm") == registry.get("deepfm").sparse_lr == 0.02
    assert lr("--model", "fm") == 0.02
    assert lr("--model", "deepfm", "--optim.sparse_lr", "0.05") == 0.05
    toml = tmp_path / "lr.toml"
    toml.write_text("[optim]\nsparse_lr = 1\n")  # an int in TOML is a float here
    assert lr("--config", str(toml), "--model", "fm") == 1.0
    toml.write_text('[optim]\nsparse_lr = "fast"\n')
    with pytest.raises(ConfigError, match=r"\[optim\] sparse_lr must be a number, got 'fast'"):
        lr("--config", str(toml))
    with pytest.raises(ConfigError, match="--optim.sparse_lr must be > 0, got -1.0"):
        lr("--optim.sparse_lr", "-1")


def test_help_documents_every_flag(capsys):
    import dataclasses
    import re

    from trainer.config import GROUPS, TrainConfig

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    # one entry per flag: the flag, its metavar, its docstring, its default
    out = capsys.readouterr().out
    entries = [" ".join(e.replace("│", " ").split()) for e in re.split(r"\n[│ ]+(?=--)", out)]

    def group_flags(prefix: str, group) -> list[str]:  # a nested group: --model.<name>.<field>
        return [
            flag
            for f in dataclasses.fields(group)
            for flag in (
                group_flags(f"{prefix}.{f.name}", getattr(group, f.name))
                if dataclasses.is_dataclass(getattr(group, f.name))
                else [f"--{prefix}.{f.name}"]
            )
        ]

    flags = [f"--{f.name}" for f in dataclasses.fields(TrainConfig) if f.name not in GROUPS.values()]
    for prefix, attr in GROUPS.items():
        flags += group_flags(prefix, getattr(TrainConfig(), attr))
    assert "--model.masknet.mode" in flags
    for flag in flags:
        entry = next((e for e in entries if re.match(rf"{flag.replace('_', '-')}[ ,]", e)), "")
        assert len(entry.split("(default:")[0].split()) >= 4, f"{flag}: no help text in {entry!r}"


def test_toml_config_and_flag_precedence(data, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'data = "{data}"\nbatch_size = 128\npipeline = false\n'
        '[model]\nname = "deepfm"\nembedding_dim = 8\nmlp_dims = [8, 4]\n'
        '[model.masknet]\nmode = "serial"\nblocks = 2\n[optim]\ndense_lr = 0.01\nwarmup_steps = 5\n'
    )
    flags = ["--batch-size", "64", "--optim.warmup_steps", "7", "--model.masknet.blocks", "4"]
    cfg = parse_args(["--config", str(toml), *flags])
    assert (cfg.batch_size, cfg.pipeline, cfg.model) == (64, False, "deepfm")
    assert cfg.model_config.embedding_dim == 8 and cfg.model_config.mlp_dims == (8, 4)
    assert (cfg.model_config.masknet.mode, cfg.model_config.masknet.blocks) == ("serial", 4)
    assert cfg.optim.dense_lr == 0.01 and cfg.optim.warmup_steps == 7
    toml.write_text("[optim]\nlearning_rate = 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown key \[optim\] learning_rate"):
        parse_args(["--config", str(toml), "--data", str(data)])


def test_auto_sharding_types():
    tables = [
        TableInfo("t_item", 1_000_000, 16, ("item_id",), True),
        TableInfo("t_age", 8, 16, ("age",), True),
        TableInfo("t_sid0", 256, 16, ("item_id_sid0",), True, exclusive_input=True),
        TableInfo("t_sid_seq", 256, 16, ("hist_sid0",), False, exclusive_input=True),
        TableInfo("t_hist", 256, 16, ("hist",), False),
    ]
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    # tiny SID codebooks replicate (sequence ones on GPU only); a tiny sequence table that shares
    # the batch KJT is sharded
    assert choose_sharding_types(tables, "auto", {}, 2, cpu, 4096) == {
        "t_item": "table_wise", "t_age": "data_parallel", "t_sid0": "data_parallel",
        "t_sid_seq": "table_wise", "t_hist": "table_wise",
    }  # fmt: skip
    on_gpu = choose_sharding_types(tables, "auto", {}, 8, gpu, 4096)
    assert (on_gpu["t_sid0"], on_gpu["t_sid_seq"], on_gpu["t_hist"]) == ("data_parallel",) * 2 + ("row_wise",)
    with pytest.raises(ValueError, match=r"--sharding.tables t_hist=data_parallel: t_hist is a sequence"):
        choose_sharding_types(tables, "auto", {"t_hist": "data_parallel"}, 2, cpu, 4096)
    assert choose_sharding_types(tables, "auto", {}, 8, gpu, 4096)["t_item"] == "row_wise"
    assert (
        choose_sharding_types(tables, "auto", {"t_age": "column_wise"}, 2, cpu, 4096)["t_age"]
        == "column_wise"
    )
    with pytest.raises(ValueError, match=r"--sharding.tables t_item=row_wise: row_wise sharding needs GPUs"):
        choose_sharding_types(tables, "auto", {"t_item": "row_wise"}, 2, cpu, 4096)
    with pytest.raises(ValueError, match=r"unknown tables \['t_nope'\]"):
        choose_sharding_types(tables, "auto", {"t_nope": "table_wise"}, 2, cpu, 4096)


# -- LR schedule in the checkpoint -------------------------------------------------------------------
def test_scheduler_state_is_tensors_and_restores_position_and_lrs():
    """A fresh scheduler loaded from `scheduler_state` after k steps is the one that took them: same
    state_dict, same LRs on the param groups now and after the next step."""
    from trainer.config import OptimConfig
    from trainer.optim import load_scheduler_state, lr_factor, scheduler_state, scheduler_state_at

    cfg = OptimConfig(warmup_steps=4, decay="cosine", min_lr_ratio=0.1)

    def factor(step: int) -> float:
        return lr_factor(step, cfg, total_steps=20)

    def every_other(step: int) -> float:  # like the rotation group
        return factor(step) if step % 2 == 0 else 0.0

    def scheduled() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (0.1, 0.03)])
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, [factor, every_other])

    def lrs(opt: torch.optim.Optimizer) -> list[float]:
        return [g["lr"] for g in opt.param_groups]

    for k in (1, 6):
        opt, ref = scheduled()
        for _ in range(k):
            opt.step()
            ref.step()
        state = scheduler_state(ref)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        assert {n: int(v) for n, v in state.items()} == {n: int(v) for n, v in scheduler_state_at(k).items()}
        new_opt, resumed = scheduled()
        load_scheduler_state(resumed, {n: v.clone() for n, v in state.items()})
        assert resumed.state_dict() == ref.state_dict()
        assert lrs(new_opt) == lrs(opt) != [0.1 * factor(0), 0.03 * every_other(0)]
        for o, sched in ((opt, ref), (new_opt, resumed)):
            o.step()
            sched.step()
        assert lrs(new_opt) == lrs(opt)


# -- sharded == unsharded (2 gloo processes) ---------------------------------------------------------
@dataclass
class TinyOutput:
    logits: torch.Tensor
    aux_losses: dict = field(default_factory=dict)


class Tiny(nn.Module):
    """B rows; pooled tables for item/user/age, a sequence table for the history, and a sequence
    table on a KJT of its own (``batch.sid``, like STORE's codebooks); D=16."""

    def __init__(self, device=None) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name="t_item", embedding_dim=16, num_embeddings=500, feature_names=["item"]
                ),
                EmbeddingBagConfig(
                    name="t_user", embedding_dim=16, num_embeddings=300, feature_names=["user"]
                ),
                EmbeddingBagConfig(name="t_age", embedding_dim=16, num_embeddings=8, feature_names=["age"]),
            ],
            device=device,
        )
        self.ec = EmbeddingCollection(
            tables=[
                EmbeddingConfig(name="t_hist", embedding_dim=16, num_embeddings=500, feature_names=["hist"])
            ],
            device=device,
        )
        self.sid_ebc = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name="t_sid0", embedding_dim=16, num_embeddings=8,
                                       feature_names=["item_sid0", "hist_sid0"], pooling=PoolingType.MEAN)],
            device=device,
        )  # fmt: skip
        setattr(self.sid_ebc, EXCLUSIVE_INPUT, True)
        self.head = nn.Sequential(nn.Linear(3 * 16 + 16 + 32 + 2, 8), nn.ReLU(), nn.Linear(8, 1))

    def rotation_parameters(self) -> list:
        return []

    def forward(self, batch: Batch) -> TinyOutput:
        pooled = self.ebc(batch.sparse).values()  # B x 48
        hist = self.ec(batch.sparse)["hist"]
        dense = torch.zeros(batch.batch_size, 16) + 0.0
        dense = dense.index_add(
            0, torch.repeat_interleave(torch.arange(batch.batch_size), hist.lengths()), hist.values()
        )
        sid = self.sid_ebc(batch.sid).values()  # B x 32
        x = torch.cat([pooled, dense, sid, batch.dense], dim=1)
        return TinyOutput(self.head(x).squeeze(1), {"l2": 1e-3 * x.pow(2).mean()})


def tiny_batch(seed: int, b: int = 12) -> Batch:
    g = torch.Generator().manual_seed(seed)
    hist_len = torch.randint(0, 4, (b,), generator=g)
    ones = torch.ones(b, dtype=torch.long)
    values = torch.cat([
        torch.randint(0, 500, (b,), generator=g), torch.randint(0, 300, (b,), generator=g),
        torch.randint(0, 8, (b,), generator=g), torch.randint(0, 500, (int(hist_len.sum()),), generator=g),
    ])  # fmt: skip
    kjt = KeyedJaggedTensor(keys=["item", "user", "age", "hist"], values=values,
                            lengths=torch.cat([ones, ones, ones, hist_len]))  # fmt: skip
    labels = (torch.rand(b, generator=g) > 0.5).float()
    sid = KeyedJaggedTensor(keys=["item_sid0", "hist_sid0"],
                            values=torch.randint(0, 8, (b + int(hist_len.sum()),), generator=g),
                            lengths=torch.cat([ones, hist_len]))  # fmt: skip
    return Batch(torch.randn(b, 2, generator=g), kjt, labels, torch.arange(b), values[:b].clone(), sid)


def _sharded_vs_unsharded(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from trainer import distributed as D
    from trainer.step import TrainModule

    env = D.init_distributed("cpu")
    torch.manual_seed(0)
    module = TrainModule(Tiny(device=torch.device("meta")), False, "cpu")
    kinds = {
        "t_item": "table_wise",
        "t_user": "column_wise",
        "t_age": "data_parallel",
        "t_hist": "table_wise",
        "t_sid0": "data_parallel",
    }
    dmp, _ = D.shard_model(module, env, kinds, "rowwise_adagrad", 0.1)
    batch = tiny_batch(1)
    dmp.eval()
    with torch.no_grad():
        _, sharded = dmp(batch)
    # The full weights on rank 0: gather every shard.
    full = {}
    for key, value in dmp.state_dict().items():
        if hasattr(value, "local_shards"):
            t = torch.empty(value.size()) if rank == 0 else None
            value.gather(dst=0, out=t)
            full[key] = t
        else:
            full[key] = value
    if rank == 0:
        plain = TrainModule(Tiny(), False, "cpu")
        plain.load_state_dict(full)
        plain.eval()
        with torch.no_grad():
            _, ref = plain(batch)
        torch.save({"sharded": sharded.logits, "plain": ref.logits}, out)
    D.close_distributed()


@pytest.mark.slow
def test_sharded_model_matches_unsharded(tmp_path):
    from trainer.distributed import _free_port

    out = tmp_path / "logits.pt"
    mp.spawn(_sharded_vs_unsharded, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    assert got["sharded"].shape == (12,)
    torch.testing.assert_close(got["sharded"], got["plain"], rtol=1e-5, atol=1e-6)


# -- end to end ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_process_run_trains_evaluates_checkpoints_and_resumes_on_one_rank(data, tmp_path):
    out = tmp_path / "run"
    cmd = [PY, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "trainer"]
    flags = small_flags(data, out, "--checkpoint.every", "10", "--eval.every_steps", "10", "--max-steps", "20",
                        "--logging.tensorboard", "true", "--sharding.replicate_max_rows", "250")  # fmt: skip
    r = subprocess.run(cmd + flags, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 20
    assert 0.3 < summary["auc"] < 1.0 and 0.0 < summary["logloss"] < 1.0
    assert len(summary["embedding_bytes_per_rank"]) == 2 and min(summary["embedding_bytes_per_rank"]) > 0
    assert {row["sharding"] for row in summary["sharding_plan"]} >= {"table_wise", "data_parallel"}
    assert summary["test"]["rows"] == 200  # every test row once, padding dropped, gathered over ranks
    history = json.loads((out / "metrics.json").read_text())
    assert [h["step"] for h in history if h["split"] == "valid"] == [10, 20]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_10", "step_20"]
    from trainer.checkpoint import CheckpointManager

    assert {"scheduler.last_epoch", "scheduler._step_count"} <= CheckpointManager.keys(
        out / "checkpoints" / "step_20"
    )
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    # Resume on ONE rank from the 2-rank checkpoint (tables resharded, reader rows re-split).
    r = subprocess.run(
        [PY, "-m", "trainer", *small_flags(data, out, "--resume", "--max-steps", "25",
                                           "--sharding.replicate_max_rows", "250")],
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr and "step_20" in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 25


@pytest.mark.slow
def test_two_process_store_replicates_sid_codebooks_and_shards_the_rest(data, tmp_path):
    """Auto sharding on 2 gloo ranks: the SID codebooks (batch.sid, mean-pooled bags) are replicated,
    so STORE sends no item lookups between ranks; it trains, evaluates and checkpoints."""
    from store.sid import SidTable

    sids = tmp_path / "sids"
    codes = torch.randint(0, 16, (300, 3), generator=torch.Generator().manual_seed(0))
    SidTable.from_codes(codes, codebook_size=16, features={"user_id": codes[:200]}).save(sids)
    out = tmp_path / "store"
    cmd = [PY, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "trainer"]
    flags = small_flags(data, out, "--model", "store", "--sids", str(sids), "--max-steps", "8",
                        "--model.num_layers", "1", "--eval.max_batches", "2")  # fmt: skip
    r = subprocess.run(cmd + flags, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8 and summary["pipeline"]
    plan = {row["table"]: row["sharding"] for row in summary["sharding_plan"]}
    assert {plan[f"t_sid{k}"] for k in range(3)} == {"data_parallel"}
    assert "t_item" not in plan
    assert (out / "checkpoints" / "step_8").is_dir()


def _run_in_process(flags: list[str]) -> dict:
    from trainer.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses (OMP_NUM_THREADS=1): same float reductions
    try:
        return train(parse_args(flags))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical(data, tmp_path):
    # the LR changes every step (warm-up, then cosine decay): a resume must restore the schedule too
    run = ["--epochs", "2", "--checkpoint.every", "3", "--optim.warmup_steps", "30",
           "--optim.decay", "cosine"]  # fmt: skip
    ref = _run_in_process(small_flags(data, tmp_path / "ref", *run))
    assert ref["steps"] == 2 * (1600 // 32)

    out = tmp_path / "killed"
    kill_at = random.Random().choice(range(6, 60, 3))
    proc = subprocess.Popen(
        [PY, "-m", "trainer", *small_flags(data, out, *run)],
        env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 240
    while not (out / "checkpoints" / f"step_{kill_at}").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before the kill point"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()

    resumed = _run_in_process(small_flags(data, out, *run, "--resume"))
    assert resumed["steps"] == ref["steps"]
    for key in ("auc", "gauc", "logloss", "tail_auc"):
        assert resumed[key] == ref[key], (key, kill_at)  # bit-identical on CPU
    assert resumed["valid"][-1]["auc"] == ref["valid"][-1]["auc"]
    # the validations before the kill come back from metrics.json, the best weights from OUT/best
    assert [v["auc"] for v in resumed["valid"]] == [v["auc"] for v in ref["valid"]]
    assert resumed["best"] == ref["best"] and resumed["test_last"] == ref["test_last"]


def test_nan_loss_exits_3_without_checkpoint_for_that_step(data, tmp_path, capsys):
    from trainer.__main__ import main

    out = tmp_path / "nan"
    lr = [
        "--optim.dense",
        "sgd",
        "--optim.dense_lr",
        "1e30",
        "--optim.sparse",
        "sgd",
        "--optim.sparse_lr",
        "1e30",
    ]
    assert main(small_flags(data, out, "--checkpoint.every", "1", "--pipeline", *lr)) == 3
    err = capsys.readouterr().err
    assert "training loss is not finite at step" in err
    bad_step = int(err.split("at step ")[1].split()[0])
    saved = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))
    assert saved and max(saved) == bad_step - 1
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_sid_table_that_does_not_fit_the_data_exits_2(data, tmp_path, capsys):
    from store.sid import SidTable
    from trainer.__main__ import main

    zeros = torch.zeros(200, 2, dtype=torch.long)  # codes for the 200 users, for 10 of the 300 items
    SidTable.from_codes(zeros[:10], codebook_size=4, features={"user_id": zeros}).save(tmp_path / "sids")
    assert main(small_flags(data, tmp_path / "o", "--model", "store", "--sids", str(tmp_path / "sids"))) == 2
    assert "covers 10 items" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["store", "id", "deepfm"])
def test_zoo_models_train_with_the_pipeline(data, tmp_path, model):
    from store.sid import SidTable

    sids = tmp_path / "sids"
    codes = torch.randint(0, 16, (300, 3), generator=torch.Generator().manual_seed(0))
    SidTable.from_codes(codes, codebook_size=16, features={"user_id": codes[:200]}).save(sids)
    extra = ["--max-steps", "6", "--eval.max_batches", "2", "--model.num_layers", "1"]
    # every table fused and sharded (not replicated): FBGEMM's width rules apply to all of them
    extra += ["--sharding.default", "table_wise"]
    if model == "store":
        extra += ["--sids", str(sids)]
    summary = _run_in_process(small_flags(data, tmp_path / model, "--model", model, *extra))
    assert summary["steps"] == 6 and summary["pipeline"], summary["pipeline_blocker"]
    assert 0.0 < summary["logloss"] < 2.0 and 0.0 <= summary["auc"] <= 1.0
    if model == "store":  # SID codebooks (16 rows): sharded here by --sharding.default table_wise
        assert {r["table"] for r in summary["sharding_plan"]} >= {"t_sid0", "t_sid1", "t_sid2"}
