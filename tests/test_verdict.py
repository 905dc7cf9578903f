"""Verdicts that cannot mislead: a tokenized feature with low test coverage or no real SIDs, a test split
of one class, or an arm that scored NaN test AUC make the verdict "Not comparable: REASONS."; the
console and significance.json name each feature's coverage and collision rates; the Tokenizer section
reports memory savings only for features with real SIDs. Old meta.json files (without the newer
fields) still render. Last, one end-to-end comparison on a small CSV."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.__main__ import main as data_main
from launch import compare, report
from tests.test_compare import TINY_MODEL
from tests.test_report import ROWS, USERS, fake_run, logits_of


@pytest.fixture(scope="module")
def split() -> dict[str, np.ndarray]:
    """The test split of tests/test_report.py: 30% positives, USERS users."""
    rng = np.random.default_rng(0)
    return {
        "label": (rng.random(ROWS) < 0.3).astype(np.float32),
        "user": rng.integers(0, USERS, ROWS).astype(np.int64) * 3,
        "item": rng.integers(0, 50, ROWS).astype(np.int64),
    }


def feature(coverage: float | None = 0.9, tokenized: int = 90, rows: int = 101, **more) -> dict:
    """A feature's figures as the tokenizer writes them (coverage None: no "test_coverage", as in
    tables from before it)."""
    m = {"embedding_source": "learned", "rows": rows, "items_tokenized": tokenized,
         "coverage": tokenized / rows, "collision_rate": 0.125, "collision_rate_rows": 0.25, **more}  # fmt: skip
    if coverage is not None:
        m["test_coverage"] = coverage
    return m


def write_meta(folder: Path, features: dict[str, dict], **top) -> Path:
    """A SID folder with a meta.json (K = 4, C = 16 plus the reserved code)."""
    folder.mkdir(parents=True)
    params = {f: {"sid": 4 * 17, "raw_id": m["rows"]} for f, m in features.items()}
    meta = {"method": "opmq", "num_sids": 4, "codebook_size": 17, "codewords": 16, "unseen_code": 16,
            "min_count": 5, "learned_from": "run x", "embedding_params": params, "features": features, **top}  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def two_arms(tmp_path: Path, split: dict, store_logits: np.ndarray | None = None) -> dict[str, Path]:
    """id: weak scores; store: much better ones (a clear 'better' verdict when comparable)."""
    store = logits_of(split, 0.9, 1) if store_logits is None else store_logits
    return {
        "id": fake_run(tmp_path / "id", split, logits_of(split, 0.3, 0)),
        "store": fake_run(tmp_path / "store", split, store),
    }


def significance_of(report_dir: Path) -> dict:
    return json.loads((report_dir / report.SIGNIFICANCE).read_text())


def test_low_coverage_is_not_comparable_and_names_the_feature(split, tmp_path, capsys):
    runs = two_arms(tmp_path, split)
    covered = write_meta(tmp_path / "ok", {"user_id": feature(0.8), "item_id": feature(0.95)})
    low = write_meta(tmp_path / "low", {"user_id": feature(0.2), "item_id": feature(0.95)})

    # control: every feature covered -> the ordinary verdict
    report.write_report(tmp_path / "r_ok", runs, covered, resamples=50)
    sig = significance_of(tmp_path / "r_ok")
    assert sig["comparable"] and sig["reasons"] == [] and sig["arms"]["store"]["comparable"]
    assert sig["arms"]["store"]["verdict"].startswith("STORE (SIDs) is better than ID baseline")

    argv = ["--run", f"id={runs['id']}", "--run", f"store={runs['store']}", "--resamples", "50"]
    assert report.main([*argv, "--sids", str(low), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.splitlines()
    sig = significance_of(tmp_path / "r")
    reason = "user_id: 20% of the test rows whose ID occurs in train have real SIDs (coverage 0.200 < 0.50)"
    assert sig["reasons"] == [reason] and sig["comparable"] is False
    store = sig["arms"]["store"]
    assert store["comparable"] is False and store["reasons"] == [reason]
    assert store["verdict"] == f"Not comparable: {reason}."
    assert store["bootstrap"][0]["verdict"] == "better"  # the numbers are kept, the verdict is not shown
    assert sig["features"] == [
        "user_id: coverage 0.20 (test rows with real SIDs), collision rate 0.1250 of IDs / 0.2500 of train rows",
        "item_id: coverage 0.95 (test rows with real SIDs), collision rate 0.1250 of IDs / 0.2500 of train rows",
    ]
    # the console: report line, the verdict, one line per feature, and "not comparable" last
    assert out[1:] == [store["verdict"], *sig["features"], f"not comparable: {reason} (the report is written, "
                       "but it holds no better / worse verdict)"]  # fmt: skip
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"**Not comparable: {reason}.**" in md and "is better than" not in md
    assert "| not comparable |" in md and "| better |" not in md

    # several seeds' tables: the worst coverage decides
    report.write_report(tmp_path / "r2", runs, [covered, low], resamples=50)
    assert significance_of(tmp_path / "r2")["reasons"] == [reason]
    assert report.verdicts(tmp_path / "r2") == [f"Not comparable: {reason}."]


def test_no_real_sids_is_not_comparable_with_and_without_test_coverage(split, tmp_path):
    runs = two_arms(tmp_path, split)
    # a tokenizer that measured coverage (0) and one that did not (items_tokenized 0 counts as coverage 0)
    for name, m in (("new", feature(0.0, tokenized=0)), ("old", feature(None, tokenized=0))):
        sids = write_meta(tmp_path / name, {"user_id": m, "item_id": feature(0.9)})
        report.write_report(tmp_path / f"r_{name}", runs, sids, resamples=20)
        sig = significance_of(tmp_path / f"r_{name}")
        assert sig["reasons"] == [
            "user_id: 0% of the test rows whose ID occurs in train have real SIDs (coverage 0.000 < 0.50)"
        ]
        assert sig["arms"]["store"]["verdict"].startswith("Not comparable: user_id: 0% of the test rows")
    # coverage undefined (no test row's ID occurs in train) and no real SIDs: still named
    assert report.sid_reasons(
        [{"features": {"user_id": feature(None, tokenized=0, test_coverage=None)}}]
    ) == ["user_id: no ID has real SIDs (every row has the reserved code)"]


def test_one_class_test_split_is_not_comparable(split, tmp_path, capsys):
    negatives = {**split, "label": np.zeros(ROWS, dtype=np.float32)}
    runs = two_arms(tmp_path, negatives)
    assert math.isnan(json.loads((runs["id"] / "summary.json").read_text())["auc"])
    # no SID folder: the reason still applies
    argv = ["--run", f"id={runs['id']}", "--run", f"store={runs['store']}", "--resamples", "20"]
    assert report.main([*argv, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    reason = f"the test split has one class (all {ROWS:,} rows labelled 0; AUC is undefined)"
    sig = significance_of(tmp_path / "r")
    assert sig["reasons"] == [reason]  # not also "scored NaN test AUC": one class is why
    assert sig["arms"]["store"]["verdict"] == f"Not comparable: {reason}."
    assert f"Not comparable: {reason}." in out and f"not comparable: {reason}" in out
    assert sig["features"] == []


def test_too_few_clicks_for_the_bootstrap_is_not_comparable(split, tmp_path):
    # two clicks in the test split: many resamples hold none, and the interval they leave is no test
    rare = np.zeros(ROWS, dtype=np.float32)
    rare[[3, 11]] = 1
    runs = two_arms(tmp_path, {**split, "label": rare})
    argv = ["--run", f"id={runs['id']}", "--run", f"store={runs['store']}", "--resamples", "200"]
    assert report.main([*argv, "--out", str(tmp_path / "r")]) == 0
    sig = significance_of(tmp_path / "r")
    verdict = sig["arms"]["store"]["verdict"]
    assert verdict.startswith("Not comparable: the test split has too few clicks or non-clicks for the test")
    assert "of 200 bootstrap resamples had one class only" in verdict and sig["comparable"] is False
    # with the clicks of the usual split the same arms get an ordinary verdict
    runs = two_arms(tmp_path / "usual", split)
    argv = ["--run", f"id={runs['id']}", "--run", f"store={runs['store']}", "--resamples", "200"]
    assert report.main([*argv, "--out", str(tmp_path / "r2")]) == 0
    assert not significance_of(tmp_path / "r2")["arms"]["store"]["verdict"].startswith("Not comparable")


def test_nan_auc_is_not_comparable(split, tmp_path):
    logits = logits_of(split, 0.9, 1)
    logits[:7] = np.nan
    runs = two_arms(tmp_path, split, logits)
    report.write_report(tmp_path / "r", runs, resamples=20)
    sig = significance_of(tmp_path / "r")
    reason = f"store scored NaN test AUC (7 of {ROWS:,} test logits not finite)"
    assert sig["reasons"] == [reason] and sig["arms"]["store"]["verdict"] == f"Not comparable: {reason}."

    # finite predictions, but the run's own test AUC is NaN (the trainer writes NaN as null)
    runs = {
        "id": fake_run(tmp_path / "id2", split, logits_of(split, 0.3, 0), seed=4),
        "store": fake_run(tmp_path / "store2", split, logits_of(split, 0.9, 1), seed=4),
    }
    summary = json.loads((runs["id"] / "summary.json").read_text())
    (runs["id"] / "summary.json").write_text(json.dumps({**summary, "auc": None}))
    report.write_report(tmp_path / "r2", runs, resamples=20)
    sig = significance_of(tmp_path / "r2")
    assert sig["reasons"] == ["id scored NaN test AUC"]
    assert sig["arms"]["store"]["verdict"] == "Not comparable: id scored NaN test AUC."
    # without predictions the summaries still speak
    seed5 = {**summary, "auc": math.nan, "config": {**summary["config"], "seed": 5}}
    assert report.comparability({"id": [summary, seed5]}) == ["id scored NaN test AUC (seed 5)"]


def test_memory_savings_only_for_features_with_real_sids(tmp_path):
    features = {"user_id": feature(0.0, tokenized=0, rows=1001), "item_id": feature(0.9, rows=6801)}
    selection = {
        "metric": "valid AUC of a proxy", "chosen": "neighbours@5", "forced": False, "extra": [1],
        "raw_id_valid_auc": 0.66,
        "candidates": [
            {"name": "reserved@50", "min_count": 50, "rare": "reserved", "valid_auc": 0.61, "chosen": False},
            {"name": "neighbours@5", "min_count": 5, "rare": "neighbours", "valid_auc": 0.64, "chosen": True,
             "test_coverage": {"item_id": 0.9}},
        ],
    }  # fmt: skip
    md = report.section_tokenizer(write_meta(tmp_path / "sids", features, selection=selection), dim=8)
    # item: 6,801 raw-ID rows vs 68 codebook rows -> 100x; the user has no ratio and is not in the total
    assert "| item_id | 6,801 | 0.21 | 68 | 0.00 | 100x |" in md
    assert "| user_id | 1,001 | 0.03 | 68 | 0.00 | no real SIDs |" in md
    assert "| all tokenized | 6,801 | 0.21 | 68 | 0.00 | 100x |" in md
    assert "left out of the total" in md
    # test coverage and the old ID share side by side, collision rates of IDs and of rows
    assert (
        "| IDs tokenized | test coverage |" in md
        and "| collision rate (IDs) | collision rate (train rows) |" in md
    )
    assert "| item_id | learned | 6,801 | 0.0132 | 0.9000 |" in md
    assert "SID variants the tokenizer tried (by valid AUC of a proxy): chosen neighbours@5." in md
    assert (
        "| reserved@50 | 0.6100 |  |\n| neighbours@5 | 0.6400 | yes |\n| raw IDs (reference) | 0.6600 |  |"
        in md
    )

    none = {"user_id": feature(0.0, tokenized=0, rows=1001)}
    md = report.section_tokenizer(write_meta(tmp_path / "none", none), dim=8)
    assert "no real SIDs |" in md and "| all tokenized |" not in md and "no feature has real SIDs" in md
    forced = {"forced": True, "chosen": "reserved@50", "candidates": []}  # --min-count given: nothing tried
    md = report.section_tokenizer(write_meta(tmp_path / "forced", none, selection=forced))
    assert "SID variant: reserved@50 (forced by a flag)." in md and "| candidate |" not in md


def test_old_meta_without_the_new_fields_still_renders(tmp_path):
    old = {"user_id": feature(None, tokenized=0, rows=1001), "item_id": feature(None, rows=501)}
    for m in old.values():
        del m["collision_rate_rows"]
    sids = write_meta(tmp_path / "sids", old)
    md = report.section_tokenizer(sids, dim=8)
    # unknown coverage: '-'; no real SIDs (items_tokenized 0): coverage 0
    assert (
        "| item_id | learned | 501 | 0.1796 | - |" in md
        and "| user_id | learned | 1,001 | 0.0000 | 0.0000 |" in md
    )
    assert "| all tokenized | 501 |" in md
    meta = json.loads((sids / "meta.json").read_text())
    assert report.feature_lines([meta]) == [
        "user_id: coverage 0.00 (test rows with real SIDs), collision rate 0.1250 of IDs / - of train rows; "
        "no real SIDs (every row has the reserved code)",
        "item_id: coverage - (test rows with real SIDs), collision rate 0.1250 of IDs / - of train rows",
    ]
    assert [r.split(":")[0] for r in report.sid_reasons([meta])] == ["user_id"]
    # the oldest tables: the item's figures at the top level, no items_tokenized: covered, no reason
    (tmp_path / "oldest").mkdir()
    (tmp_path / "oldest" / "meta.json").write_text(json.dumps(
        {"method": "opq", "num_sids": 2, "codebook_size": 8, "num_items": 50, "coverage": 1.0,
         "collision_rate": 0.5, "unique_sids": 25}
    ))  # fmt: skip
    md = report.section_tokenizer(tmp_path / "oldest")
    assert "| item_id | - | 50 | 1.0000 | - |" in md
    oldest = json.loads((tmp_path / "oldest" / "meta.json").read_text())
    assert report.sid_reasons([oldest]) == []
    assert report.feature_lines([oldest]) == [
        "item_id: coverage - (test rows with real SIDs), collision rate 0.5000 of IDs / - of train rows"
    ]


# -- end to end --------------------------------------------------------------------------------------
def click_csv(path: Path, rows: int = 3000, users: int = 300, items: int = 300) -> Path:
    """About 10 rows per user and per item, two context columns, a time column and a click whose rate
    depends on the item (a real item effect) and a little on the device."""
    rng = np.random.default_rng(7)
    user = rng.permutation(np.arange(rows) % users)
    item = rng.permutation(np.arange(rows) % items)
    quality = rng.normal(size=items)
    device = rng.choice(["phone", "tablet", "desktop"], rows)
    hour = rng.integers(0, 24, rows)
    p = 1 / (1 + np.exp(-(-1.0 + 1.5 * quality[item] + 0.3 * (device == "phone"))))
    click = (rng.random(rows) < p).astype(int)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["click", "uid", "sku", "device", "hour", "ts"])
        for i in range(rows):
            w.writerow([click[i], f"u{user[i]}", f"i{item[i]}", device[i], hour[i], 1_700_000_000 + 60 * i])
    return path


@pytest.mark.slow
def test_comparison_never_gives_an_ordinary_verdict_on_all_reserved_sids(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "cmp"
    src = click_csv(tmp_path / "clicks.csv")
    argv = ["convert", "table", "--src", str(src), "--out", str(data), "--label", "click", "--user", "uid",
            "--item", "sku", "--time", "ts"]  # fmt: skip
    assert data_main(argv) == 0
    argv = ["--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "256",
            "--tokenizer.min-steps", "10", *TINY_MODEL]  # fmt: skip
    capsys.readouterr()
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    sig = json.loads((out / "report" / report.SIGNIFICANCE).read_text())
    verdict = sig["arms"]["store"]["verdict"]
    meta = json.loads((out / "sids" / "meta.json").read_text())
    assert set(meta["features"]) >= {"uid", "sku"}
    for f, m in meta["features"].items():
        # the console names every tokenized feature's coverage and collision rate
        assert any(line.startswith(f"{f}: coverage ") and "collision rate" in line for line in lines), f
        coverage = m.get("test_coverage")
        if m.get("items_tokenized", 0) > 0 and coverage is not None and coverage >= 0.5:
            continue  # real SIDs for most test rows the ID arm could learn
        assert verdict.startswith("Not comparable: ") and f"{f}: " in verdict, (f, m, verdict)
        assert any(r.startswith(f"{f}: ") for r in sig["reasons"])
        assert "not comparable: " in printed and verdict in printed
    assert verdict in printed and (out / "report" / "report.md").is_file()
    if sig["comparable"]:  # every feature had real SIDs: an ordinary verdict
        assert verdict.split(" ")[0] in ("STORE", "No") and "not comparable" not in printed
