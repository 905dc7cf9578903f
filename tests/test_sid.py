"""SID tables: the data-time transform, the model-time lookup, the folder format and its errors.

Also home of the tiny hand-made spec / batch / SID table the other model tests import.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_pipeline.batch import Batch
from data_pipeline.spec import DataError, DatasetSpec, ItemTable, SparseFeature
from store.sid import SidTable, code_dtype, sid_feature_names, sid_features

NUM_ITEMS = 50


def tiny_spec(dense: int = 2) -> DatasetSpec:
    """Three static features in two groups, the item, and a 5-long item history."""
    return DatasetSpec(
        name="tiny",
        label="label",
        dense=[f"d{i}" for i in range(dense)],
        sparse=[
            SparseFeature("user_age", 7),
            SparseFeature("user_gender", 3),
            SparseFeature("ctx_hour", 24),
            SparseFeature("item_id", NUM_ITEMS, item_ref=True),
            SparseFeature("hist_items", NUM_ITEMS, multi=True, max_len=5, item_ref=True),
        ],
        item_id="item_id",
        user_id="user_id",
        timestamp="ts",
        item_table=ItemTable(num_items=NUM_ITEMS),
        feature_groups={"user": ["user_age", "user_gender"], "context": ["ctx_hour"]},
    )


def tiny_batch(spec: DatasetSpec, rows: int = 32, seed: int = 0) -> Batch:
    """Random rows; histories 0..max_len long (some empty); labels half ones."""
    g = torch.Generator().manual_seed(seed)
    values, lengths = [], []
    for f in spec.sparse:
        n = (
            torch.randint(0, f.max_len + 1, (rows,), generator=g)
            if f.multi
            else torch.ones(rows, dtype=torch.long)
        )
        values.append(torch.randint(0, f.vocab_size, (int(n.sum()),), generator=g))
        lengths.append(n)
    sparse = KeyedJaggedTensor.from_lengths_sync(spec.sparse_names, torch.cat(values), torch.cat(lengths))
    labels = torch.zeros(rows)
    labels[torch.randperm(rows, generator=g)[: rows // 2]] = 1.0
    item_ids = values[spec.sparse_names.index(spec.item_id)]
    return Batch(
        dense=torch.randn(rows, len(spec.dense), generator=g),
        sparse=sparse,
        labels=labels,
        user_ids=torch.arange(rows),
        item_ids=item_ids,
    )


def tiny_sids(num_sids: int = 3, codebook_size: int = 8, seed: int = 0) -> SidTable:
    g = torch.Generator().manual_seed(seed)
    return SidTable.from_codes(
        torch.randint(0, codebook_size, (NUM_ITEMS, num_sids), generator=g), codebook_size
    )


def test_transform_moves_item_features_to_their_codes():
    spec, sids = tiny_spec(), tiny_sids()
    batch = tiny_batch(spec)
    assert batch.sid is None
    out = sids.transform(batch, spec)
    assert out.sparse.keys() == ["user_age", "user_gender", "ctx_hour"]
    assert out.sid.keys() == sid_feature_names(spec, 3)
    assert out.sid.keys()[:2] == ["item_id_sid0", "hist_items_sid0"]  # k-major: one table per k
    before, after = batch.sparse.to_dict(), out.sid.to_dict()
    for f in ("item_id", "hist_items"):
        for k in range(3):
            jt = after[f"{f}_sid{k}"]
            assert torch.equal(jt.lengths(), before[f].lengths())
            assert torch.equal(jt.values(), sids.codes[before[f].values(), k])
    static = out.sparse.to_dict()
    for f in ("user_age", "user_gender", "ctx_hour"):
        assert torch.equal(static[f].values(), before[f].values())
        assert torch.equal(static[f].lengths(), before[f].lengths())
    assert torch.equal(out.item_ids, batch.item_ids) and torch.equal(out.labels, batch.labels)


def test_save_load_round_trip(tmp_path):
    sids = tiny_sids()
    sids.save(tmp_path / "sids")
    loaded = SidTable.load(tmp_path / "sids", spec=tiny_spec())
    assert loaded.num_sids == 3 and loaded.codebook_size == 8 and loaded.method == "opmq"
    assert torch.equal(loaded.codes, sids.codes)
    meta = json.loads((tmp_path / "sids" / "meta.json").read_text())
    assert meta["num_items"] == NUM_ITEMS


def test_load_reorders_rows_by_item_id(tmp_path):
    codes = tiny_sids().codes
    order = torch.randperm(NUM_ITEMS)
    cols = {"item_id": pa.array(order.numpy())}
    cols |= {f"sid_{k}": pa.array(codes[order, k].numpy()) for k in range(3)}
    tiny_sids().save(tmp_path)
    pq.write_table(pa.table(cols), tmp_path / "sid_table.parquet")
    assert torch.equal(SidTable.load(tmp_path).codes, codes)


def _break(tmp_path, what: str):
    sids = tiny_sids()
    sids.save(tmp_path)
    table = pq.read_table(tmp_path / "sid_table.parquet")
    meta = json.loads((tmp_path / "meta.json").read_text())
    if what == "missing_meta":
        (tmp_path / "meta.json").unlink()
    elif what == "missing_column":
        pq.write_table(table.drop(["sid_2"]), tmp_path / "sid_table.parquet")
    elif what == "code_out_of_range":
        meta["codebook_size"] = 4
        (tmp_path / "meta.json").write_text(json.dumps(meta))
    elif what == "duplicate_items":
        ids = pa.array([0] * NUM_ITEMS, pa.int64())
        pq.write_table(table.set_column(0, "item_id", ids), tmp_path / "sid_table.parquet")
    elif what == "bad_method":
        meta["method"] = "kmeans"
        (tmp_path / "meta.json").write_text(json.dumps(meta))
    elif what == "code_wraps_in_int16":  # 65539 would read as 3 once narrowed to int16
        wraps = pa.array([2**16 + 3] * NUM_ITEMS, pa.int64())
        pq.write_table(table.set_column(2, "sid_1", wraps), tmp_path / "sid_table.parquet")


@pytest.mark.parametrize(
    "what, message",
    [
        ("missing_meta", "meta.json: missing"),
        ("missing_column", "missing columns ['sid_2']"),
        ("code_out_of_range", "codebook_size=4"),
        ("duplicate_items", "'item_id' must hold each of"),
        ("bad_method", "method must be one of"),
        ("code_wraps_in_int16", r"sid_\* values must lie in \[0, codebook_size=8\)"),
    ],
)
def test_load_rejects_malformed_folders(tmp_path, what, message):
    _break(tmp_path, what)
    if what != "code_wraps_in_int16":
        message = message.replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(DataError, match=message):
        SidTable.load(tmp_path)


def test_load_rejects_a_table_that_does_not_cover_the_dataset(tmp_path):
    SidTable.from_codes(torch.zeros(NUM_ITEMS - 1, 2, dtype=torch.long), 4).save(tmp_path)
    with pytest.raises(DataError, match=f"covers {NUM_ITEMS - 1} items but dataset 'tiny' has {NUM_ITEMS}"):
        SidTable.load(tmp_path, spec=tiny_spec())


def held_tensors(obj) -> list[torch.Tensor]:
    """Every tensor a SidTable holds, in any field (dicts included)."""
    found, todo = [], list(vars(obj).values())
    while todo:
        v = todo.pop()
        if isinstance(v, torch.Tensor):
            found.append(v)
        elif isinstance(v, dict):
            todo += v.values()
    return found


def two_feature_codes() -> tuple[DatasetSpec, torch.Tensor, torch.Tensor]:
    """A spec tokenizing the item and ctx_hour, and int64 codes in [0, 8) for both ([rows, 3])."""
    g = torch.Generator().manual_seed(4)
    spec = tiny_spec().with_high_cardinality(["ctx_hour"])
    return spec, torch.randint(0, 8, (NUM_ITEMS, 3), generator=g), torch.randint(0, 8, (24, 3), generator=g)


def test_codes_are_held_once_in_the_narrowest_dtype(tmp_path):
    """One [K, rows] copy per feature, int16 up to 32,767 codewords, else int32: ``tables`` views it,
    ``codes_by_sid`` hands it out; on disk the columns stay int64 and load back narrow."""
    assert [code_dtype(c) for c in (8, 32767, 32768, 2**31 - 1, 2**31)] == [
        torch.int16, torch.int16, torch.int32, torch.int32, torch.int64,
    ]  # fmt: skip
    spec, item, hour = two_feature_codes()
    for codebook_size, dtype, width in ((8, torch.int16, 2), (40_000, torch.int32, 4)):
        built = SidTable.from_codes(item, codebook_size, features={"ctx_hour": hour})
        built.save(tmp_path / str(codebook_size))
        on_disk = pq.read_table(tmp_path / str(codebook_size) / "sid_table.parquet")
        assert on_disk.schema.field("sid_0").type == pa.int64()  # old readers keep working
        loaded = SidTable.load(tmp_path / str(codebook_size), spec)
        for sids in (built, loaded):
            storages = {
                t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held_tensors(sids)
            }
            assert len(storages) == 2  # one per feature: no [rows, K] copy beside the [K, rows] one
            assert sum(storages.values()) == sids.nbytes == (NUM_ITEMS + 24) * 3 * width
            by_sid = sids.codes_by_sid(spec)
            for f, codes in (("item_id", item), ("ctx_hour", hour)):
                assert by_sid[f].dtype == dtype and by_sid[f].is_contiguous()
                assert by_sid[f].shape == (3, len(codes)) and torch.equal(by_sid[f].long(), codes.t())
                assert sids.tables[f].shape == codes.shape and torch.equal(sids.tables[f].long(), codes)
                assert sids.tables[f].data_ptr() == by_sid[f].data_ptr()
    # 10M items, K = 4, C = 64: 80 MB (it was 640 MB: int64 [rows, K] plus an int64 transposed copy)
    assert SidTable.from_codes(torch.zeros(1_000_000, 4, dtype=torch.long), 64).nbytes == 8_000_000


def test_transform_output_is_bit_identical_to_int64_codes():
    """The narrow codes give the batch that int64 codes gave: same keys, int64 values, same lengths."""
    spec, item, hour = two_feature_codes()
    sids = SidTable.from_codes(item, 8, features={"ctx_hour": hour})
    batch = tiny_batch(spec, rows=64, seed=3)
    out = sids.transform(batch, spec).sid
    before = sid_features(
        batch.sparse, spec, {"item_id": item.t().contiguous(), "ctx_hour": hour.t().contiguous()}
    )
    assert out.keys() == before.keys() == sid_feature_names(spec, 3)
    assert out.values().dtype == before.values().dtype == torch.int64
    assert out.lengths().dtype == before.lengths().dtype
    assert torch.equal(out.values(), before.values()) and torch.equal(out.lengths(), before.lengths())
    raw = batch.sparse.to_dict()
    for key, jt in out.to_dict().items():  # and each key holds its ID's k-th code
        f, k = key.rsplit("_sid", 1)
        codes = hour if f == "ctx_hour" else item
        assert torch.equal(jt.values(), codes[raw[f].values(), int(k)]) and jt.values().dtype == torch.int64
