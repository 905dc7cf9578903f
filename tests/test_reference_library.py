"""benchmarks/reference_library.py: the library reads the trainer's rows, both arms run and resume,
bad flags exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.spec import DatasetSpec, list_shards, split_dir
from data_pipeline.synthetic import generate_dataset
from tests.benchmark_module import load_benchmark

pytest.importorskip("deepctr_torch")


@pytest.fixture(scope="module")
def ref():
    return load_benchmark("reference_library")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "syn"
    generate_dataset(out, 900, items=200, users=40, seed=0, progress=False, history_len=5)
    return out


def test_read_split_is_the_raw_columns_shifted_and_padded(ref, data):
    spec = DatasetSpec.load(data)
    x, labels, users = ref.read_split(str(data), "test", spec)
    raw = pa.concat_tables([pq.read_table(p) for p in list_shards(split_dir(data, "test"))])
    np.testing.assert_array_equal(labels, raw.column(spec.label).to_numpy())
    np.testing.assert_array_equal(users, raw.column(spec.user_id).to_numpy())
    for f in spec.sparse:
        if f.multi:
            lists = raw.column(f.name).to_pylist()
            assert any(lists) and not all(lists), "the test needs empty and non-empty lists"
            for row, values in zip(x[f.name], lists):
                kept = [v + 1 for v in values[-f.max_len :]] if values else []
                assert list(row[: len(kept)]) == kept and not row[len(kept) :].any()
            assert x[f.name].shape[1] == max(len(v[-f.max_len :]) for v in lists)
        else:  # mod mapping: IDs in range stay as they are, then one up
            np.testing.assert_array_equal(x[f.name], raw.column(f.name).to_numpy() + 1)
    for name in spec.dense:
        np.testing.assert_allclose(x[name], raw.column(name).to_numpy(), rtol=1e-6)


def test_both_arms_run_resume_and_fill_the_table(ref, data, tmp_path, capsys):
    out = tmp_path / "ref"
    argv = ["--data", str(data), "--out", str(out), "--models", "fm,autoint", "--seeds", "0", "--epochs", "2",
            "--batch-size", "64", "--jobs", "2"]  # fmt: skip
    assert ref.main(argv) == 0
    results = json.loads((out / "reference.json").read_text())
    for model in ("fm", "autoint"):
        ours, library = results[model]["ours"][0], results[model]["library"][0]
        assert 0.3 < ours["test"]["auc"] < 1 and 0.3 < library["test"]["auc"] < 1
        assert math.isfinite(library["test"]["logloss"]) and library["test"]["rows"] == 90
        assert library["best_epoch"] in (0, 1) and len(library["epochs"]) == 2
        # the library's test scores are those of its best validation epoch
        best = max(library["epochs"], key=lambda e: e["valid"]["auc"])
        assert library["test"] == best["test"]
    assert results["fm"]["library"][0]["history"] == "shared"
    assert results["autoint"]["library"][0]["history"] == "own"
    table = (out / "reference.md").read_text()
    assert "| FM |" in table and "| AutoInt |" in table
    # resumable: a second call trains nothing and rewrites the same table
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} | {
        p: p.stat().st_mtime_ns for p in out.rglob("summary.json")
    }
    capsys.readouterr()
    assert ref.main(argv) == 0
    assert "# ours" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (out / "reference.md").read_text() == table


@pytest.mark.parametrize(
    "flags, needle",
    [(["--models", "xgboost"], "--models"), (["--seeds", "a,b"], "--seeds"), (["--epochs", "0"], "--epochs")],
)
def test_bad_flags_exit_2_and_name_the_flag(ref, data, tmp_path, capsys, flags, needle):
    with pytest.raises(SystemExit) as e:
        ref.main(["--data", str(data), "--out", str(tmp_path / "o"), *flags])
    assert e.value.code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_data_exits_2(ref, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ref.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--data" in capsys.readouterr().err


def test_a_failed_run_is_reported_with_its_log(ref, data, tmp_path, capsys):
    out = tmp_path / "ref"
    argv = ["--data", str(data), "--out", str(out), "--models", "fm", "--seeds", "0", "--epochs", "1",
            "--", "--no-such-flag", "1"]  # fmt: skip
    assert ref.main(argv) == 1
    err = capsys.readouterr().err
    assert "ours fm seed 0 failed" in err and str(out / "ours" / "fm" / "seed0.log") in err
    assert "no-such-flag" in (out / "ours" / "fm" / "seed0.log").read_text()
    assert not (out / "reference.md").exists()


def test_welch_interval_is_scipys(ref):
    from scipy.stats import ttest_ind

    a, b = [0.6977, 0.6980, 0.6977, 0.6924, 0.6961], [0.6922, 0.6900, 0.6892, 0.6909]
    ci = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    diff = sum(a) / len(a) - sum(b) / len(b)
    assert ref.welch(a, b) == f"{diff:+.4f} [{ci.low:+.4f}, {ci.high:+.4f}]"
    assert ref.welch([0.7], [0.6]) == "+0.1000"  # one seed: no interval
