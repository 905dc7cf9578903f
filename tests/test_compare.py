"""The ID-vs-SID comparison end to end on tiny data, and the report built from run folders."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from data_pipeline.cli import ConfigError
from data_pipeline.spec import DataError
from launch import compare
from launch import store as components
from launch.compare import CompareConfig, run_comparison, seed_layouts
from launch.report import SECTIONS, bayes_optimal, md_table, per_epoch, write_report
from store.tokenizer.config import TokenizerOptions
from trainer.config import TrainOptions

TINY_MODEL = [
    "--trainer.model.embedding-dim",
    "8",
    "--trainer.model.num-layers",
    "1",
    "--trainer.eval.max-batches",
    "2",
]


def tiny_trainer() -> TrainOptions:
    """The trainer options of TINY_MODEL."""
    opts = TrainOptions()
    opts.model_config.embedding_dim, opts.model_config.num_layers, opts.eval.max_batches = 8, 1, 2
    return opts


def options(min_steps: int | None = None, **model) -> TokenizerOptions:
    """The tokenizer's options with these architecture fields (and --min-steps) set, the rest at the
    tokenizer's defaults."""
    opts = TokenizerOptions()
    opts.model = replace(opts.model, **model)
    if min_steps is not None:
        opts.fit = replace(opts.fit, min_steps=min_steps)
    return opts


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cmp") / "data"
    cmd = [sys.executable, "-m", "data_pipeline", "generate", "--out", str(out), "--rows", "1500"]
    cmd += ["--items", "200", "--users", "300", "--seed", "1", "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return out


def fake_run(folder: Path, aucs: list[float], test_auc: float, data: str = "/nowhere") -> Path:
    """A run folder with the summary.json fields the report reads."""
    folder.mkdir(parents=True)
    valid = [{"split": "valid", "epoch": e, "step": 10 * (e + 1), "auc": a, "gauc": a - 0.1, "logloss": 0.4,
              "tail_auc": a - 0.05} for e, a in enumerate(aucs)]  # fmt: skip
    summary = {
        "auc": test_auc, "gauc": test_auc - 0.1, "logloss": 0.41, "tail_auc": 0.6, "steps": 30,
        "test": {"bucket_auc": [0.55, 0.7], "bucket_rows": [10, 90]}, "valid": valid,
        "samples_per_s": 1234.0, "samples_per_s_per_rank": 617.0, "world_size": 2, "device": "cpu",
        "pipeline": True, "peak_memory_bytes_per_rank": [2**20, 2**20],
        "embedding_params_per_rank": [1000, 900], "embedding_bytes_per_rank": [4000, 3600],
        "embedding_optimizer_bytes_per_rank": [40, 36],
        "sharding_plan": [{"table": "t_item", "sharding": "table_wise", "kernel": "fused", "ranks": [0]}],
        "config": {"data": data, "out": str(folder), "epochs": len(aucs), "batch_size": 64,
                   "eval": {"tail_buckets": 1}, "model_config": {}},
    }  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "tensorboard").mkdir()
    return folder


def test_report_from_run_folders(tmp_path):
    runs = {
        "id": fake_run(tmp_path / "id", [0.70, 0.66, 0.64], 0.65),
        "store": fake_run(tmp_path / "store", [0.69, 0.72, 0.73], 0.731),
    }
    md = write_report(tmp_path / "report", runs).read_text()
    for section in SECTIONS:
        assert f"## {section}\n" in md
    assert (
        "| STORE (SIDs) | end of training | 0.7310 |" in md
        and "| ID baseline | end of training | 0.6500 |" in md
    )
    # no predictions in these runs: no paired test, and the report says so
    assert "No paired test" in md and "test AUC per seed pair: +0.0810 (id / store)" in md
    assert "ID baseline: AUC epoch 1 -> 3: -0.0600 (best at epoch 1)" in md
    assert "STORE (SIDs): AUC epoch 1 -> 3: +0.0400 (best at epoch 3)" in md
    assert "1,234" in md and "Not run." in md  # throughput; scaling section says how to run it
    assert (tmp_path / "report" / "auc_vs_epoch.png").stat().st_size > 1000
    assert (tmp_path / "report" / "tensorboard" / "store").resolve() == (tmp_path / "store" / "tensorboard")


