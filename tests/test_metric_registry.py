"""One metric registry (store.metrics.METRICS): a metric registered there reaches the trainer's
metrics.json and summary, --eval.metric, the report's tables and its paired bootstrap, with nothing
else to edit. The bootstrap's three ways of recomputing a metric agree with each other."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from launch.stats import paired_bootstrap
from store import metrics as sm


def hit_rate(rows: sm.Rows) -> float:
    """Share of rows whose sign of the logit matches the label."""
    return float(((rows.logits > 0) == (rows.labels > 0.5)).mean()) if rows.labels.size else float("nan")


def hit_rate_per_cluster(rows: sm.Rows, clusters: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
    hits = ((rows.logits > 0) == (rows.labels > 0.5)).astype(np.float64)
    return np.bincount(clusters, hits, minlength=num), np.bincount(clusters, minlength=num).astype(np.float64)


SLICE_AUCS = ["auc_head", "auc_torso", "auc_tail", "auc_unseen"]
HIT_RATE = sm.Metric("hit_rate", "hit rate", hit_rate, True, kind="ratio", per_cluster=hit_rate_per_cluster)


@pytest.fixture
def with_hit_rate(monkeypatch):
    monkeypatch.setitem(sm.METRICS, "hit_rate", HIT_RATE)


def test_a_registered_metric_reaches_summary_report_and_significance(with_hit_rate, run, tiny_data, tmp_path):
    runs = {}
    for arm, model, seeds in (("id", "dnn", (0, 1)), ("store", "fm", (0,))):
        for seed in seeds:
            out = tmp_path / arm / f"seed{seed}"
            flags = ["--data", str(tiny_data), "--model", model, "--out", str(out), "--epochs", "1"]
            flags += ["--batch-size", "256", "--seed", str(seed), "--eval.metric", "hit_rate"]
            flags += ["--eval.tail_buckets", "8"]  # most items: tail rows of both classes
            assert run("-m", "trainer", *flags).returncode == 0
            runs.setdefault(arm, []).append(out)
    summary = json.loads((runs["id"][0] / "summary.json").read_text())
    assert 0 < summary["hit_rate"] <= 1 and summary["test"]["hit_rate"] == summary["hit_rate"]
    assert all("hit_rate" in v for v in summary["valid"])  # what --eval.metric picked the best weights by
    assert summary["best"]["metric"] == "hit_rate"
    report = tmp_path / "report"
    argv = ["-m", "launch.report", "--out", str(report), "--resamples", "50"]
    argv += [a for arm, outs in runs.items() for o in outs for a in ("--run", f"{arm}={o}")]
    assert run(*argv).returncode == 0
    md = (report / "report.md").read_text()
    assert "| hit rate |" in md  # the test table's column header
    sig = json.loads((report / "significance.json").read_text())
    boot = sig["arms"]["store"]["bootstrap"]
    assert [d["metric"] for d in boot] == ["auc", "gauc", "logloss", "tail_auc", *SLICE_AUCS, "hit_rate"]
    ids = [json.loads((o / "summary.json").read_text()) for o in runs["id"]]
    assert boot[-1]["resamples"] == 50
    assert boot[-1]["baseline"] == pytest.approx(np.mean([s["hit_rate"] for s in ids]), abs=1e-6)
    # the tail rows travel in the predictions file: the report tests tail AUC on the trainer's rows
    assert boot[3]["baseline"] == pytest.approx(np.mean([s["tail_auc"] for s in ids]), abs=1e-6)
    assert "| tail AUC |" in md.split("## Significance")[1]


def test_an_unknown_eval_metric_and_one_the_data_cannot_compute_are_refused(run, tiny_data, tmp_path):
    flags = ["--data", str(tiny_data), "--model", "dnn", "--out", str(tmp_path / "o"), "--epochs", "1"]
    bad = run("-m", "trainer", *flags, "--eval.metric", "recall")
    assert (
        bad.returncode == 2 and "--eval.metric" in bad.stderr and "auc, gauc, logloss, tail_auc" in bad.stderr
    )


def test_bootstrap_recomputes_a_metric_the_same_three_ways(with_hit_rate, monkeypatch):
    """hit_rate as a ratio of per-cluster sums and as a function of the resampled rows give the same
    draws; the tail AUC (an AUC over a subset) equals the AUC of the tail rows."""
    rng = np.random.default_rng(3)
    n = 1500
    labels = (rng.random(n) < 0.3).astype(np.float64)
    users = rng.integers(0, 200, n) * 5
    tail = rng.random(n) < 0.4
    arms = {"id": [labels + rng.normal(size=n) - 0.5], "store": [2 * labels + rng.normal(size=n) - 1]}
    as_ratio = paired_bootstrap(labels, arms, "id", users, resamples=40, tail=tail)["store"]
    monkeypatch.setitem(
        sm.METRICS, "hit_rate", sm.Metric("hit_rate", "hit rate", hit_rate, True)
    )  # kind rows
    as_rows = paired_bootstrap(labels, arms, "id", users, resamples=40, tail=tail)["store"]
    assert [d.metric for d in as_ratio] == ["auc", "gauc", "logloss", "tail_auc", "hit_rate"]
    for a, b in zip(as_ratio, as_rows):
        assert (a.metric, a.diff) == (b.metric, b.diff)
        assert (a.low, a.high) == pytest.approx((b.low, b.high), abs=1e-12)
    tail_auc = as_ratio[3]
    assert tail_auc.arm == pytest.approx(roc_auc_score(labels[tail], arms["store"][0][tail]), abs=1e-12)
    no_tail = paired_bootstrap(labels, arms, "id", users, resamples=5)["store"]
    assert "tail_auc" not in [d.metric for d in no_tail]  # the rows have no tail mask


def test_registry_refuses_a_name_twice_and_names_the_choices():
    with pytest.raises(ValueError, match="already registered"):
        sm.register(sm.Metric("auc", "AUC", lambda r: 0.5, True))
    with pytest.raises(ValueError, match="auc, gauc, logloss, tail_auc"):
        sm.get("recall")
