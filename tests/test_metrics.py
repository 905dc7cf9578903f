"""Metrics against scikit-learn on fixed examples, the train split's click rate and item popularity
(one pass, also from a URI), and the cross-rank gather with two gloo processes."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from sklearn.metrics import log_loss, roc_auc_score

from data_pipeline.spec import DataError, DatasetSpec
from store.metrics import auc, gauc_and_users, logloss, users_with_both_classes
from trainer.metrics import evaluate_predictions, popularity_buckets, train_split_stats


def sklearn_gauc(users, scores, labels):
    num, den = 0.0, 0.0
    for u in np.unique(users):
        m = users == u
        if labels[m].min() == labels[m].max():
            continue
        num += m.sum() * roc_auc_score(labels[m], scores[m])
        den += m.sum()
    return num / den


def test_auc_and_logloss_match_sklearn_on_fixed_example():
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0], dtype=np.float32)
    logits = np.array([-1.0, 0.5, 0.5, 2.0, -0.3, 0.1, 0.1, -2.0, 1.0, 0.0])
    assert auc(logits, labels) == pytest.approx(roc_auc_score(labels, logits), abs=1e-12)
    probs = torch.sigmoid(torch.from_numpy(logits)).numpy()
    assert logloss(logits, labels) == pytest.approx(log_loss(labels, probs), abs=1e-12)
    assert logloss(np.array([800.0, -800.0]), np.array([0.0, 1.0])) == pytest.approx(800.0)
    assert math.isnan(auc(logits, np.ones(10)))


def test_gauc_matches_sklearn_with_ties_and_one_class_users():
    rng = np.random.default_rng(0)
    n = 2000
    users = rng.integers(0, 60, n)
    scores = np.round(rng.normal(size=n), 1)  # many ties
    labels = (rng.random(n) < 0.3 + 0.1 * (scores > 0)).astype(np.float32)
    users[users == 7] = 8  # a busy user
    labels[users == 3] = 1.0  # a one-class user: skipped
    got, used = gauc_and_users(users * 7 + 3, scores, labels)  # arbitrary user IDs, not 0..U-1
    assert users_with_both_classes(users * 7 + 3, labels) == used  # metrics.json's gauc_users
    assert got == pytest.approx(sklearn_gauc(users, scores, labels), abs=1e-10)
    assert used == len([u for u in np.unique(users) if 0 < labels[users == u].mean() < 1])


def test_popularity_buckets_and_tail_auc():
    counts = torch.tensor([5, 0, 9, 1, 3, 7, 2, 8, 6, 4])  # item i -> impressions
    buckets = popularity_buckets(counts, 5)
    assert buckets.tolist() == [2, 0, 4, 0, 1, 3, 1, 4, 3, 2]
    items = torch.tensor([1, 3, 6, 4, 2, 7, 1, 3])
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 1, 0], dtype=torch.float32)
    logits = torch.tensor([0.1, 0.9, 0.8, 0.2, 0.5, 0.5, 0.7, 0.3])
    out = evaluate_predictions(
        logits, labels, torch.zeros(8, dtype=torch.long), items, buckets, tail_buckets=2
    )
    tail = buckets[items] < 2
    want = roc_auc_score(labels[tail].numpy(), logits[tail].numpy())
    assert out["tail_rows"] == int(tail.sum()) == 6
    assert out["tail_auc"] == pytest.approx(want)
    assert out["auc"] == pytest.approx(roc_auc_score(labels.numpy(), logits.numpy()))
    assert len(out["bucket_auc"]) == 5 and out["bucket_rows"] == [4, 2, 0, 0, 2]


def test_train_split_stats_read_each_row_group_once(tmp_path, monkeypatch):
    """The positive rate and impressions per item of the train split in one pass (each row group read
    once, label and item together), equal to counting the whole split at once; the same from an
    fsspec memory:// copy of the dataset; a shard without the item column is named."""
    import shutil

    import pyarrow.parquet as pq

    from data_pipeline.synthetic import generate_dataset

    gen = {"items": 200, "users": 50, "seed": 2, "rows_per_shard": 400, "progress": False}
    spec = generate_dataset(tmp_path / "syn", 1500, **gen)
    shards = sorted((tmp_path / "syn" / "train").glob("*.parquet"))
    pq.write_table(pq.read_table(shards[0]), shards[0], row_group_size=70)  # several row groups
    groups = sum(pq.ParquetFile(p).num_row_groups for p in shards)
    assert len(shards) > 1 and groups > len(shards) + 3

    reads = []
    original = pq.ParquetFile.read_row_group

    def counting(self, i, columns=None, **kw):
        reads.append(tuple(columns))
        return original(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    stats = train_split_stats(tmp_path / "syn", spec)
    assert reads == [(spec.label, spec.item_id)] * groups

    whole = pq.read_table(shards, columns=[spec.label, spec.item_id])
    labels, items = whole[spec.label].to_numpy(), whole[spec.item_id].to_numpy()
    assert stats.rows == len(labels) == spec.num_rows["train"]
    assert stats.positive_rate == pytest.approx(labels.mean(), abs=1e-12)
    assert stats.item_counts.dtype == torch.int64 and stats.item_counts.shape == (200,)
    assert stats.item_counts.tolist() == np.bincount(items, minlength=200).tolist()

    generate_dataset("memory://metrics-test/syn", 1500, **gen)
    remote = train_split_stats("memory://metrics-test/syn", DatasetSpec.load("memory://metrics-test/syn"))
    local = train_split_stats(tmp_path / "syn", spec)  # the rewritten shard: same rows
    assert remote.positive_rate == local.positive_rate and torch.equal(remote.item_counts, local.item_counts)

    shutil.copytree(tmp_path / "syn", tmp_path / "broken")
    broken = tmp_path / "broken" / "train" / shards[1].name
    pq.write_table(pq.read_table(broken).drop([spec.item_id]), broken)
    with pytest.raises(DataError, match=f"{broken}: no column '{spec.item_id}'"):
        train_split_stats(tmp_path / "broken", spec)


# -- across ranks (two gloo processes) -------------------------------------------------------------
ROWS_PER_RANK = {0: 7, 1: 3}  # uneven: the last batch of a split is short on some ranks


def split_rows(rank: int) -> slice:
    start = sum(n for r, n in ROWS_PER_RANK.items() if r < rank)
    return slice(start, start + ROWS_PER_RANK[rank])


def split_predictions() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    n = sum(ROWS_PER_RANK.values())
    logits, labels = torch.randn(n, generator=g), (torch.rand(n, generator=g) > 0.5).float()
    return logits, labels, torch.randint(0, 3, (n,), generator=g), torch.randint(0, 10, (n,), generator=g)


def _gather_on_two_ranks(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from trainer import distributed as D

    D.init_distributed("cpu")
    mine = [t[split_rows(rank)] for t in split_predictions()]
    gathered = [D.gather_tensors(t) for t in mine]
    empty = D.gather_tensors(torch.arange(3) if rank == 0 else torch.zeros(0, dtype=torch.int64))
    torch.save({"gathered": gathered, "empty": empty}, f"{out}.rank{rank}")
    D.close_distributed()


@pytest.mark.slow
def test_gather_tensors_concatenates_uneven_ranks_in_rank_order(tmp_path):
    from trainer.distributed import _free_port

    out = tmp_path / "gathered"
    mp.spawn(_gather_on_two_ranks, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    whole = split_predictions()
    for rank in (0, 1):  # every rank receives the whole split, in rank order
        got = torch.load(f"{out}.rank{rank}")
        for g, w in zip(got["gathered"], whole):
            assert torch.equal(g, w)
        assert got["empty"].tolist() == [0, 1, 2]  # a rank may hold no rows