def test_report_includes_scaling_outputs_and_rejects_missing_runs(tmp_path):
    runs = {"id": fake_run(tmp_path / "id", [0.7], 0.7), "store": fake_run(tmp_path / "store", [0.7], 0.7)}
    scaling = tmp_path / "scaling"
    scaling.mkdir()
    (scaling / "scaling.md").write_text("| model | processes |\n|---|---|\n| id | 2 |")
    (scaling / "projection.md").write_text("**Estimate (TorchRec planner), not measured.** 512 GPUs")
    md = write_report(tmp_path / "r", runs, scaling=scaling).read_text()
    assert "| id | 2 |" in md and "Estimate (TorchRec planner), not measured" in md
    with pytest.raises(DataError, match="summary.json"):
        write_report(tmp_path / "r2", {"id": tmp_path / "missing"})


def test_helpers():
    assert md_table(["a", "b"], [[1.23456, None]]) == "| a | b |\n|---|---|\n| 1.2346 | - |"
    summary = {"valid": [{"epoch": 0, "auc": 0.1}, {"epoch": 0, "auc": 0.2}, {"epoch": 1, "auc": 0.3}]}
    assert [(r.epoch, r.value("auc")) for r in per_epoch(summary)] == [(1, 0.2), (2, 0.3)]


def test_compare_config_errors_name_the_flag(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="--data"):
        CompareConfig(data=str(tmp_path), out=str(tmp_path / "o")).validate()
    with pytest.raises(ConfigError, match="--epochs must be >= 1, got 0"):
        CompareConfig(data=str(tiny_data), out=str(tmp_path / "o"), epochs=0).validate()
    with pytest.raises(ConfigError, match="--tokenizer.method must be one of opmq, rqvae, opq, got 'kmeans'"):
        CompareConfig(
            data=str(tiny_data), out=str(tmp_path / "o"), tokenizer=options(method="kmeans")
        ).validate()
    with pytest.raises(ConfigError, match="--tokenizer.select.train-rows must be >= 1, got 0"):
        bad = options()
        bad.select.train_rows = 0
        CompareConfig(data=str(tiny_data), out=str(tmp_path / "o"), tokenizer=bad).validate()
    with pytest.raises(ConfigError, match="--seeds must be >= 1, got 0"):
        CompareConfig(data=str(tiny_data), out=str(tmp_path / "o"), seeds=0).validate()
    with pytest.raises(ConfigError, match="--out s3://b/cmp: must be a local folder"):
        CompareConfig(data=str(tiny_data), out="s3://b/cmp").validate()
    with pytest.raises(ConfigError, match=f"--data {tmp_path / 'absent'}: dataset folder does not exist"):
        CompareConfig(data=str(tmp_path / "absent"), out=str(tmp_path / "o")).validate()
    # one layout per output folder: a single-seed run and seed folders do not mix
    (tmp_path / "single" / "id").mkdir(parents=True)
    (tmp_path / "single" / "id" / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="--seeds 2: .*single/id holds a single-seed run"):
        CompareConfig(data=str(tiny_data), out=str(tmp_path / "single"), seeds=2).validate()
    (tmp_path / "multi" / "store" / "seed3").mkdir(parents=True)
    (tmp_path / "multi" / "store" / "seed3" / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="--seeds 1: .*multi/store holds seed folders"):
        CompareConfig(data=str(tiny_data), out=str(tmp_path / "multi")).validate()


def test_seed_layouts(tmp_path):
    one = seed_layouts(CompareConfig(data="d", out=str(tmp_path), seed=5))
    assert [(s.seed, s.sids, s.runs, s.logs) for s in one] == [
        (5, str(tmp_path / "sids"), {"id": tmp_path / "id", "store": tmp_path / "store"}, tmp_path / "logs")
    ]
    three = seed_layouts(CompareConfig(data="d", out=str(tmp_path), seed=5, seeds=3))
    assert [s.seed for s in three] == [5, 6, 7]
    assert three[1].runs == {"id": tmp_path / "id" / "seed6", "store": tmp_path / "store" / "seed6"}
    assert (three[2].sids, three[2].logs) == (str(tmp_path / "sids" / "seed7"), tmp_path / "logs" / "seed7")
    shared = seed_layouts(CompareConfig(data="d", out=str(tmp_path), seeds=2, sids="given"))
    assert [s.sids for s in shared] == ["given", "given"]
    # a SID table in object storage keeps its URI (Path would fold s3:// into s3:/)
    remote = seed_layouts(CompareConfig(data="s3://b/d", out=str(tmp_path), sids="s3://b/sids"))
    assert remote[0].sids == "s3://b/sids"


