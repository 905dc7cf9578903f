"""The accuracy-memory frontier: frequency slices with known answers, the budget parser, launch.frontier
end to end on tiny data (id, id-hash at two budgets, store; one seed), its resume, the report's
--frontier mode and the TorchX component."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from data_pipeline import cli
from data_pipeline.cli import ConfigError
from launch import frontier
from launch import store as components
from launch.budget import Budget, parse_budgets
from launch.frontier import FrontierConfig
from launch.stats import paired_bootstrap
from store import metrics as sm
from trainer.metrics import evaluate_predictions, item_frequency

TINY = [
    "--epochs", "1", "--batch-size", "256", "--max-steps", "2", "--resamples", "50",
    "--tokenizer.num-sids", "2", "--tokenizer.codebook-size", "16", "--tokenizer.min-steps", "10",
    "--trainer.model.embedding-dim", "8", "--trainer.model.num-layers", "1", "--trainer.eval.max-batches", "2",
]  # fmt: skip


# -- frequency slices ------------------------------------------------------------------------------
def test_item_slices_split_the_train_rows_in_thirds():
    # 40 train rows: item 5 (20 rows) alone holds the first third and more: head; then 1 and 3 (6 rows
    # each, ties by item ID): the rows before them (20, 26) are under 2/3 x 40: torso; 2, 4 (4 rows
    # each) after 32: tail; 0, 6: unseen
    counts = np.array([0, 6, 4, 6, 4, 20, 0])
    slices = sm.item_slices(counts)
    assert [sm.SLICES[c] for c in slices] == ["unseen", "torso", "tail", "torso", "tail", "head", "unseen"]
    # ties go by item ID, so the split is exact: six equal items, two per third (the third item starts
    # at exactly a third of the rows: torso)
    six = [sm.SLICES[c] for c in sm.item_slices(np.full(6, 10))]
    assert six == ["head", "head", "torso", "torso", "tail", "tail"]
    assert sm.item_slices(np.zeros(3, dtype=np.int64)).tolist() == [0, 0, 0]


def test_slice_aucs_have_known_answers_and_nan_for_one_class():
    counts = torch.tensor([0, 6, 4, 6, 4, 20, 0])  # slices as above
    items = torch.tensor([5, 5, 5, 5, 3, 1, 3, 1, 2, 4, 2, 0, 6, 9])  # 9: outside the catalog -> unseen
    logits = torch.tensor([3.0, 1.0, 2.0, 0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    freq = item_frequency(items, counts)
    assert freq.train_rows.tolist() == [20, 20, 20, 20, 6, 6, 6, 6, 4, 4, 4, 0, 0, 0]
    out = evaluate_predictions(logits, labels, None, items, item_counts=counts)
    # head: positives 3.0, 0.0 against negatives 1.0, 2.0 -> 2 of 4 pairs; torso: positives 1.0, 2.0
    # against negatives 3.0, 0.0 -> 2 of 4 pairs; tail: positives only; unseen: negatives only
    assert out["auc_head"] == pytest.approx(0.5) and out["auc_torso"] == pytest.approx(0.5)
    assert math.isnan(out["auc_tail"]) and math.isnan(out["auc_unseen"])
    assert out["slice_rows"] == {"unseen": 3, "tail": 3, "torso": 4, "head": 4}
    assert "auc_head" not in evaluate_predictions(logits, labels, None, items)  # no item column


def test_the_bootstrap_of_a_one_class_slice_is_nan_not_an_error():
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.3).astype(np.float64)
    item_slice = np.where(np.arange(200) < 100, 3, 0).astype(np.int8)
    labels[item_slice == 0] = 0.0  # unseen: one class
    logits = {"id": [rng.normal(size=200)], "x": [rng.normal(size=200)]}
    diffs = {
        d.metric: d for d in paired_bootstrap(labels, logits, "id", resamples=20, item_slice=item_slice)["x"]
    }
    assert math.isfinite(diffs["auc_head"].diff) and diffs["auc_head"].resamples == 20
    assert math.isnan(diffs["auc_unseen"].diff) and diffs["auc_unseen"].resamples == 0
    assert diffs["auc_unseen"].verdict == "no significant difference"


# -- budgets ---------------------------------------------------------------------------------------
def test_budget_parser():
    got = parse_budgets("1, 0.1,4096r,2MiB")
    assert [(b.text, b.unit, b.value) for b in got] == [
        ("1", "fraction", 1.0), ("0.1", "fraction", 0.1), ("4096r", "rows", 4096), ("2MiB", "MiB", 2.0)
    ]  # fmt: skip
    assert [b.rows(vocab=1000, dim=16) for b in got] == [1000, 100, 4096, 2 * 2**20 // 64]
    assert Budget("0.0001", "fraction", 0.0001).rows(vocab=1000, dim=16) == 2  # at least two rows
    for bad in ("0", "1.5", "-0.1", "1r", "xr", "0MiB", "abc", "0.1,0.1"):
        with pytest.raises(ConfigError, match="--budgets"):
            parse_budgets(bad)


# -- launch.frontier end to end --------------------------------------------------------------------
def test_frontier_end_to_end_resumes_and_reports(run, tiny_data, tmp_path, capsys):
    out = tmp_path / "fr"
    argv = ["--data", str(tiny_data), "--out", str(out), "--arms", "id,id-hash,store", "--budgets", "0.5,16r"]
    assert frontier.main([*argv, *TINY]) == 0  # not `run`: it keeps the console's stdout for us
    printed = capsys.readouterr().out
    assert "== 1/6 train id (seed 0)" in printed and "== 6/6 frontier" in printed  # k of n
    assert "id-hash at 16r = 16 rows/feature" in printed
    result = json.loads((out / "frontier.json").read_text())
    points = {p["point"]: p for p in result["points"]}
    assert list(points) == ["id", "store", "id-hash@100", "id-hash@16"]  # 0.5 of the 200 items
    for name, p in points.items():
        summary = json.loads((out / p["runs"][0] / "summary.json").read_text())
        assert p["embedding_bytes_per_rank"] == summary["embedding_bytes_per_rank"]  # exact
        assert p["embedding_optimizer_bytes_per_rank"] == summary["embedding_optimizer_bytes_per_rank"]
        assert p["metrics"]["auc"]["values"] == [summary["auc"]]
        for m in ("auc", "gauc", "logloss", "auc_head", "auc_torso", "auc_tail", "auc_unseen"):
            assert m in p["metrics"]
            assert name == "id" or p["vs_baseline"][m]["resamples"] <= 50
    # the budget is what the tables hold: 100 - 16 float32 rows of dim 8 for each of the two tokenized
    # features (item_id, user_id)
    assert (
        points["id-hash@100"]["embedding_bytes"] - points["id-hash@16"]["embedding_bytes"] == 2 * 84 * 8 * 4
    )
    best = max(points.values(), key=lambda p: p["metrics"]["auc"]["mean"])
    smallest = min(points.values(), key=lambda p: p["embedding_bytes"])
    assert best["point"] in result["pareto"] and smallest["point"] in result["pareto"]
    assert len(result["slices"]) == 4 and all("STORE (SIDs)" in s for s in result["slices"])
    md = (out / "frontier.md").read_text()
    assert "| id-hash@16 | 16 | 1 |" in md and "## Frequency slices" in md and "n/a" in md  # no unseen item
    assert (out / "frontier.png").stat().st_size > 0
    # a rerun trains nothing: every run is reused
    stamps = {p: (out / q["runs"][0] / "summary.json").stat().st_mtime_ns for p, q in points.items()}
    assert frontier.main([*argv, *TINY]) == 0
    assert capsys.readouterr().out.count("same inputs: reused") == 5
    assert stamps == {p: (out / q["runs"][0] / "summary.json").stat().st_mtime_ns for p, q in points.items()}
    # changed inputs are refused, naming what changed
    other = list(TINY)
    other[other.index("--max-steps") + 1] = "3"
    done = run("-m", "launch.frontier", *argv, *other)
    assert done.returncode == 2 and "max_steps: 2 -> 3" in done.stderr
    # launch.report --frontier builds the same tables from the run folders
    report = tmp_path / "rep"
    assert (
        run(
            "-m", "launch.report", "--frontier", str(out), "--out", str(report), "--resamples", "50"
        ).returncode
        == 0
    )
    again = json.loads((report / "frontier.json").read_text())
    assert [p["point"] for p in again["points"]] == list(points)
    assert again["points"][1]["vs_baseline"] == result["points"][1]["vs_baseline"]  # same bootstrap


def test_frontier_flags_are_checked_before_any_stage(run, tiny_data, tmp_path):
    for flags, message in (
        (["--arms", "store,id-hash"], "must name 'id'"),
        (["--arms", "id,nope"], "--arms 'nope': not a model"),
        (["--budgets", "2"], "--budgets '2'"),
    ):
        done = run("-m", "launch.frontier", "--data", str(tiny_data), "--out", str(tmp_path / "o"), *flags)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert not (tmp_path / "o").exists()


def test_frontier_component():
    app = components.frontier("--model.num_layers", "2", data="d", arms="id,id-hash", budgets="0.1,4096r")
    args = app.roles[0].args
    assert args[:2] == ["-m", "launch.frontier"]
    for flag, value in (("--arms", "id,id-hash"), ("--budgets", "0.1,4096r"), ("--resamples", "1000")):
        assert args[args.index(flag) + 1] == value
    assert args[-2:] == ["--trainer.model.num_layers", "2"]
    cfg = cli.parse(FrontierConfig, args[2:], prog="python -m launch.frontier")  # launch.frontier's flags
    assert (cfg.arms, cfg.budgets, cfg.trainer.model_config.num_layers) == ("id,id-hash", "0.1,4096r", 2)
    for kw, message in (
        (dict(arms="id-hash"), "--arms"), (dict(arms="id,nope"), "--arms"), (dict(budgets="0"), "--budgets"),
        (dict(seeds=0), "--seeds"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            components.frontier(data="d", **kw)


def test_a_slice_test_with_one_class_resamples_gives_no_verdict():
    from launch.report.frontier import slice_sentences

    points = [{"point": "store", "embedding_bytes": 2048}, {"point": "id-hash@8", "embedding_bytes": 1024}]
    test = {"sid": "store", "hashed": "id-hash@8", "hashed_arm": "id-hash", "metric": "auc_head",
            "baseline": 0.90, "arm": 0.85, "diff": -0.05, "low": -0.09, "high": -0.01, "p": 0.02,
            "verdict": "no significant difference"}  # fmt: skip
    (few,) = slice_sentences(points, [{**test, "resamples": 660}], resamples=1000)
    assert "no verdict: 340 of 1000 resamples had one class only" in few and "does NOT beat" in few
    (full,) = slice_sentences(points, [{**test, "verdict": "worse", "resamples": 1000}], resamples=1000)
    assert full.endswith("(95% interval; worse).")
    (none,) = slice_sentences(points, [{**test, "hashed": None}], resamples=1000)
    assert "id-hash has no budget within its bytes" in none
