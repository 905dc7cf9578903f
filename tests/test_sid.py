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
from store.sid import SidTable, sid_feature_names

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


@pytest.mark.parametrize(
    "what, message",
    [
        ("missing_meta", "meta.json: missing"),
        ("missing_column", "missing columns ['sid_2']"),
        ("code_out_of_range", "codebook_size=4"),
        ("duplicate_items", "'item_id' must hold each of"),
        ("bad_method", "method must be one of"),
    ],
)
def test_load_rejects_malformed_folders(tmp_path, what, message):
    _break(tmp_path, what)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SidTable.load(tmp_path)


def test_load_rejects_a_table_that_does_not_cover_the_dataset(tmp_path):
    SidTable.from_codes(torch.zeros(NUM_ITEMS - 1, 2, dtype=torch.long), 4).save(tmp_path)
    with pytest.raises(DataError, match=f"covers {NUM_ITEMS - 1} items but dataset 'tiny' has {NUM_ITEMS}"):
        SidTable.load(tmp_path, spec=tiny_spec())
