"""``python -m launch.report`` from run folders: seeds, mean ± std, the paired tests and their verdict,
and clear errors (exit 2 naming the folder) for runs that cannot be compared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from launch import report, stats
from launch.report import PREDICTIONS, SECTIONS, find_runs, main
from store import metrics as sm

ROWS, USERS = 3000, 400


@pytest.fixture(scope="module")
def test_split() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "label": (rng.random(ROWS) < 0.3).astype(np.float32),
        "user": rng.integers(0, USERS, ROWS).astype(np.int64) * 3,
        "item": rng.integers(0, 50, ROWS).astype(np.int64),
    }


def logits_of(split: dict, strength: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (strength * (2 * split["label"] - 1) + rng.normal(size=ROWS)).astype(np.float32)


def fake_run(
    folder: Path,
    split: dict | None,
    logits: np.ndarray | None,
    seed: int = 0,
    fingerprint: str = "abc",
    best_epoch: int = 1,
    order: np.ndarray | None = None,
) -> Path:
    """A finished run: summary.json with what the report reads, and predictions/test.parquet (rows in
    `order`, all of them by default) with the metrics of summary.json computed from them."""
    folder.mkdir(parents=True)
    test: dict = {"bucket_auc": [0.55, 0.7], "bucket_rows": [10, 90]}
    if logits is not None:
        test |= {"auc": sm.auc(logits, split["label"]), "logloss": sm.logloss(logits, split["label"]),
                 "gauc": sm.gauc(split["user"], logits, split["label"]), "tail_auc": 0.6}  # fmt: skip
    valid = [{"split": "valid", "epoch": e, "step": 10 * (e + 1), "auc": 0.6 + 0.01 * e + 0.001 * seed,
              "logloss": 0.5, "gauc": 0.55} for e in range(3)]  # fmt: skip
    summary = {
        **{k: test[k] for k in ("auc", "gauc", "logloss", "tail_auc") if k in test},
        "test": test, "test_last": {**test, "auc": test.get("auc", 0.5) - 0.01}, "best_epoch": best_epoch,
        "valid": valid, "steps": 30, "samples_per_s": 1000.0 + 10 * seed, "samples_per_s_per_rank": 1000.0,
        "world_size": 1, "device": "cpu", "pipeline": True, "peak_memory_bytes_per_rank": [2**20],
        "embedding_params_per_rank": [1000], "embedding_bytes_per_rank": [4000],
        "embedding_optimizer_bytes_per_rank": [40], "sharding_plan": [],
        "dataset": {"name": "syn", "fingerprint": fingerprint},
        "config": {"data": "/nowhere", "out": str(folder), "seed": seed, "epochs": 3, "batch_size": 64,
                   "eval": {"tail_buckets": 1, "restore_best": True, "metric": "auc", "patience": 0},
                   "model_config": {}},
    }  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "tensorboard").mkdir()
    if logits is not None:
        rows = np.arange(ROWS) if order is None else order
        table = {"row": rows.astype(np.int64), "label": split["label"][rows], "logit": logits[rows],
                 "user": split["user"][rows], "item": split["item"][rows]}  # fmt: skip
        (folder / PREDICTIONS).parent.mkdir()
        pq.write_table(pa.table(table), folder / PREDICTIONS)
    return folder


def test_report_from_seed_folders_and_repeated_runs(test_split, tmp_path, capsys):
    """id: a folder of seed folders; store: three --run store=DIR; STORE's scores are much better."""
    for s in range(3):
        fake_run(
            tmp_path / "id" / f"seed{s}", test_split, logits_of(test_split, 0.3, s), seed=s, best_epoch=s % 2
        )
        fake_run(tmp_path / "store" / f"s{s}", test_split, logits_of(test_split, 0.9, 10 + s), seed=s)
    argv = ["--run", f"id={tmp_path / 'id'}", "--out", str(tmp_path / "report"), "--resamples", "200"]
    argv += [a for s in range(3) for a in ("--run", f"store={tmp_path / 'store' / f's{s}'}")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "STORE (SIDs) is better than ID baseline on test AUC" in out
    md = (tmp_path / "report" / "report.md").read_text()
    for section in SECTIONS:
        assert f"## {section}\n" in md
    sig = json.loads((tmp_path / "report" / "significance.json").read_text())
    assert (sig["rows"], sig["users"], sig["resamples"], sig["dropped_rows"]) == (ROWS, USERS, 200, 0)
    auc, gauc, logloss = sig["arms"]["store"]["bootstrap"]
    ids = [logits_of(test_split, 0.3, s) for s in range(3)]
    stores = [logits_of(test_split, 0.9, 10 + s) for s in range(3)]
    mean_auc = {
        n: np.mean([sm.auc(v, test_split["label"]) for v in vs]) for n, vs in (("id", ids), ("store", stores))
    }
    assert auc["baseline"] == pytest.approx(mean_auc["id"]) and auc["arm"] == pytest.approx(mean_auc["store"])
    assert [d["verdict"] for d in (auc, gauc, logloss)] == ["better"] * 3
    assert (
        f"| AUC | {auc['baseline']:.4f} | {auc['arm']:.4f} | {auc['diff']:+.4f} | [{auc['low']:+.4f}, " in md
    )
    delongs = sig["arms"]["store"]["delong"]
    assert [d["seed"] for d in delongs] == ["seed 0", "seed 1", "seed 2"]
    d0 = stats.delong(ids[0], stores[0], test_split["label"])
    assert delongs[0]["p"] == pytest.approx(d0.p) and delongs[0]["diff"] == pytest.approx(d0.diff)
    # mean ± std over seeds, best and last weights, seeds per arm
    id_aucs = [sm.auc(v, test_split["label"]) for v in ids]
    shown = f"{np.mean(id_aucs):.4f} ± {np.std(id_aucs, ddof=1):.4f}"
    assert f"| ID baseline | best valid (epoch 1, 2, 1) | {shown} |" in md
    assert "| ID baseline | last epoch |" in md and "| 3 |\n" in md
    assert "| 1,010 ± 10 |" in md  # samples/s of seeds 0..2: 1000, 1010, 1020
    assert "| ID baseline | 1 | 0.6010 ± 0.0010 |" in md  # validation AUC at epoch 1 over the seeds
    assert "seeds: ID baseline 3 (seed 0, seed 1, seed 2); STORE (SIDs) 3" in md
    tb = tmp_path / "report" / "tensorboard"
    assert (tb / "id" / "seed1").resolve() == tmp_path / "id" / "seed1" / "tensorboard"
    assert (tb / "store" / "s2").resolve() == tmp_path / "store" / "s2" / "tensorboard"


def test_identical_arms_no_significant_difference(test_split, tmp_path, capsys):
    logits = logits_of(test_split, 0.5, 0)
    fake_run(tmp_path / "id", test_split, logits)
    # the same predictions, rows in another order and 100 rows more than the ID run scored
    order = np.random.default_rng(1).permutation(ROWS)
    fake_run(tmp_path / "store", test_split, logits, order=order)
    argv = [
        "--run",
        f"id={tmp_path / 'id'}",
        "--run",
        f"store={tmp_path / 'store'}",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main([*argv, "--resamples", "100"]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "**No significant difference between STORE (SIDs) and ID baseline on test AUC: +0.0000" in md
    assert "| AUC |" in md and "| +0.0000 | [+0.0000, +0.0000] | 1.000 | no significant difference |" in md
    assert "No significant difference" in capsys.readouterr().out


def test_rows_scored_by_one_run_only_are_left_out(test_split, tmp_path):
    logits = logits_of(test_split, 0.5, 0)
    fake_run(tmp_path / "id", test_split, logits, order=np.arange(ROWS - 100))
    fake_run(tmp_path / "store", test_split, logits_of(test_split, 0.5, 1))
    runs = report.load_runs({"id": tmp_path / "id", "store": tmp_path / "store"})
    paired = report.paired_predictions(runs)
    assert paired.labels.size == ROWS - 100 and paired.dropped == 100
    np.testing.assert_array_equal(paired.logits["id"][0], logits[: ROWS - 100])
    result = report.significance(runs, "id", resamples=20)
    assert "100 rows not scored by every run are left out" in report.section_significance(runs, "id", result)


def test_errors_name_the_folder(test_split, tmp_path, capsys):
    ok = fake_run(tmp_path / "id", test_split, logits_of(test_split, 0.5, 0))
    other = fake_run(tmp_path / "other", test_split, logits_of(test_split, 0.5, 1), fingerprint="zzz")

    def fails(*runs: str) -> str:
        argv = [a for r in runs for a in ("--run", r)]
        assert main([*argv, "--out", str(tmp_path / "r")]) == 2
        return capsys.readouterr().err

    err = fails(f"id={ok}", f"store={other}")
    assert str(other) in err and "fingerprint zzz" in err and "must share their dataset" in err
    err = fails(f"id={ok}", f"store={tmp_path / 'nowhere'}")
    assert str(tmp_path / "nowhere") in err
    (tmp_path / "seeds" / "seed0").mkdir(parents=True)  # a seed run that did not finish
    err = fails(f"id={ok}", f"store={tmp_path / 'seeds'}")
    assert f"{tmp_path / 'seeds' / 'seed0'}: no summary.json" in err
    assert "NAME=DIR" in fails(f"{ok}")
    # another test split: the labels of the rows both scored differ
    flipped = {**test_split, "label": 1 - test_split["label"]}
    fake_run(tmp_path / "flipped", flipped, logits_of(flipped, 0.5, 2))
    err = fails(f"id={ok}", f"store={tmp_path / 'flipped'}")
    assert str(tmp_path / "flipped" / PREDICTIONS) in err and "not the same test split" in err
    assert main(["--run", f"id={ok}", "--baseline", "x", "--out", str(tmp_path / "r")]) == 2
    assert "--baseline 'x'" in capsys.readouterr().err


def test_runs_without_predictions_still_get_a_report(test_split, tmp_path):
    fake_run(tmp_path / "id", test_split, logits_of(test_split, 0.5, 0))
    fake_run(tmp_path / "store", None, None)
    path = report.write_report(tmp_path / "r", {"id": tmp_path / "id", "store": tmp_path / "store"})
    md = path.read_text()
    assert "No paired test: these runs have no test predictions file (predictions/test.parquet" in md
    assert f"`{tmp_path / 'store'}`" in md and "test AUC per seed pair" in md
    assert json.loads((tmp_path / "r" / "significance.json").read_text())["missing"] == [
        str(tmp_path / "store")
    ]
    assert report.verdicts(tmp_path / "r") == []


def test_find_runs_orders_seeds_naturally(tmp_path):
    for s in (10, 2, 1):
        (tmp_path / f"seed{s}").mkdir()
        (tmp_path / f"seed{s}" / "summary.json").write_text("{}")
    assert [p.name for p in find_runs(tmp_path)] == ["seed1", "seed2", "seed10"]
    assert find_runs(tmp_path / "seed2") == [tmp_path / "seed2"]


def test_tokenizer_section_says_whether_no_sid_table_was_given_or_its_meta_is_missing(tmp_path):
    assert "No SID table was given" in report.section_tokenizer(None)
    missing = report.section_tokenizer(tmp_path / "sids")
    assert "No tokenizer meta.json" in missing and str(tmp_path / "sids") in missing


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--resamples", "many"], ["--resamples", "'many'"]),
        (["--bogus", "1"], ["--bogus"]),
    ],
)
def test_malformed_flags_exit_2_naming_the_flag(tmp_path, capsys, flags, named):
    with pytest.raises(SystemExit) as exit_:
        main(["--run", f"id={tmp_path}", "--out", str(tmp_path / "r"), *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and all(s in err for s in named), err


def test_missing_or_out_of_range_flags_exit_2_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # no --out
        main(["--run", f"id={tmp_path}"])
    assert exit_.value.code == 2 and "--out" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "r")]) == 2
    assert "--run is required" in capsys.readouterr().err
    assert main(["--run", f"id={tmp_path}", "--out", str(tmp_path / "r"), "--resamples", "0"]) == 2
    assert "--resamples must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
