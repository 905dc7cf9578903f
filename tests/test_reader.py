"""Streaming reader: exactly-once splitting, equal batch counts, reshuffling, resume, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_pipeline.reader import ROW_RUN, ParquetBatchReader, map_ids
from data_pipeline.spec import DataError, DatasetSpec, ItemTable, SparseFeature
from data_pipeline.writer import ShardWriter, arrow_schema

REPO = Path(__file__).resolve().parents[1]


def tiny_spec(max_len: int = 3, id_mapping: str = "mod") -> DatasetSpec:
    return DatasetSpec(
        name="tiny",
        label="label",
        dense=["d0", "d1"],
        sparse=[
            SparseFeature("user_id", 1000),
            SparseFeature("item_id", 50, item_ref=True),
            SparseFeature("cat", 7),
            SparseFeature("hist", 50, multi=True, max_len=max_len, item_ref=True),
        ],
        item_id="item_id",
        user_id="user_id",
        timestamp="ts",
        id_mapping=id_mapping,
        item_table=ItemTable(num_items=50, embedding_column=None),
    )


def tiny_table(start: int, n: int) -> pa.Table:
    """Row i has user_id = ts = i (a unique row key), item = i % 50, hist = [i, i+1, ..] of length i % 5."""
    rows = np.arange(start, start + n)
    hist = [list(range(i, i + i % 5)) for i in rows]
    return pa.table(
        {
            "label": (rows % 3 == 0).astype(np.float32),
            "d0": rows.astype(np.float32),
            "d1": (rows * 0.5).astype(np.float32),
            "user_id": rows,
            "item_id": rows % 50,
            "cat": rows * 3,
            "hist": pa.array(hist, type=pa.list_(pa.int64())),
            "ts": rows,
        }
    )


def write_dataset(
    root: Path, rows_per_shard: list[int], row_group: int = 16, spec: DatasetSpec | None = None
):
    spec = spec or tiny_spec()
    root.mkdir(parents=True, exist_ok=True)
    spec.save(root)
    schema = arrow_schema(spec)
    start = 0
    for split in ("train", "valid", "test"):
        folder = root / split
        for s, n in enumerate(rows_per_shard):
            table = tiny_table(start, n).select(schema.names).cast(schema)
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / f"part-{s:05d}.parquet", row_group_size=row_group)
            start += n
    return spec


def row_keys(batches) -> list[int]:
    return [int(u) for b in batches for u in b.user_ids]


@pytest.fixture()
def data(tmp_path):
    write_dataset(tmp_path / "ds", [37, 50, 13])  # 100 rows per split, uneven shards and row groups
    return tmp_path / "ds"


def read_all(root, world, split="train", **kw):
    out = []
    for r in range(world):
        reader = ParquetBatchReader(root, split, rank=r, world_size=world, **kw)
        out.append(list(reader))
    return out


def test_eval_reads_every_row_exactly_once_with_equal_batch_counts(data):
    for world in (1, 2, 3, 7):
        per_rank = read_all(data, world, batch_size=8, drop_remainder=False, seed=1)
        assert len({len(b) for b in per_rank}) == 1, f"unequal batch counts for world={world}"
        keys = []
        for r in range(world):
            reader = ParquetBatchReader(
                data, "train", 8, rank=r, world_size=world, drop_remainder=False, seed=1
            )
            valid = reader.valid_rows
            keys += row_keys(per_rank[r])[:valid]
        assert sorted(keys) == list(range(100)), f"world={world}"


def test_train_drops_only_a_small_tail_and_never_repeats(data):
    for world in (1, 2, 4):
        per_rank = read_all(data, world, batch_size=8, drop_remainder=True, seed=3)
        counts = {len(b) for b in per_rank}
        assert counts == {100 // world // 8}
        keys = [k for b in per_rank for k in row_keys(b)]
        assert len(keys) == len(set(keys))
        assert all(b.batch_size == 8 for bs in per_rank for b in bs)


def test_more_ranks_than_shards(tmp_path):
    write_dataset(tmp_path / "one", [30])  # one shard, two row groups, eight ranks
    per_rank = read_all(tmp_path / "one", 8, batch_size=2, drop_remainder=False)
    assert len({len(b) for b in per_rank}) == 1
    assert sorted(set(k for b in per_rank for k in row_keys(b))) == list(range(30))


def test_reshuffles_per_epoch_and_is_deterministic(data):
    reader = ParquetBatchReader(data, "train", 10, seed=5)
    e0 = row_keys(reader)
    assert row_keys(reader) == e0  # same epoch again: same order
    reader.set_epoch(1)
    e1 = row_keys(reader)
    assert e1 != e0 and sorted(e1) == sorted(e0)
    assert row_keys(ParquetBatchReader(data, "train", 10, seed=5)) == e0
    unshuffled = row_keys(ParquetBatchReader(data, "train", 10, shuffle=False))
    assert unshuffled == list(range(100))


def test_workers_yield_the_same_sequence(data):
    a = list(ParquetBatchReader(data, "train", 6, seed=2, drop_remainder=False))
    b = list(ParquetBatchReader(data, "train", 6, seed=2, drop_remainder=False, num_workers=2))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.user_ids, y.user_ids)
        assert torch.equal(x.sparse.values(), y.sparse.values())
        assert torch.equal(x.dense, y.dense)


def test_batch_contents(tmp_path):
    spec = write_dataset(tmp_path / "ds", [20], spec=tiny_spec(max_len=3))
    batch = next(iter(ParquetBatchReader(tmp_path / "ds", "train", 20, shuffle=False)))
    assert batch.sparse.keys() == spec.sparse_names
    feats = batch.sparse.to_dict()
    rows = np.arange(20)
    assert feats["cat"].values().tolist() == ((rows * 3) % 7).tolist()
    hist = feats["hist"]
    expected = [list(range(i, i + i % 5))[-3:] for i in rows]  # last max_len kept
    assert hist.lengths().tolist() == [len(h) for h in expected]
    assert hist.values().tolist() == [v for h in expected for v in h]
    assert batch.dense[:, 0].tolist() == rows.astype(float).tolist()
    assert batch.labels.tolist() == (rows % 3 == 0).astype(float).tolist()
    assert batch.item_ids.tolist() == (rows % 50).tolist()


def test_hash_mapping_stays_in_range_and_spreads():
    ids = np.arange(0, 10_000, dtype=np.int64) * 1000  # multiples of the table size: modulo collides
    hashed = map_ids(ids, 100, "hash")
    assert hashed.min() >= 0 and hashed.max() < 100
    assert len(np.unique(hashed)) == 100
    assert len(np.unique(map_ids(ids, 100, "mod"))) == 1
    assert np.array_equal(map_ids(ids, 100, "hash"), hashed)  # deterministic


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_same_world_neither_skips_nor_repeats(data, workers):
    full = [row_keys(ParquetBatchReader(data, "train", 4, rank=r, world_size=2, seed=9)) for r in range(2)]
    for r in range(2):
        reader = ParquetBatchReader(data, "train", 4, rank=r, world_size=2, seed=9, num_workers=workers)
        it = iter(reader)
        head = [next(it) for _ in range(5)]
        state = reader.state_dict(batches_done=3)  # e.g. a pipeline that prefetched two batches
        resumed = ParquetBatchReader(data, "train", 4, rank=r, world_size=2, seed=9, num_workers=workers)
        resumed.load_state_dict(state)
        assert len(resumed) == len(full[r]) // 4 - 3
        assert row_keys(head[:3]) + row_keys(resumed) == full[r]
        assert resumed.position()["epoch"] == 0


def test_resume_on_a_different_world_size_is_exact(data):
    # 2 ranks read 3 batches each, then 3 ranks finish the epoch: every row exactly once.
    seen = []
    states = []
    for r in range(2):
        reader = ParquetBatchReader(data, "valid", 5, rank=r, world_size=2, seed=4, drop_remainder=False)
        it = iter(reader)
        seen += row_keys([next(it) for _ in range(3)])
        states.append(reader.state_dict())
    assert all(torch.equal(states[0]["segments"], s["segments"]) for s in states)  # rank-agnostic
    counts = []
    for r in range(3):
        reader = ParquetBatchReader(data, "valid", 5, rank=r, world_size=3, seed=4, drop_remainder=False)
        reader.load_state_dict(states[0])
        counts.append(len(reader))
        seen += row_keys(list(reader))[: reader.valid_rows]
    assert len(set(counts)) == 1
    assert sorted(seen) == list(range(100, 200))
    # and a second resume back onto 1 rank after one more batch of the 3-rank layout
    reader = ParquetBatchReader(data, "valid", 5, rank=0, world_size=3, seed=4, drop_remainder=False)
    reader.load_state_dict(states[0])
    state = reader.state_dict(batches_done=1)
    assert state["num_segments"] == 2


def test_state_is_plain_tensors_and_ints(data):
    state = ParquetBatchReader(data, "train", 4).state_dict()
    for v in state.values():
        assert isinstance(v, int | torch.Tensor)


# -- bad input ----------------------------------------------------------------------------------------
def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ParquetBatchReader(tmp_path / "nope", "train", 4)
    (tmp_path / "ds").mkdir()
    with pytest.raises(DataError, match="spec.json"):
        ParquetBatchReader(tmp_path / "ds", "train", 4)
    tiny_spec().save(tmp_path / "ds")
    (tmp_path / "ds" / "train").mkdir()
    with pytest.raises(DataError, match=r"train: no \.parquet shards"):
        ParquetBatchReader(tmp_path / "ds", "train", 4)


def test_corrupt_shard_is_named(data):
    shard = data / "train" / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match="part-00001.parquet.*corrupt or truncated"):
        ParquetBatchReader(data, "train", 4)


def test_missing_and_mistyped_columns_are_named(data):
    shard = data / "train" / "part-00000.parquet"
    t = pq.read_table(shard)
    pq.write_table(t.drop_columns(["cat"]), shard)
    with pytest.raises(DataError, match="part-00000.parquet: missing column 'cat'"):
        ParquetBatchReader(data, "train", 4)
    pq.write_table(t.set_column(t.schema.get_field_index("cat"), "cat", t["cat"].cast(pa.string())), shard)
    with pytest.raises(DataError, match="column 'cat' has type string, expected int"):
        ParquetBatchReader(data, "train", 4)


def test_spec_disagreeing_with_shards(data):
    spec = json.loads((data / "spec.json").read_text())
    spec["dense"].append("d_missing")
    (data / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="missing column 'd_missing'"):
        ParquetBatchReader(data, "train", 4)
    spec["dense"] = ["d0"]
    spec["id_mapping"] = "bogus"
    (data / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="spec.json: id_mapping"):
        ParquetBatchReader(data, "train", 4)


def test_negative_ids_nan_and_nulls(data, caplog):
    shard = data / "train" / "part-00000.parquet"
    t = pq.read_table(shard)
    cat = t["cat"].to_numpy().copy()
    cat[3] = -5
    pq.write_table(t.set_column(t.schema.get_field_index("cat"), "cat", pa.array(cat)), shard)
    with pytest.raises(DataError, match="column 'cat' has negative IDs"):
        list(ParquetBatchReader(data, "train", 4, shuffle=False))

    d0 = t["d0"].to_numpy().copy()
    d0[[1, 2]] = np.nan
    pq.write_table(t.set_column(t.schema.get_field_index("d0"), "d0", pa.array(d0)), shard)
    reader = ParquetBatchReader(data, "train", 100, shuffle=False, drop_remainder=False)
    batch = next(iter(reader))
    assert not torch.isnan(batch.dense).any()
    assert batch.dense[1, 0] == 0 and batch.dense[2, 0] == 0
    assert "replaced 2 NaN dense values with 0" in caplog.text

    cat_null = pa.array([None] + cat[1:].tolist(), type=pa.int64())
    pq.write_table(t.set_column(t.schema.get_field_index("cat"), "cat", cat_null), shard)
    with pytest.raises(DataError, match="column 'cat' has 1 null values"):
        list(ParquetBatchReader(data, "train", 4, shuffle=False))


def test_memory_stays_bounded_while_streaming_many_rows(tmp_path):
    """Stream ~8M rows (~1.5 GB decoded) through a process whose RSS may grow by < 350 MB."""
    spec = tiny_spec(max_len=8)
    root = tmp_path / "big"
    spec.save(root)
    schema = arrow_schema(spec)
    chunk = tiny_table(0, 1 << 18).select(schema.names).cast(schema)
    for split in ("train",):
        with ShardWriter(root / split, schema, rows_per_shard=1 << 21, row_group_size=1 << 16) as w:
            for _ in range(32):
                w.write(chunk)
    script = textwrap.dedent(
        f"""
        import resource, sys
        from data_pipeline.reader import ParquetBatchReader
        reader = ParquetBatchReader({str(root)!r}, "train", 8192, seed=0)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows = 0
        for b in reader:
            rows += b.batch_size
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(rows, (peak - base) // 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True, timeout=300
    )
    rows, growth_mb = map(int, out.stdout.split())
    assert rows == (32 << 18) // 8192 * 8192
    assert growth_mb < 350, f"RSS grew by {growth_mb} MB while streaming {rows} rows"


def test_rows_inside_a_row_group_are_shuffled_in_runs(tmp_path):
    write_dataset(tmp_path / "ds", [200], row_group=200)  # one row group: only the in-group shuffle acts
    reader = ParquetBatchReader(tmp_path / "ds", "train", 200, seed=1, drop_remainder=False)
    keys = row_keys(reader)
    assert sorted(keys) == list(range(200)) and keys != list(range(200))
    runs = [keys[i : i + ROW_RUN] for i in range(0, 192, ROW_RUN)]
    assert all(r == list(range(r[0], r[0] + ROW_RUN)) and r[0] % ROW_RUN == 0 for r in runs)
    assert keys[192:] == list(range(192, 200))  # the partial last run stays last
    perm = reader._row_perm(0, 200)
    assert [perm.source_row(i) for i in range(200)] == keys
    fresh = ParquetBatchReader(tmp_path / "ds", "train", 200, seed=1, drop_remainder=False)
    assert fresh.position()["offset"] == keys[0]
