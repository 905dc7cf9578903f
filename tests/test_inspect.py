"""`inspect`: row counts from metadata, streamed column stats, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args, get_type_hints

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline import cli
from data_pipeline.__main__ import main
from data_pipeline.inspect import KMV_K, IdStats, InspectArgs, format_report, inspect_dataset
from data_pipeline.spec import SPLITS, DataError, DatasetSpec, ItemTable, SparseFeature
from data_pipeline.writer import ShardWriter, arrow_schema

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_dataset(root: Path) -> dict[str, pa.Table]:
    """A hand-made dataset with known values: NaNs, IDs beyond vocab_size, empty lists."""
    spec = DatasetSpec(
        name="tiny",
        label="y",
        dense=["d"],
        sparse=[
            SparseFeature("item", 10, item_ref=True),
            SparseFeature("cat", 4),
            SparseFeature("hist", 10, multi=True, max_len=2, item_ref=True),
        ],
        item_id="item",
        user_id="user",
        timestamp="ts",
        item_table=ItemTable(num_items=10, embedding_column=None),
        feature_groups={"g": ["cat"]},
    )
    schema = arrow_schema(spec)
    tables = {
        "train": {
            "y": [0.0, 1.0, 1.0, 0.0],
            "d": [1.0, float("nan"), 3.0, -2.0],
            "item": [0, 3, 3, 9],
            "cat": [0, 1, 5, 7],  # 5 and 7 are >= vocab_size 4
            "hist": [[], [1, 2, 3], [4], []],
            "user": [7, 7, 8, 9],
            "ts": [1, 2, 3, 4],
        },
        "valid": {"y": [1.0], "d": [0.5], "item": [2], "cat": [2], "hist": [[2]], "user": [8], "ts": [5]},
        "test": {"y": [], "d": [], "item": [], "cat": [], "hist": [], "user": [], "ts": []},
    }
    out = {}
    for split, cols in tables.items():
        t = pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema}, schema=schema)
        with ShardWriter(root / split, schema, rows_per_shard=2) as w:
            w.write(t)
        if t.num_rows == 0:  # ShardWriter writes no shard for no rows
            pq.write_table(t, root / split / "part-00000.parquet")
        out[split] = t
    with ShardWriter(root / "items", pa.schema([("item_id", pa.int64())])) as w:
        w.write(pa.table({"item_id": pa.array(np.arange(10))}))
    spec.num_rows = {s: t.num_rows for s, t in out.items()}
    spec.save(root)
    return out


def test_stats_are_exact_on_known_values(tmp_path):
    make_dataset(tmp_path)
    r = inspect_dataset(tmp_path)
    assert r["rows"] == {"train": 4, "valid": 1, "test": 0} and r["item_rows"] == 10
    assert r["label_mean"] == {"train": 0.5, "valid": 1.0, "test": None}
    c = r["columns"]
    assert c["d"] == {"kind": "number", "min": -2.0, "max": 3.0, "mean": 0.625, "nan": 1, "null": 0}
    assert c["cat"]["min"] == 0 and c["cat"]["max"] == 7 and c["cat"][">=vocab"] == 2
    assert c["cat"]["distinct~"] == 5
    assert c["item"]["distinct~"] == 4 and c["item"][">=vocab"] == 0
    h = c["hist"]
    assert (h["len_min"], h["len_max"], h["empty"], h[">max_len"]) == (0.0, 3.0, 2, 1)
    assert h["len_mean"] == pytest.approx(5 / 5) and h["value_distinct~"] == 4 and h["value_max"] == 4
    assert c["user"]["distinct~"] == 3 and c["ts"]["max"] == 5.0
    text = format_report(r)
    assert re.search(r"train\s+4\s+label mean 0\.5000", text) and "group g: cat" in text


def test_split_and_max_rows(tmp_path):
    make_dataset(tmp_path)
    r = inspect_dataset(tmp_path, ("train",), max_rows=3)
    assert r["columns"]["d"]["nan"] == 1 and r["columns"]["d"]["max"] == 3.0
    assert r["columns"]["item"]["max"] == 3  # the fourth row (item 9) was not read
    assert r["rows"]["train"] == 4  # row counts still come from the metadata


def test_distinct_estimate_is_close_for_many_ids():
    st = IdStats()
    rng = np.random.default_rng(0)
    ids = rng.choice(10**12, 200_000, replace=False)
    for chunk in np.array_split(np.concatenate([ids, ids[:50_000]]), 20):  # repeats must not count
        st.add(pa.array(chunk))
    assert len(st.sketch) == KMV_K
    assert st.distinct == pytest.approx(200_000, rel=0.05)


def test_cli_and_bad_input(tmp_path, capsys):
    make_dataset(tmp_path / "ds")
    assert main(["inspect", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "dataset tiny" in out and re.search(r"valid\s+1\s+label mean 1\.0000", out)
    assert main(["inspect", str(tmp_path / "ds"), "--json", "--split", "valid"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["columns"]["d"]["mean"] == 0.5 and report["columns_over"] == ["valid"]
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "ds" / "train" / "part-00000.parquet").unlink()
    (tmp_path / "ds" / "train" / "part-00001.parquet").unlink()
    with pytest.raises(DataError, match="no .parquet shards"):
        inspect_dataset(tmp_path / "ds")


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--split", "tests"], ["--split", "'tests'"]),
        (["--max-rows", "ten"], ["--max-rows", "'ten'"]),
        (["--rows", "3"], ["--rows"]),
    ],
)
def test_malformed_flags_exit_2_naming_the_flag(tmp_path, capsys, flags, named):
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and all(s in err for s in named), err


def test_flags_parse_to_the_same_settings(tmp_path, capsys):
    """--max-rows / --max_rows, --json, each split and all: the flags of the command lines in use;
    --split offers every split of the dataset format."""
    args = cli.parse(InspectArgs, [str(tmp_path), "--max_rows", "5", "--json", "--split", "test"], prog="t")
    assert (args.dir, args.max_rows, args.json, args.split) == (str(tmp_path), 5, True, "test")
    assert cli.parse(InspectArgs, [str(tmp_path)], prog="t") == InspectArgs(str(tmp_path))
    assert get_args(get_type_hints(InspectArgs)["split"]) == (*SPLITS, "all")
    assert main(["inspect", str(tmp_path), "--max-rows", "-1"]) == 2
    assert "--max-rows must be >= 0, got -1" in capsys.readouterr().err


def test_converted_movielens(tmp_path):
    src = DATA / "ml-100k"
    if not src.is_dir():
        pytest.skip(f"{src} not available")
    assert main(["convert", "movielens", "--src", str(src), "--out", str(tmp_path / "ml")]) == 0
    r = inspect_dataset(tmp_path / "ml")
    assert r["rows"] == {"train": 80_000, "valid": 10_000, "test": 10_000}
    c = r["columns"]
    assert c["click"]["mean"] == pytest.approx(0.55375, abs=1e-6)
    assert c["user_id"]["distinct~"] == 943 and c["item_id"]["distinct~"] == 1682
    assert c["hist_items"]["len_max"] == 20 and c["hist_items"]["value_>=vocab"] == 0
    assert c["hour"]["min"] == 0 and c["hour"]["max"] == 23


def test_truncated_shard_is_exit_2_naming_the_file(tmp_path, capsys):
    """Issue 29: a truncated shard was pyarrow's ArrowInvalid traceback (exit 1)."""
    make_dataset(tmp_path / "ds")
    shard = tmp_path / "ds" / "valid" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    assert main(["inspect", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert f"{shard}: not a readable parquet file, corrupt or truncated" in err
    assert "Traceback" not in err


def test_corrupt_pages_are_exit_2_naming_the_file(tmp_path, capsys):
    """A footer that parses over corrupt data pages: the error names the shard too."""
    make_dataset(tmp_path / "ds")
    shard = tmp_path / "ds" / "train" / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[4 : len(data) // 2] = b"\xff" * (len(data) // 2 - 4)  # the pages, not the footer at the end
    shard.write_bytes(bytes(data))
    assert main(["inspect", str(tmp_path / "ds"), "--split", "train"]) == 2
    assert f"{shard}: not a readable parquet file" in capsys.readouterr().err


def test_a_file_is_not_a_dataset_folder(tmp_path, capsys):
    make_dataset(tmp_path / "ds")
    spec_file = tmp_path / "ds" / "spec.json"
    assert main(["inspect", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert f"{spec_file}: is a file, not a dataset folder" in err and "does not exist" not in err