def test_compare_component_passes_seeds():
    args = components.compare(data="d", out="o", seeds=3, seed=4).roles[0].args
    assert args[args.index("--seeds") + 1] == "3" and args[args.index("--seed") + 1] == "4"
    with pytest.raises(ValueError, match="--seeds must be > 0, got 0"):
        components.compare(data="d", seeds=0)


def test_cli_flags_and_the_trainer_section(tiny_data, tmp_path, capsys, monkeypatch):
    assert compare.main(["--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2  # a bad flag: exit 2
    assert "--data" in capsys.readouterr().err
    bad = ["--data", str(tiny_data), "--out", str(tmp_path / "o"), "--tokenizer.num-sids", "0"]
    assert compare.main(bad) == 2  # the tokenizer's rule, its flag as compare spells it
    assert "--tokenizer.num-sids must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # an old spelling is no compare flag
        compare.main(["--data", str(tiny_data), "--out", str(tmp_path / "o"), "--num-sids", "2"])
    assert e.value.code == 2
    capsys.readouterr()
    seen = []
    monkeypatch.setattr(compare, "run_comparison", lambda cfg: seen.append(cfg) or tmp_path / "report.md")
    argv = ["--data", str(tiny_data), "--out", str(tmp_path / "o"), "--epochs", "2", "--batch-size", "256",
            "--tokenizer.num-sids", "4", "--tokenizer.codebook_size", "32", "--tokenizer.min-steps", "60",
            "--high-card", "none", "--seeds", "3", "--trainer.model.embedding-dim", "16",
            "--trainer.eval.max_batches", "8", "--trainer.no-pipeline", "--trainer.logging.tensorboard", "false"]  # fmt: skip
    assert compare.main(argv) == 0
    c = seen[0]
    t = c.tokenizer
    assert (c.epochs, c.batch_size, t.model.num_sids, t.model.codebook_size, t.fit.min_steps) == (
        2,
        256,
        4,
        32,
        60,
    )
    assert c.seeds == 3
    assert c.high_card == "none"
    tr = c.trainer
    assert (tr.model_config.embedding_dim, tr.eval.max_batches, tr.pipeline, tr.logging.tensorboard) == (
        16, 8, False, False,
    )  # fmt: skip
    # the trainer's flags after '--' are refused, naming the spelling to use
    assert compare.main([*argv[:4], "--", "--model.embedding_dim", "16"]) == 2
    assert "'-- --model.embedding_dim 16': the trainer's flags are given as --trainer.FLAG" in (
        capsys.readouterr().err
    )


def test_tokenizer_defaults_are_the_tokenizers_own(tmp_path, capsys):
    """launch.compare embeds the tokenizer's options (no field of its own for K, C, the method, ...): its
    --tokenizer.* defaults are python -m store.tokenizer's, its help lists that section, and the TorchX
    component forwards tokenizer options without declaring any."""
    import inspect

    from data_pipeline.cli import parse
    from store.tokenizer.config import option_fields
    from store.tokenizer.pipeline import OLD_SPELLINGS, TokenizeConfig

    argv = ["--data", "d", "--out", "o"]
    from_compare = parse(CompareConfig, argv, prog="python -m launch.compare").tokenizer
    tokenizer = parse(TokenizeConfig, argv, prog="python -m store.tokenizer", renames=OLD_SPELLINGS).options
    assert from_compare == tokenizer == TokenizerOptions()
    assert from_compare.model.num_sids == 4 and from_compare.fit.min_steps == 500  # written once, there
    with pytest.raises(SystemExit) as e:
        compare.main(["--help"])
    assert e.value.code == 0
    shown = capsys.readouterr().out
    for name in (
        "num-sids",
        "codebook-size",
        "method",
        "min-count",
        "min-steps",
        "embedding",
        "disambiguate",
    ):
        assert f"--tokenizer.{name}" in shown, name
    assert "--tokenizer.select.train-rows" in shown and "--tokenizer.sasrec.dim" in shown
    # every tokenizer option is reachable through compare, and none is a compare flag of its own
    names = set(option_fields())
    assert {"num-sids", "min-steps", "select.train-rows", "fm.dim", "sasrec.positives-only"} <= names
    assert not {"method", "num_sids", "codebook_size", "embedding", "disambiguate"} & {
        f.name for f in dataclasses.fields(CompareConfig)
    }
    params = set(inspect.signature(components.compare).parameters)
    assert "tokenizer" in params and not {"method", "num_sids", "codebook_size", "min_steps"} & params


def test_trainer_defaults_are_the_trainers_own(tiny_data, tmp_path, capsys, monkeypatch):
    """launch.compare embeds the trainer's options (trainer.config.TrainOptions, no field of its own for
    the learning rates, the metric, the model's size, ...): its --trainer.* defaults are python -m
    trainer's, its help lists that section, and each run's TOML carries the options to the trainer."""
    from data_pipeline.cli import parse
    from trainer.config import TrainConfig, parse_args

    argv = ["--data", "d", "--out", "o"]
    from_compare = parse(CompareConfig, argv, prog="python -m launch.compare").trainer
    from_trainer = parse(TrainConfig, [], prog="python -m trainer")
    options = [f.name for f in dataclasses.fields(TrainOptions)]
    assert from_compare == TrainOptions()
    assert {n: getattr(from_compare, n) for n in options} == {n: getattr(from_trainer, n) for n in options}
    assert from_compare.optim.dense_lr == 1e-3 and from_compare.eval.metric == "auc"  # written once, there
    own = {f.name for f in dataclasses.fields(CompareConfig)}
    assert not {"device", "pipeline", "optim", "eval", "model_config"} & own
    with pytest.raises(SystemExit) as e:
        compare.main(["--help"])
    assert e.value.code == 0
    shown = capsys.readouterr().out
    for name in ("device", "no-pipeline", "optim.dense-lr", "optim.sparse-lr", "eval.metric", "checkpoint.every",
                 "logging.tensorboard", "sharding.default", "model.num-layers", "model.ssr.variant"):  # fmt: skip
        assert f"--trainer.{name}" in shown, name
    # each run's whole configuration is a TOML the trainer reads with --config, the same options for both
    files = {}

    def record(cmd, log, what):
        files[what] = Path(cmd[cmd.index("--config") + 1])
        assert cmd[-1] == "--resume"

    monkeypatch.setattr(compare, "run_logged", record)
    sids = tmp_path / "sids"
    sids.mkdir()
    (sids / "meta.json").write_text("{}")
    out = tmp_path / "o"
    argv = ["--data", str(tiny_data), "--out", str(out), "--sids", str(sids), "--seed", "5", "--epochs", "2",
            "--tokenizer.num-sids", "3", "--tokenizer.disambiguate", "--trainer.eval.metric", "logloss",
            "--trainer.model.num-layers", "3", "--trainer.optim.dense-lr", "0.01"]  # fmt: skip
    monkeypatch.setattr(compare, "stage_state", lambda *a: ("new", []))
    import launch.report

    monkeypatch.setattr(launch.report, "write_report", lambda *a, **k: tmp_path / "report.md")
    monkeypatch.setattr(launch.report, "console_lines", lambda *a: [])
    assert compare.main(argv) == 0
    assert set(files) == {"training id", "training store"}
    runs = {what.split()[1]: parse_args(["--config", str(f)]) for what, f in files.items()}
    for model, run in runs.items():
        assert files[f"training {model}"] == out / "logs" / f"train_{model}.toml"
        assert (run.model, run.out, run.seed, run.epochs) == (model, str(out / model), 5, 2)
        assert (run.eval.metric, run.model_config.num_layers, run.optim.dense_lr) == ("logloss", 3, 0.01)
        assert run.logging.progress is False
    assert runs["store"].sids == str(sids) and runs["id"].sids == ""
    assert (runs["id"].model_config.id_item_tokens, runs["store"].model_config.id_item_tokens) == (4, 0)


def test_nested_tokenizer_options_reach_the_tokenizer(tiny_data, tmp_path, capsys, monkeypatch):
    """--tokenizer.select.train-rows and --tokenizer.min-steps reach the tokenizer stage through the
    config file compare writes (OUT/logs/tokenize.json, read by --config): in its recorded inputs and
    meta.json; the same options again reuse the SIDs, another value is refused naming it."""
    from data_pipeline import outdir

    real_run = compare.run_logged

    def tokenizer_only(cmd, log, what):  # the tokenizer runs; training stops the comparison
        if what != "tokenizer":
            raise compare.StageFailed("stop before training", 1)
        real_run(cmd, log, what)

    monkeypatch.setattr(compare, "run_logged", tokenizer_only)
    out = tmp_path / "o"
    argv = ["--data", str(tiny_data), "--out", str(out), "--high-card", "none", "--seed", "2",
            "--tokenizer.num-sids", "2", "--tokenizer.codebook-size", "8", "--tokenizer.min-steps", "10",
            "--tokenizer.select.train-rows", "5000", "--tokenizer.threads", "1", *TINY_MODEL]  # fmt: skip
    assert compare.main(argv) == 1
    assert "stop before training" in capsys.readouterr().err
    config = json.loads((out / "logs" / "tokenize.json").read_text())
    assert config["options"]["select"]["train_rows"] == 5000 and config["options"]["fit"]["min_steps"] == 10
    assert (config["data"], config["seed"], config["high_card"]) == (str(tiny_data), 2, "none")
    assert "--config" in (out / "logs" / "tokenize.log").read_text().splitlines()[0]
    flags = outdir.read_record(out / "sids")["inputs"]["flags"]
    assert (flags["select"]["train_rows"], flags["min_steps"], flags["num_sids"], flags["seed"]) == (
        5000,
        10,
        2,
        2,
    )
    meta = json.loads((out / "sids" / "meta.json").read_text())
    assert (meta["num_sids"], meta["codewords"]) == (2, 8)
    # the same options: the SIDs are reused; another value: refused (exit 2) naming it
    assert compare.main(argv) == 1
    assert "exists, made from the same inputs: reused" in capsys.readouterr().out
    other = [a if a != "5000" else "4000" for a in argv]
    assert compare.main(other) == 2
    assert "select.train_rows: 5000 -> 4000" in capsys.readouterr().err


def test_bad_trainer_flags_exit_2_before_any_stage(tiny_data, tmp_path, capsys, monkeypatch):
    """The --trainer.* options are checked as the trainer checks them before the tokenizer or a
    training run starts; a stage that rejects its input (exit 2) makes the comparison exit 2 too."""
    stages = []
    monkeypatch.setattr(compare, "run_logged", lambda cmd, log, what: stages.append(what))
    out = tmp_path / "o"
    base = ["--data", str(tiny_data), "--out", str(out)]
    with pytest.raises(SystemExit) as e:  # unknown to the trainer's section (tyro)
        compare.main([*base, "--trainer.optim.bogus", "1"])
    assert e.value.code == 2 and "--trainer.optim.bogus" in capsys.readouterr().err
    assert compare.main([*base, "--trainer.optim.dense_lr", "-1"]) == 2  # the trainer's own rule
    assert "--trainer.optim.dense_lr must be > 0, got -1.0" in capsys.readouterr().err
    assert compare.main([*base, "--trainer.eval.metric", "acc"]) == 2
    assert "--trainer.eval.metric must be one of" in capsys.readouterr().err
    assert stages == [] and not out.exists()  # nothing ran, nothing was written

    def rejects(cmd, log, what):  # a stage that exits 2, as the tokenizer does on bad data
        raise compare.StageFailed(f"{what} failed (exit 2); log {log}", 2)

    monkeypatch.setattr(compare, "run_logged", rejects)
    assert compare.main([*base, "--trainer.model.embedding_dim", "8"]) == 2
    monkeypatch.setattr(
        compare, "run_logged", lambda *a: (_ for _ in ()).throw(compare.StageFailed("boom", 3))
    )
    assert compare.main(base) == 1  # another failure keeps exit 1


@pytest.mark.slow
def test_comparison_end_to_end(tiny_data, tmp_path, capsys):
    cfg = CompareConfig(
        data=str(tiny_data), out=str(tmp_path / "cmp"), epochs=2, batch_size=256,
        tokenizer=options(num_sids=2, codebook_size=16, min_steps=10),
        trainer=replace(tiny_trainer(), eval=replace(TrainOptions().eval, max_batches=2, metric="logloss")),
    )  # fmt: skip
    report = run_comparison(cfg)
    md = report.read_text()
    for section in SECTIONS:
        assert f"## {section}\n" in md
    for model in ("id", "store"):
        summary = json.loads((tmp_path / "cmp" / model / "summary.json").read_text())
        assert [e.epoch for e in per_epoch(summary)] == [1, 2]
        assert summary["config"]["epochs"] == 2 and summary["config"]["batch_size"] == 256
        assert summary["config"]["eval"]["metric"] == "logloss"  # --trainer.eval.metric, in both runs
        assert summary["config"]["model_config"]["num_layers"] == 1
        assert (report.parent / "tensorboard" / model).is_dir()
    assert "| ID baseline | 2 |" in md and "| STORE (SIDs) | 2 |" in md  # epoch-2 rows
    assert "method opmq, K = 2 semantic IDs per feature, C = 16 codewords" in md
    # per tokenized feature: the item (content embeddings) and the user (learned by the ID run)
    assert "| item_id | content |" in md and "| user_id | learned |" in md
    assert "| all tokenized |" in md
    assert "Bayes-optimal" in md  # synthetic data: the ceiling row
    ceiling = bayes_optimal(tiny_data)
    assert ceiling is not None and 0.5 < ceiling["auc"] <= 1.0
    # A second call finds every stage done from the same inputs and only rewrites the report.
    capsys.readouterr()
    run_comparison(cfg)
    assert capsys.readouterr().out.count("same inputs: reused") == 3
    # Other flags or other data: refused, naming what changed, before any stage runs ...
    summary = (tmp_path / "cmp" / "id" / "summary.json").read_text()
    with pytest.raises(ConfigError, match=r"cmp/id was made from other inputs \(epochs: 2 -> 1\)"):
        run_comparison(replace(cfg, epochs=1))
    lr = replace(cfg.trainer, optim=replace(cfg.trainer.optim, dense_lr=0.01))  # a --trainer.* option
    with pytest.raises(
        ConfigError, match=r"cmp/id was made from other inputs \(optim.dense_lr: 0.001 -> 0.01\)"
    ):
        run_comparison(replace(cfg, trainer=lr))
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)  # the same dataset elsewhere: the same inputs
    run_comparison(replace(cfg, data=str(other)))
    (other / "spec.json").write_text(
        (other / "spec.json").read_text().replace('"fingerprint": "', '"fingerprint": "x')
    )
    with pytest.raises(ConfigError, match=f"--data was {tiny_data}"):
        run_comparison(replace(cfg, data=str(other)))
    assert (tmp_path / "cmp" / "id" / "summary.json").read_text() == summary
    # ... and redone with --overwrite
    capsys.readouterr()
    run_comparison(replace(cfg, epochs=1, overwrite=True))
    assert capsys.readouterr().out.count("inputs changed") == 3
    assert json.loads((tmp_path / "cmp" / "store" / "summary.json").read_text())["config"]["epochs"] == 1


@pytest.mark.slow
def test_comparison_over_two_seeds(tiny_data, tmp_path, capsys):
    """--seeds 2: tokenizer and both arms per seed in OUT/<arm>/seed<k>, one report over both seeds
    with the paired test of STORE - ID and its verdict, built from the runs' test predictions."""
    out = tmp_path / "cmp"
    argv = ["--data", str(tiny_data), "--out", str(out), "--epochs", "1", "--batch-size", "256",
            "--tokenizer.num-sids", "2", "--tokenizer.codebook-size", "16", "--tokenizer.min-steps", "10",
            "--seed", "3", "--seeds", "2", *TINY_MODEL]  # fmt: skip
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    for seed in (3, 4):
        for model in ("id", "store"):
            summary = json.loads((out / model / f"seed{seed}" / "summary.json").read_text())
            assert (
                summary["config"]["seed"] == seed and (out / model / f"seed{seed}" / "predictions").is_dir()
            )
        meta = json.loads((out / "sids" / f"seed{seed}" / "meta.json").read_text())
        assert (
            meta["learned_from"] == f"run {out / 'id' / f'seed{seed}'}"
        )  # the user's SIDs: that seed's ID run
    assert not (out / "id" / "summary.json").exists()
    sig = json.loads((out / "report" / "significance.json").read_text())
    store = sig["arms"]["store"]
    slices = ["auc_head", "auc_torso", "auc_tail", "auc_unseen"]  # by the item's train frequency
    assert [d["metric"] for d in store["bootstrap"]] == ["auc", "gauc", "logloss", "tail_auc", *slices]
    assert [d["seed"] for d in store["delong"]] == ["seed 3", "seed 4"]
    auc = store["bootstrap"][0]
    runs = {
        m: [json.loads((out / m / f"seed{s}" / "summary.json").read_text()) for s in (3, 4)]
        for m in ("id", "store")
    }
    for model, key in (
        ("id", "baseline"),
        ("store", "arm"),
    ):  # the test AUC of the predictions = the runs' own
        assert auc[key] == pytest.approx(sum(r["auc"] for r in runs[model]) / 2, abs=1e-5)
    assert auc["low"] <= auc["diff"] <= auc["high"]
    assert auc["verdict"] in ("better", "worse", "no significant difference")
    assert store["verdict"] in printed
    md = (out / "report" / "report.md").read_text()
    assert f"**{store['verdict']}**" in md and "seeds: ID baseline 2 (seed 3, seed 4)" in md
    assert "One SID table per seed" in md and (out / "report" / "tensorboard" / "store" / "seed4").is_dir()
