"""Metrics against scikit-learn on fixed examples, and the cross-rank gather with two gloo processes."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from sklearn.metrics import log_loss, roc_auc_score

from trainer.metrics import auc, evaluate_predictions, gauc, logloss, popularity_buckets


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
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1, 1, 0], dtype=torch.float32)
    logits = torch.tensor([-1.0, 0.5, 0.5, 2.0, -0.3, 0.1, 0.1, -2.0, 1.0, 0.0])
    assert auc(logits, labels) == pytest.approx(roc_auc_score(labels.numpy(), logits.numpy()), abs=1e-7)
    probs = torch.sigmoid(logits.double()).numpy()
    assert logloss(logits, labels) == pytest.approx(log_loss(labels.numpy(), probs), abs=1e-9)
    assert math.isnan(auc(logits, torch.ones(10)))


def test_gauc_matches_sklearn_with_ties_and_one_class_users():
    rng = np.random.default_rng(0)
    n = 2000
    users = rng.integers(0, 60, n)
    scores = np.round(rng.normal(size=n), 1)  # many ties
    labels = (rng.random(n) < 0.3 + 0.1 * (scores > 0)).astype(np.float32)
    users[users == 7] = 8  # a busy user
    labels[users == 3] = 1.0  # a one-class user: skipped
    got, used = gauc(torch.from_numpy(users), torch.from_numpy(scores), torch.from_numpy(labels))
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
