"""TorchX components: valid AppDefs for several argument sets, --help, and a real 2-process local_cwd job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torchx.specs import AppDef
from torchx.specs.builders import materialize_appdef
from torchx.specs.file_linter import validate

from launch import store as comp

REPO = Path(__file__).resolve().parents[1]
COMPONENT = REPO / "launch" / "store.py"
VENV_BIN = Path(sys.executable).parent


def env_with_venv() -> dict[str, str]:
    """torchrun / python of this interpreter first on PATH (what the local_cwd scheduler runs)."""
    env = os.environ.copy()
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    return env


def cmd_of(app: AppDef) -> str:
    role = app.roles[0]
    assert role.entrypoint == "bash" and role.args[0] == "-c"
    return role.args[1]


def test_components_pass_torchx_linter():
    for fn in ("train", "compare", "frontier"):
        assert validate(str(COMPONENT), fn) == [], fn


def test_train_appdef_single_node_cpu():
    app = comp.train(data="d", model="store", sids="s", out="o", epochs=2, batch_size=64)
    role = app.roles[0]
    cmd = cmd_of(app)
    assert role.num_replicas == 1 and role.resource.cpu == 2 and role.resource.gpu == 0
    assert "torchrun" in cmd and "--nproc_per_node 2" in cmd and "-m trainer" in cmd
    for part in ("--data d", "--model store", "--sids s", "--out o", "--epochs 2", "--batch-size 64"):
        assert part in cmd
    assert "--resume" not in cmd and role.max_retries == 0


def test_train_appdef_multi_node_gpu_with_retries_and_extra_flags():
    app = comp.train(
        "--optim.dense_lr", "3e-4", data="/d", model="id", j="4x8", gpu=8, cpu=64, memMB=512_000,
        max_retries=3, sharding="row_wise", sharding_tables="t_item=row_wise", env={"NCCL_DEBUG": "INFO"},
    )  # fmt: skip
    role = app.roles[0]
    cmd = cmd_of(app)
    assert role.num_replicas == 4 and role.resource.gpu == 8 and role.resource.memMB == 512_000
    assert role.max_retries == 3 and role.env["NCCL_DEBUG"] == "INFO"
    assert role.env["PET_MAX_RESTARTS"] == "3"
    # restarted workers get a fresh store per round (a shared one can hang multi-node restarts)
    assert role.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert "--nnodes 4" in cmd and "--nproc_per_node 8" in cmd
    assert "--resume --checkpoint.every 500" in cmd  # restarts continue from the newest checkpoint
    assert "--sharding.default row_wise" in cmd and "--sharding.tables t_item=row_wise" in cmd
    assert cmd.endswith("--optim.dense_lr 3e-4")
    assert "--sids" not in cmd


def test_train_appdef_named_resource_tensorboard_and_venv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    app = comp.train(
        data="d", model="dnn", h="aws_p4d.24xlarge", tensorboard_dir="tb", name="exp/run1", venv=str(venv)
    )
    role = app.roles[0]
    cmd = cmd_of(app)
    assert role.resource.gpu == 8  # from the named resource
    assert "--logging.tensorboard_dir tb/run1" in cmd
    assert role.env["PATH"].split(os.pathsep)[0] == str(venv / "bin")


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"model": "nope"}, "--model"),
        ({"model": "store"}, "--sids"),
        ({"model": "id", "sharding": "diagonal"}, "--sharding"),
        ({"model": "id", "epochs": 0}, "--epochs"),
        ({"model": "id", "venv": "/no/such/venv"}, "--venv"),
    ],
)
def test_train_rejects_bad_arguments_naming_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        comp.train(data="d", **kwargs)


def test_materialize_from_cli_style_args():
    app = materialize_appdef(comp.train, ["--data", "d", "--model", "id", "-j", "1x3", "--", "--seed", "7"])
    cmd = cmd_of(app)
    assert "--nproc_per_node 3" in cmd and cmd.endswith("--seed 7")


def test_compare_appdef():
    tokenizer = {"num-sids": "8", "select.min-counts": "5,20", "disambiguate": "true"}
    tokenizer["sasrec.positives_only"] = "false"
    app = comp.compare("--model.num_layers", "1", data="d", out="o", epochs=2, nproc=2, tokenizer=tokenizer)
    role = app.roles[0]
    assert role.entrypoint == "python" and role.args[:2] == ["-m", "launch.compare"]
    args = " ".join(role.args)
    assert "--epochs 2" in args and "--nproc 2" in args and "--tokenizer.num-sids 8" in args
    assert "--tokenizer.select.min-counts 5,20 --tokenizer.disambiguate" in args
    assert "--tokenizer.sasrec.no-positives-only" in args
    assert args.endswith("--trainer.model.num_layers 1")  # the trainer's flags: compare's --trainer.* section
    # the flags it builds are launch.compare's
    from data_pipeline.cli import parse
    from launch.compare import CompareConfig

    cfg = parse(CompareConfig, role.args[2:], prog="python -m launch.compare")
    assert cfg.trainer.model_config.num_layers == 1
    t = cfg.tokenizer
    assert (t.model.num_sids, t.select.min_counts, t.disambiguate, t.sasrec.positives_only) == (
        8,
        (5, 20),
        True,
        False,
    )
    with pytest.raises(ValueError, match="--tokenizer method must be one of"):
        comp.compare(data="d", tokenizer={"method": "kmeans"})
    with pytest.raises(ValueError, match="--tokenizer: unknown tokenizer option 'num_codes'"):
        comp.compare(data="d", tokenizer={"num_codes": "4"})
    with pytest.raises(
        ValueError, match="--tokenizer: tokenizer option disambiguate: expected true or false"
    ):
        comp.compare(data="d", tokenizer={"disambiguate": "maybe"})
    # torchx's own parsing of --tokenizer NAME=VALUE,... (a comma list stays one value)
    app = materialize_appdef(
        comp.compare, ["--data", "d", "--tokenizer", "num-sids=8,select.min-counts=5,20"]
    )
    assert "--tokenizer.num-sids 8 --tokenizer.select.min-counts 5,20" in " ".join(app.roles[0].args)


@pytest.mark.parametrize(
    "component, flags",
    [
        ("train", ("--data", "--max_retries", "--tensorboard_dir", "--sharding", "-j")),
        ("compare", ("--data", "--tokenizer", "--seeds", "--nproc", "--high_card")),
    ],
)
def test_torchx_help_lists_the_arguments(component, flags):
    r = subprocess.run(
        [str(VENV_BIN / "torchx"), "run", "-s", "local_cwd", f"{COMPONENT}:{component}", "--help"],
        capture_output=True, text=True, env=env_with_venv(), cwd=REPO, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for flag in flags:
        assert flag in r.stdout


@pytest.mark.slow
def test_torchx_local_cwd_two_process_job(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    gen = [sys.executable, "-m", "data_pipeline", "generate", "--out", str(data), "--rows", "3000"]
    gen += ["--items", "200", "--users", "200", "--no-progress"]
    subprocess.run(gen, check=True, env=env_with_venv(), capture_output=True, timeout=120)
    cmd = [
        str(VENV_BIN / "torchx"), "run", "-s", "local_cwd", "--wait", f"{COMPONENT}:train",
        "--data", str(data), "--model", "dnn", "--out", str(out), "-j", "1x2", "--batch_size", "64",
        "--max_steps", "12", "--tensorboard_dir", str(tmp_path / "tb"), "--name", "t2",
        "--", "--eval.max_batches", "2", "--logging.progress", "false",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env_with_venv(), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 12
    assert 0.0 <= summary["auc"] <= 1.0
    assert any((tmp_path / "tb" / "t2").glob("events.out.tfevents.*"))


def test_components_and_the_tokenizer_options_import_no_torch():
    """Building an AppDef (and reading the tokenizer's option names for --tokenizer) loads no torch."""
    code = "import sys, launch.store, store.tokenizer.config; assert 'torch' not in sys.modules, 'torch'"
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env_with_venv(), cwd=REPO
    )
    assert r.returncode == 0, r.stderr


