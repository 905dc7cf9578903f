"""Out-of-fold SIDs (``--oof-folds``): no train row's label reaches its own SIDs.

A row's fold is a hash of its sparse values (``store.sid.row_folds``); fold j's codes come from rows an
FM learned without fold j's train rows; train batches take their fold's codes, valid and test batches
the codes learned on the whole train split."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_pipeline.spec import DatasetSpec
from store.sid import SidTable, row_folds, sid_feature_name
from store.tokenizer import learned
from store.tokenizer.config import FMConfig
from store.tokenizer.pipeline import main as tokenize_main
from tests.test_sid import NUM_ITEMS, tiny_batch, tiny_spec

K, C, F = 2, 8, 3
KEYS = ("item_id", "user_age", "user_gender", "ctx_hour", "hist_items")


def _kjt(rows: list[dict[str, list[int]]]) -> KeyedJaggedTensor:
    keys = list(rows[0])
    values = [v for key in keys for r in rows for v in r[key]]
    lengths = [len(r[key]) for key in keys for r in rows]
    return KeyedJaggedTensor.from_lengths_sync(keys, torch.tensor(values), torch.tensor(lengths))


def test_a_rows_fold_depends_on_its_values_only():
    rows = [{"a": [i % 7], "h": list(range(i % 3))} for i in range(300)]
    folds = row_folds(_kjt(rows), ("a", "h"), F)
    # the same rows in other batches, in another order, with keys listed otherwise: the same folds
    again = torch.cat([row_folds(_kjt(rows[i : i + 64]), ("a", "h"), F) for i in range(0, 300, 64)])
    assert torch.equal(folds, again)
    reordered = _kjt([{"h": r["h"], "a": r["a"]} for r in rows[::-1]])
    assert torch.equal(row_folds(reordered, ("a", "h"), F), folds.flip(0))
    assert ((folds >= 0) & (folds < F)).all()
    distinct = [{"a": [i], "h": [i, i + 1]} for i in range(3000)]
    share = torch.bincount(row_folds(_kjt(distinct), ("a", "h"), F), minlength=F) / 3000
    assert (share - 1 / F).abs().max() < 0.04, share
    with pytest.raises(ValueError, match=r"features \['b'\]"):
        row_folds(_kjt(rows), ("a", "b"), F)


def _table_with_folds(spec) -> SidTable:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, C, (NUM_ITEMS, K), generator=g)
    folds = torch.randint(0, C, (F, NUM_ITEMS, K), generator=g)
    return SidTable({"item_id": codes}, C, folds={"item_id": folds}, fold_keys=KEYS)


def test_train_batches_take_their_folds_codes_and_eval_batches_the_full_table(tmp_path):
    spec = tiny_spec()
    sids = _table_with_folds(spec)
    batch = tiny_batch(spec, rows=64)
    fold = row_folds(batch.sparse, KEYS, F)
    assert len(torch.unique(fold)) == F  # the batch spans every fold
    train, evaluation = sids.transform(batch, spec, train=True), sids.transform(batch, spec)
    for f in ("item_id", "hist_items"):
        ids, lengths = batch.sparse[f].values(), batch.sparse[f].lengths()
        fold_of = torch.repeat_interleave(fold, lengths)
        for k in range(K):
            key = sid_feature_name(f, k)
            assert torch.equal(train.sid[key].values(), sids.folds["item_id"][fold_of, ids, k])
            assert torch.equal(evaluation.sid[key].values(), sids.codes[ids, k])
            assert torch.equal(train.sid[key].lengths(), lengths)
    sids.save(tmp_path / "s")
    loaded = SidTable.load(tmp_path / "s", spec)
    assert loaded.num_folds == F and loaded.fold_keys == KEYS
    assert torch.equal(loaded.folds["item_id"], sids.folds["item_id"])
    assert torch.equal(loaded.transform(batch, spec, train=True).sid.values(), train.sid.values())
    assert sorted(p.name for p in (tmp_path / "s").glob("*.parquet"))[:2] == [
        "sid_table.fold0.parquet",
        "sid_table.fold1.parquet",
    ]


def test_the_fm_learns_nothing_from_the_fold_it_leaves_out(tiny_data):
    spec = DatasetSpec.load(tiny_data)
    keys = tuple(spec.sparse_names)
    per_fold = learned.train_counts(tiny_data, spec, ["item_id"], progress=False, folds=(keys, 2))["item_id"]
    only_in_0 = (per_fold[0] > 0) & (per_fold[1] == 0)
    only_in_1 = (per_fold[1] > 0) & (per_fold[0] == 0)
    assert only_in_0.sum() > 5 and only_in_1.sum() > 5
    assert torch.equal(
        per_fold.sum(0), learned.train_counts(tiny_data, spec, ["item_id"], progress=False)["item_id"]
    )
    cfg = replace(FMConfig(epochs=1, batch_size=128), seed=0)
    rows = learned.train_fm(tiny_data, spec, ["item_id"], cfg, False, leave_out=(keys, 2, 0), logit=False)[
        "item_id"
    ]
    start = learned.train_fm(tiny_data, spec, ["item_id"], replace(cfg, lr=1e-30), False, logit=False)[
        "item_id"
    ]
    # IDs seen only in the left-out fold keep their initial factors and a zero first-order weight
    assert torch.allclose(rows[only_in_0], start[only_in_0], rtol=0, atol=1e-12)  # start: lr ~ 0
    assert (rows[only_in_0, -1] == 0).all()
    assert not torch.allclose(rows[only_in_1], start[only_in_1])


def test_learned_rows_rotated_onto_the_full_rows():
    g = torch.Generator().manual_seed(0)
    full = torch.randn(200, 6, generator=g)
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    weight = torch.ones(200)
    weight[:50] = 0  # rows the fold never saw: not used for the fit, rotated all the same
    assert torch.allclose(learned.align(full @ rotation, full, weight), full, atol=1e-5)


def test_the_tokenizer_writes_fold_tables_that_leave_each_folds_rows_out(tiny_data, tmp_path):
    out = tmp_path / "sids"
    argv = ["--data", str(tiny_data), "--out", str(out), "--num-sids", "2", "--codebook-size", "8"]
    flags = ["--min-steps", "20", "--fm-epochs", "1", "--embedding", "learned", "--no-progress"]
    assert tokenize_main([*argv, *flags, "--oof", "on", "--oof-folds", "2", "--min-count", "1"]) == 0
    spec = DatasetSpec.load(tiny_data)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["oof_folds"] == 2 and meta["fold_keys"] == spec.sparse_names
    assert meta["learned_from"] == "fm (train split), out-of-fold codes for the train rows (2 folds)"
    sids = SidTable.load(out, spec)
    assert sids.num_folds == 2 and set(sids.folds) == {"item_id", "user_id"}
    per_fold = learned.train_counts(tiny_data, spec, ["item_id"], progress=False, folds=(sids.fold_keys, 2))[
        "item_id"
    ]
    reserved = meta["unseen_code"]
    for j in range(2):
        # an item whose every train row is in fold j has no row learned without fold j: reserved there
        only_here = (per_fold[j] > 0) & (per_fold[1 - j] == 0)
        assert (sids.folds["item_id"][j][only_here] == reserved).all()
        assert (sids.codes[only_here] != reserved).all()  # the full table learned them


def test_oof_flags_are_checked(tiny_data, tmp_path, run):
    for flags, message in (
        (["--oof-folds", "1"], "--oof-folds must be >= 2"),
        (["--oof", "yes"], "--oof must be one of auto, on, off"),
        (["--oof", "on", "--disambiguate"], "--oof on and --disambiguate do not combine"),
    ):
        done = run("-m", "store.tokenizer", "--data", str(tiny_data), "--out", str(tmp_path / "s"), *flags)
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_the_trainer_refuses_to_drop_a_feature_that_decides_the_folds(tiny_data, tmp_path, run):
    spec = DatasetSpec.load(tiny_data)
    table = SidTable(
        {f: torch.zeros(spec.table_rows(f), K, dtype=torch.long) for f in spec.high_cardinality},
        C,
        folds={f: torch.zeros(F, spec.table_rows(f), K, dtype=torch.long) for f in spec.high_cardinality},
        fold_keys=tuple(spec.sparse_names),
        meta={"dataset": spec.record()},
    )
    table.save(tmp_path / "sids")
    dropped = next(f for f in spec.sparse_names if f not in spec.high_cardinality)
    done = run("-m", "trainer", "--data", str(tiny_data), "--model", "store", "--sids", str(tmp_path / "sids"),
               "--out", str(tmp_path / "o"), "--drop", dropped, "--max-steps", "1")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"out-of-fold codes are assigned by features ['{dropped}']" in done.stderr


def test_the_fm_logit_frame_measures_rows_by_the_logit_change_they_cause(tiny_data):
    """|frame[a] - frame[b]|^2 is the mean squared change of the FM's train logits when every row's
    ID moves from b's row to a's: the tokenizer quantizes FM rows in that metric."""
    spec = DatasetSpec.load(tiny_data)
    feature = "user_id"
    assert [f.name for f in spec.sparse if learned.table_of(spec, f.name) == f"t_{feature}"] == [feature]
    torch.manual_seed(0)
    model = learned.FM(spec, 4)
    i = model.index[learned.table_of(spec, feature)]
    with torch.no_grad():
        for table in (*model.v, *model.w):
            table.weight.normal_(0.0, 0.5)
    reader = learned.split_reader(tiny_data, spec, 256, 0, shuffle=False)
    frame = learned.logit_frame(model, reader, [feature], progress=False)[feature]
    raw = model.embeddings(feature)
    assert frame.shape == raw.shape

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(batch)[0] for batch in reader])

    for a, b in [(3, 7), (10, 40)]:
        before = logits()
        delta = raw[a] - raw[b]
        with torch.no_grad():  # every ID's row moved by a - b: each logit moves by <a - b, its context>
            model.v[i].weight += delta[:-1]
            model.w[i].weight += delta[-1]
        change = (logits() - before).double().pow(2).mean()
        with torch.no_grad():
            model.v[i].weight -= delta[:-1]
            model.w[i].weight -= delta[-1]
        assert float(change) > 0
        assert float((frame[a] - frame[b]).double().pow(2).sum()) == pytest.approx(float(change), rel=1e-3)
