"""`python -m data_pipeline convert table`: any CSV / parquet table -> dataset. Type inference, vocabularies,
high-cardinality marking, time and seeded random splits, bad input naming file and column (exit 2),
the Criteo sample, and datasets without user / item columns downstream (reader, metrics, trainer, report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_pipeline.__main__ import main
from data_pipeline.converters.common import ConvertConfig
from data_pipeline.converters.table import TableOptions, convert
from data_pipeline.spec import SPLITS, DataError, DatasetSpec

REPO = Path(__file__).resolve().parents[1]
CRITEO = REPO.parent / "shared" / "data" / "criteo-sample" / "criteo_sample.csv"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run(src: Path, out: Path, **opts) -> DatasetSpec:
    cfg_keys = {"block_size", "overwrite", "valid_frac", "test_frac", "rows_per_shard"}
    cfg = ConvertConfig(src=src, out=out, **{k: v for k, v in opts.items() if k in cfg_keys})
    return convert(cfg, TableOptions(**{k: v for k, v in opts.items() if k not in cfg_keys}))


def rows(out: Path, split: str | None = None) -> pa.Table:
    splits = [split] if split else SPLITS
    return pa.concat_tables([pq.read_table(out / s) for s in splits])


def table_csv(path: Path, n: int = 60) -> Path:
    """click, a float, an int, a string with gaps, '|' tags, a user, an item and a time column."""
    lines = ["click,price,level,city,tags,uid,sku,ts"]
    for i in range(n):
        city = "" if i % 7 == 0 else f"c{i % 4}"
        tags = "|".join(f"t{(i + k) % 5}" for k in range(i % 3))
        lines.append(f"{i % 2},{i * 0.5},{i % 3},{city},{tags},u{i % 6},{100 + i % 9},{1000 + i}")
    return write(path, "\n".join(lines) + "\n")


# -- inference and vocabularies -------------------------------------------------------------------------
def test_csv_types_vocab_roles_and_values(tmp_path):
    src = table_csv(tmp_path / "t.csv")
    spec = run(src, tmp_path / "out", label="click", user="uid", item="sku", time="ts", multi=["tags"])
    assert spec.label == "click" and spec.timestamp == "ts"
    assert spec.dense == ["price"]
    f = {x.name: x for x in spec.sparse}
    assert list(f) == ["level", "city", "tags", "uid", "sku"]
    assert (f["level"].vocab_size, f["city"].vocab_size, f["tags"].vocab_size) == (4, 5, 6)  # + row 0
    assert f["tags"].multi and not f["level"].multi
    assert (spec.user_id, spec.item_id) == ("uid", "sku")
    assert f["sku"].item_ref and f["sku"].high_cardinality and f["uid"].high_cardinality
    assert not f["level"].high_cardinality and not f["city"].high_cardinality
    assert spec.item_table.num_items == 10 and spec.item_table.id_column == "sku"
    assert DatasetSpec.load(tmp_path / "out").sparse == spec.sparse

    t = rows(tmp_path / "out").sort_by("ts").to_pydict()
    assert t["click"] == [float(i % 2) for i in range(60)]
    assert np.allclose(t["price"], [i * 0.5 for i in range(60)])
    assert t["level"] == [1 + i % 3 for i in range(60)]  # sorted distinct ints -> 1..V
    assert [c == 0 for c in t["city"]] == [i % 7 == 0 for i in range(60)]  # missing -> row 0
    assert len({c for c in t["city"] if c}) == 4 and max(t["city"]) == 4
    assert [len(x) for x in t["tags"]] == [i % 3 for i in range(60)]  # '' -> empty list
    assert t["tags"][2][0] != t["tags"][2][1] and all(1 <= v <= 5 for x in t["tags"] for v in x)
    assert sorted(set(t["sku"])) == list(range(1, 10))
    items = pq.read_table(tmp_path / "out" / "items")
    assert items.column("sku").to_pylist() == list(range(10))


def test_parquet_file_and_folder_types(tmp_path):
    def part(lo: int, hi: int) -> pa.Table:
        i = np.arange(lo, hi)
        return pa.table(
            {
                "y": pa.array(i % 2 == 0),  # bool label
                "x": pa.array(i * 0.25, pa.float32()),
                "n": pa.array(i % 4, pa.int32()),
                "s": pa.array([f"v{k % 3}" for k in i]).dictionary_encode(),
                "hist": pa.array([[int(k % 5), int(k % 7)] for k in i], pa.list_(pa.int64())),
                "when": pa.array(i.astype("datetime64[s]")),  # not named: skipped with a warning
            }
        )

    pq.write_table(part(0, 30), tmp_path / "one.parquet")
    spec = run(tmp_path / "one.parquet", tmp_path / "a", label="y")
    assert spec.dense == ["x"] and [f.name for f in spec.sparse] == ["n", "s", "hist"]
    assert [f.vocab_size for f in spec.sparse] == [5, 4, 8] and spec.feature("hist").multi
    assert (spec.user_id, spec.item_id, spec.item_table) == ("", "", None)
    assert spec.timestamp == "row_index"
    t = rows(tmp_path / "a").sort_by("row_index").to_pydict()
    assert t["y"] == [float(i % 2 == 0) for i in range(30)]
    assert t["n"] == [1 + i % 4 for i in range(30)]
    assert t["hist"][8] == [1 + 8 % 5, 1 + 8 % 7]  # values 0..6 -> rows 1..7

    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(part(0, 30), folder / "p0.parquet")
    pq.write_table(part(30, 50), folder / "p1.parquet")
    spec = run(folder, tmp_path / "b", label="y", time="when", sparse=["x"])
    assert spec.dense == [] and spec.feature("x").vocab_size == 51 and spec.num_rows["train"] == 40
    assert rows(tmp_path / "b", "test").column("when").to_pylist() == list(range(45, 50))


def test_row_identifier_columns_are_skipped_unless_named(tmp_path):
    """An unnamed index column (pandas' to_csv) and a column with a distinct value on every row
    carry no signal a model can reuse: skipped with a warning; --sparse keeps one."""
    lines = [",req,click,city"] + [f"{i},r{i},{i % 2},c{i % 4}" for i in range(150)]
    src = write(tmp_path / "t.csv", "\n".join(lines) + "\n")
    spec = run(src, tmp_path / "a", label="click")
    assert spec.sparse_names == ["city"]
    spec = run(src, tmp_path / "b", label="click", sparse=["req"])
    assert spec.sparse_names == ["req", "city"] and spec.feature("req").vocab_size == 151


def test_high_cardinality_threshold(tmp_path):
    lines = ["y,few,many"] + [f"{i % 2},{i % 5},{i % 40}" for i in range(80)]
    src = write(tmp_path / "t.csv", "\n".join(lines) + "\n")
    spec = run(src, tmp_path / "a", label="y", high_card_threshold=40)
    assert not spec.feature("few").high_cardinality and spec.feature("many").high_cardinality
    spec = run(src, tmp_path / "b", label="y", high_card_threshold=41)
    assert not spec.feature("many").high_cardinality
    assert run(src, tmp_path / "c", label="y", high_card_threshold=5).feature("few").high_cardinality


def test_csv_text_after_numbers_and_label_forms(tmp_path):
    """A column of numbers whose text comes only in a later chunk is categorical (collected again)."""
    lines = ["y,code,zip"] + [f"{'true' if i % 2 else 'False'},{i}.5,{i % 50}" for i in range(300)]
    lines += ["1,abc,A1", "0.0,abc,7"]
    src = write(tmp_path / "t.csv", "\n".join(lines) + "\n")
    spec = run(src, tmp_path / "out", label="y", block_size=512)
    assert spec.dense == [] and spec.feature("code").vocab_size == 302
    assert spec.feature("zip").vocab_size == 52
    t = rows(tmp_path / "out").sort_by("row_index").to_pydict()
    assert t["y"][:4] == [0.0, 1.0, 0.0, 1.0] and t["y"][-2:] == [1.0, 0.0]
    assert t["code"][-1] == t["code"][-2] != 0
    assert t["zip"][-1] == t["zip"][7] and len(set(t["zip"])) == 51


def test_iso_time_strings_and_parquet_text_multi(tmp_path):
    lines = ["y,when,tags"] + [
        f"{i % 2},2024-01-{1 + i // 4:02d}T{i % 4:02d}:00:00,a|b{i % 3}" for i in range(40)
    ]
    spec = run(write(tmp_path / "t.csv", "\n".join(lines) + "\n"), tmp_path / "a", label="y", time="when")
    test_ts = rows(tmp_path / "a", "test").column("when").to_numpy()
    assert spec.num_rows["test"] == 4 and test_ts.min() == 1704067200 + 9 * 86400  # 2024-01-10 00:00 UTC
    assert spec.feature("tags").vocab_size == 4 and not spec.feature("tags").multi  # text unless --multi
    pq.write_table(pa.table({"y": [0, 1, 1], "tags": ["a|b", None, "c||a"]}), tmp_path / "t.parquet")
    spec = run(
        tmp_path / "t.parquet", tmp_path / "b", label="y", multi=["tags"], valid_frac=0.0, test_frac=0.0
    )
    assert spec.feature("tags").multi and spec.feature("tags").vocab_size == 4
    assert rows(tmp_path / "b").column("tags").to_pylist() == [[1, 2], [], [3, 1]]


# -- splits ---------------------------------------------------------------------------------------------
def test_time_split_is_ordered(tmp_path):
    lines = ["y,f,t"] + [f"{i % 2},{i % 3},{(i * 37) % 100}" for i in range(100)]  # time out of order
    src = write(tmp_path / "t.csv", "\n".join(lines) + "\n")
    spec = run(src, tmp_path / "out", label="y", time="t")
    assert spec.num_rows == {"train": 80, "valid": 10, "test": 10}
    ts = {s: rows(tmp_path / "out", s).column("t").to_numpy() for s in SPLITS}
    assert ts["train"].max() < ts["valid"].min() and ts["valid"].max() < ts["test"].min()
    assert "t" not in spec.sparse_names and "t" not in spec.dense


def test_random_split_is_seeded(tmp_path, caplog):
    lines = ["y,f"] + [f"{i % 2},{i % 3}" for i in range(500)]
    src = write(tmp_path / "t.csv", "\n".join(lines) + "\n")
    with caplog.at_level("INFO"):
        a = run(src, tmp_path / "a", label="y", seed=1)
    assert "random split" in caplog.text
    run(src, tmp_path / "b", label="y", seed=1, block_size=256)  # other chunking, same split
    run(src, tmp_path / "c", label="y", seed=2)
    split_of = {}
    for name in "abc":
        split_of[name] = {
            r: s for s in SPLITS for r in rows(tmp_path / name, s).column("row_index").to_pylist()
        }
    assert split_of["a"] == split_of["b"] != split_of["c"]
    assert 350 < a.num_rows["train"] < 450 and a.num_rows["valid"] > 20 and a.num_rows["test"] > 20


# -- bad input ------------------------------------------------------------------------------------------
def test_bad_input_names_file_and_column(tmp_path):
    ok = write(tmp_path / "ok.csv", "y,a\n0,1\n1,2\n")
    with pytest.raises(DataError, match=r"ok\.csv: missing column 'uid' \(--user\)"):
        run(ok, tmp_path / "o1", label="y", user="uid")
    with pytest.raises(DataError, match=r"ok\.csv: missing column 'nope' \(--label\)"):
        run(ok, tmp_path / "o1", label="nope")
    bad = write(tmp_path / "bad.csv", "y,a\n0,1\n2,2\n")
    with pytest.raises(DataError, match=r"bad\.csv: column 'y' \(label\) must be 0 or 1 .*got '2'"):
        run(bad, tmp_path / "o1", label="y")
    word = write(tmp_path / "word.csv", "y,a\n0,1\nyes,2\n")
    with pytest.raises(DataError, match=r"word\.csv: column 'y' \(label\) must be 0 or 1 .*'yes'"):
        run(word, tmp_path / "o1", label="y")
    with pytest.raises(DataError, match=r"empty\.csv: empty file"):
        run(write(tmp_path / "empty.csv", ""), tmp_path / "o1", label="y")
    with pytest.raises(DataError, match=r"no data rows in .*head\.csv"):
        run(write(tmp_path / "head.csv", "y,a\n"), tmp_path / "o1", label="y")
    (tmp_path / "nothing").mkdir()
    write(tmp_path / "nothing" / "notes.txt", "y,a\n")
    with pytest.raises(DataError, match=r"nothing: no \.csv or \.parquet files"):
        run(tmp_path / "nothing", tmp_path / "o1", label="y")
    with pytest.raises(DataError, match=r"no such file or folder"):
        run(tmp_path / "missing.csv", tmp_path / "o1", label="y")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match=r"corrupt\.parquet: not a readable parquet file"):
        run(corrupt, tmp_path / "o1", label="y")
    text = write(tmp_path / "text.csv", "y,a\n0,1\n1,x\n")
    with pytest.raises(DataError, match=r"text\.csv: column 'a' \(--dense\) is not numeric \(value 'x'\)"):
        run(text, tmp_path / "o1", label="y", dense=["a"])
    ragged = write(tmp_path / "ragged.csv", "y,a\n0,1\n1,2,3\n")
    with pytest.raises(DataError, match=r"ragged\.csv"):
        run(ragged, tmp_path / "o1", label="y")
    with pytest.raises(DataError, match=r"'a' is named by both --sparse and --dense|--dense and --sparse"):
        run(ok, tmp_path / "o1", label="y", dense=["a"], sparse=["a"])
    folder = tmp_path / "two"
    write(folder / "a.csv", "y,a\n0,1\n1,2\n")
    write(folder / "b.csv", "a,y\n3,1\n4,0\n")  # other column order: fine
    assert run(folder, tmp_path / "o2", label="y").feature("a").vocab_size == 5
    write(folder / "c.csv", "y,z\n0,1\n")
    with pytest.raises(DataError, match=r"c\.csv: missing column 'a'"):
        run(folder, tmp_path / "o3", label="y")
    assert not (tmp_path / "o1" / "spec.json").exists()


def test_cli_usage_output_and_exit_codes(tmp_path, capsys):
    src = table_csv(tmp_path / "t.csv")
    out = tmp_path / "out"
    argv = ["convert", "table", "--src", str(src), "--out", str(out), "--label", "click"]
    assert main([*argv, "--multi", "tags", "--item", "sku", "--high-card-threshold", "6"]) == 0
    printed = capsys.readouterr().out
    assert "sku" in printed and "sparse (item)" in printed and "high-card" in printed and "static" in printed
    assert "(no --user: no GAUC)" in printed
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err  # non-empty --out
    assert main([*argv, "--overwrite", "--user", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "t.csv" in err and "'nope'" in err
    assert (out / "spec.json").is_file()  # the bad --src left the old dataset alone
    bad = write(tmp_path / "bad.csv", "click,a\n0,1\n5,2\n")
    assert (
        main(["convert", "table", "--src", str(bad), "--out", str(tmp_path / "o2"), "--label", "click"]) == 2
    )
    err = capsys.readouterr().err
    assert "bad.csv" in err and "'click'" in err and "got '5'" in err
    assert main(["convert", "table", "--src", str(src), "--out", str(tmp_path / "o3")]) == 2
    assert "--label" in capsys.readouterr().err
    assert (
        main(["convert", "criteo", "--src", str(tmp_path), "--out", str(tmp_path / "o4"), "--label", "y"])
        == 2
    )
    assert "only for `convert table`" in capsys.readouterr().err


@pytest.mark.skipif(not CRITEO.is_file(), reason=f"{CRITEO} not present")
def test_criteo_sample_as_a_table(tmp_path):
    from data_pipeline.reader import ParquetBatchReader

    out = tmp_path / "criteo"
    spec = run(CRITEO, out, label="label")
    n = sum(1 for _ in CRITEO.open()) - 1
    assert sum(spec.num_rows.values()) == n
    names = {*spec.dense, *spec.sparse_names}
    assert names == {f"I{i}" for i in range(1, 14)} | {f"C{i}" for i in range(1, 27)}
    assert {f"C{i}" for i in range(1, 27)} <= set(spec.sparse_names)
    assert (spec.user_id, spec.item_id) == ("", "")
    assert all(f.vocab_size >= 2 and not f.high_cardinality for f in spec.sparse)  # 200 rows < 1000
    batch = next(iter(ParquetBatchReader(out, "train", 32, shuffle=False)))
    assert batch.user_ids.tolist() == [0] * 32 and batch.item_ids.tolist() == [0] * 32
    assert batch.sparse.keys() == spec.sparse_names


# -- no user / item column downstream -------------------------------------------------------------------
def test_metrics_and_report_without_user_and_item(tmp_path):
    from launch.report import bayes_optimal, ceiling_row, section_test
    from trainer.metrics import evaluate_predictions, item_counts, popularity_buckets

    logits, labels = torch.tensor([0.1, 0.9, 0.3, 0.7]), torch.tensor([0.0, 1.0, 0.0, 1.0])
    out = evaluate_predictions(logits, labels, None, torch.zeros(4, dtype=torch.int64), None, 2)
    assert out["auc"] == 1.0 and "gauc" not in out and "tail_auc" not in out
    empty = popularity_buckets(torch.zeros(0, dtype=torch.int64), 10)
    assert empty.numel() == 0
    assert "tail_auc" not in evaluate_predictions(
        logits, labels, None, torch.zeros(4, dtype=torch.int64), empty, 2
    )

    lines = ["y,p,f"] + [f"{i % 2},{0.3 + 0.4 * (i % 2)},{i % 3}" for i in range(100)]
    data = tmp_path / "data"
    spec = run(
        write(tmp_path / "t.csv", "\n".join(lines) + "\n"), data, label="y", sparse=["f"], test_frac=0.5
    )
    assert item_counts(data, spec).numel() == 0
    spec.prob = "p"  # pretend p (a dense column here) is the true click probability
    spec.save(data)
    ceiling = bayes_optimal(data)
    assert ceiling["auc"] == 1.0 and np.isnan(ceiling["gauc"])
    assert np.isnan(ceiling_row(ceiling, 2)[2])  # GAUC cell: NaN, shown as '-'
    summaries = {n: {"auc": 0.7, "logloss": 0.5, "steps": 3} for n in ("id", "store")}
    text = section_test(summaries, ceiling)
    assert "No GAUC" in text and "No tail-item AUC" in text and "GAUC +" not in text


def test_train_dnn_without_user_and_item(tmp_path):
    lines = ["click,price,cat,tags"]
    rng = np.random.default_rng(0)
    for i in range(240):
        cat = i % 5
        lines.append(f"{int(rng.random() < 0.2 + 0.12 * cat)},{rng.normal():.3f},{cat},t{i % 4}|t{i % 3}")
    data = tmp_path / "data"
    argv = ["convert", "table", "--src", str(write(tmp_path / "t.csv", "\n".join(lines) + "\n"))]
    assert main([*argv, "--out", str(data), "--label", "click", "--multi", "tags"]) == 0
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "trainer", "--data", str(data), "--model", "dnn", "--epochs", "1",
        "--batch-size", "16", "--out", str(out), "--logging.progress", "false",
        "--logging.tensorboard", "false", "--model.mlp_dims", "16",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert "auc" in summary and "logloss" in summary
    assert "gauc" not in summary and "tail_auc" not in summary and "gauc" not in summary["test"]
    assert "no user column: no GAUC" in proc.stderr and "no item column" in proc.stderr