def test_component_choices_match_the_trainer():
    """launch/store.py repeats these lists so building an AppDef imports no torch: keep them in step
    (the models it reads from store.models.registry, which imports no torch either: tests/test_registry.py)."""
    from store.models import registry
    from trainer.distributed import SHARDING_TYPES

    assert tuple(comp.MODELS) == registry.names()
    from store.sid import METHODS

    assert tuple(comp.METHODS) == METHODS
    assert tuple(comp.SHARDING) == ("auto", *SHARDING_TYPES)


# -- issue 29: a bad component argument is one clear line, not a traceback ---------------------------------
@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"j": "two"}, "-j"),
        ({"j": "0x2"}, "-j"),
        ({"j": "3:2x1"}, "-j"),
        ({"cpu": 0}, "--cpu"),
        ({"memMB": 0}, "--memMB"),
        ({"rdzv_port": 70000}, "--rdzv_port"),
    ],
)
def test_train_checks_resources_and_j_naming_the_flag(kwargs, flag):
    from torchx.specs.finder import ComponentValidationException

    with pytest.raises(ComponentValidationException, match=rf"^{flag} ") as e:
        comp.train(data="d", model="id", **kwargs)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_component_errors_are_torchx_validation_errors():
    """torchx run prints a ComponentValidationException's message alone (no traceback)."""
    from torchx.specs.finder import ComponentValidationException

    with pytest.raises(ComponentValidationException, match=r"^--model must be one of .*got 'nope'$"):
        materialize_appdef(comp.train, ["--data", "d", "--model", "nope"])
    with pytest.raises(ComponentValidationException, match=r"^--epochs must be > 0, got 0$"):
        comp.compare(data="d", epochs=0)
    with pytest.raises(ComponentValidationException, match=r"^--cpu must be > 0, got 0$"):
        comp.compare(data="d", cpu=0)


def test_torchx_run_with_a_bad_argument_prints_no_traceback(tmp_path):
    cmd = [str(VENV_BIN / "torchx"), "run", "-s", "local_cwd", "--dryrun", f"{COMPONENT}:train"]
    cmd += ["--data", str(tmp_path), "--model", "dnn", "--sharding", "diagonal"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env_with_venv(), cwd=REPO, timeout=120)
    assert r.returncode != 0
    assert "--sharding must be one of" in r.stderr and "Traceback" not in r.stderr, r.stderr
