"""Evaluation metrics: AUC, GAUC, logloss and tail-item AUC of a whole split.

The functions here see every row of the split: `trainer.evaluate` gathers the ranks' predictions
first, so the metrics are those of the whole split, not an average of per-rank metrics. AUC is
torchmetrics' exact `binary_auroc`; GAUC (per-user AUC, weighted by the user's impressions, users
with a single class skipped) is computed in one vectorised pass with tie-aware ranks (the
Mann-Whitney statistic per user). A dataset without a user column has no GAUC (``users=None``), one
without an item column no tail-item AUC (``buckets=None`` or empty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc

from data_pipeline import fs
from data_pipeline.spec import DataError, DatasetSpec, list_shards, split_dir


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC; NaN when only one class is present."""
    labels = labels.long()
    if labels.numel() == 0 or labels.min() == labels.max():
        return math.nan
    return float(binary_auroc(scores.float(), labels, thresholds=None))


def logloss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean binary cross-entropy of sigmoid(logits) (computed from logits, numerically stable)."""
    if labels.numel() == 0:
        return math.nan
    return float(F.binary_cross_entropy_with_logits(logits.double(), labels.double()))


def gauc(users: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Impression-weighted mean of per-user AUC over users with both classes -> (gauc, users used).

    Per user u with n_u rows, P_u positives and N_u negatives, AUC_u = (R_u - P_u (P_u + 1) / 2) /
    (P_u N_u), where R_u is the sum of the positives' ranks among the user's rows (ties share the
    mean rank). Vectorised: one sort by (user, score), then segment sums.
    """
    n = users.numel()
    if n == 0:
        return math.nan, 0
    scores = scores.double()
    labels = labels.double()
    # Sort by score, then stably by user: rows grouped by user, ascending score inside each group.
    order = torch.argsort(scores, stable=True)
    order = order[torch.argsort(users[order], stable=True)]
    u, s, y = users[order], scores[order], labels[order]
    new_user = torch.ones(n, dtype=torch.bool)
    new_user[1:] = u[1:] != u[:-1]
    user_id = torch.cumsum(new_user.long(), 0) - 1
    num_users = int(user_id[-1]) + 1
    user_start = torch.nonzero(new_user).squeeze(1)
    pos_in_user = torch.arange(n, dtype=torch.float64) - user_start[user_id].double() + 1  # ranks 1..n_u
    # Tie groups: equal score inside the same user share the mean of their ranks.
    new_tie = new_user.clone()
    new_tie[1:] |= s[1:] != s[:-1]
    tie_id = torch.cumsum(new_tie.long(), 0) - 1
    num_ties = int(tie_id[-1]) + 1
    tie_sum = torch.zeros(num_ties, dtype=torch.float64).index_add_(0, tie_id, pos_in_user)
    tie_cnt = torch.zeros(num_ties, dtype=torch.float64).index_add_(
        0, tie_id, torch.ones(n, dtype=torch.float64)
    )
    rank = (tie_sum / tie_cnt)[tie_id]

    count = torch.zeros(num_users, dtype=torch.float64).index_add_(
        0, user_id, torch.ones(n, dtype=torch.float64)
    )
    pos = torch.zeros(num_users, dtype=torch.float64).index_add_(0, user_id, y)
    rank_pos = torch.zeros(num_users, dtype=torch.float64).index_add_(0, user_id, rank * y)
    neg = count - pos
    both = (pos > 0) & (neg > 0)
    if not bool(both.any()):
        return math.nan, 0
    user_auc = (rank_pos[both] - pos[both] * (pos[both] + 1) / 2) / (pos[both] * neg[both])
    weights = count[both]
    return float((user_auc * weights).sum() / weights.sum()), int(both.sum())


# -- the train split's click rate and item popularity ----------------------------------------------
@dataclass
class TrainSplitStats:
    """What the trainer needs from the whole train split before it starts (`train_split_stats`)."""

    positive_rate: float
    """Mean label (0.5 when the split is empty): the output bias starts there."""
    item_counts: torch.Tensor
    """(num_items,) int64 impressions per item (popularity buckets, tail-item AUC); empty when the
    dataset has no item column (``spec.item_id == ""``)."""
    rows: int


def train_split_stats(root: str | Path, spec: DatasetSpec) -> TrainSplitStats:
    """The train split's positive rate and impressions per item in one pass: the label and item
    columns of one row group at a time (bounded memory whatever the split's size), from a path or an
    object-store URI. Item IDs outside [0, num_items) are not counted. DataError naming the shard
    when it lacks one of the columns."""
    columns = [spec.label, *([spec.item_id] if spec.item_id else [])]
    num_items = 0
    if spec.item_id:
        num_items = spec.item_table.num_items if spec.item_table else spec.feature(spec.item_id).vocab_size
    counts = np.zeros(num_items, dtype=np.int64)
    positives, rows = 0.0, 0
    for shard in list_shards(split_dir(root, "train")):
        pf = fs.parquet_file(shard)
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise DataError(f"{shard}: no column {', '.join(map(repr, missing))} (named by spec.json)")
        for g in range(pf.num_row_groups):
            group = pf.read_row_group(g, columns=columns)
            labels = group.column(spec.label).to_numpy()
            positives += float(labels.sum())
            rows += len(labels)
            if spec.item_id:
                ids = group.column(spec.item_id).to_numpy()
                ids = ids[(ids >= 0) & (ids < num_items)]
                counts += np.bincount(ids, minlength=num_items)
    return TrainSplitStats(
        positive_rate=positives / rows if rows else 0.5, item_counts=torch.from_numpy(counts), rows=rows
    )


def item_counts(root: str | Path, spec: DatasetSpec) -> torch.Tensor:
    """Impressions per item in the train split (`train_split_stats`); empty without an item column."""
    return train_split_stats(root, spec).item_counts


def train_positive_rate(root: str | Path, spec: DatasetSpec) -> float:
    """Mean label of the train split, 0.5 when it is empty (`train_split_stats`)."""
    return train_split_stats(root, spec).positive_rate


def popularity_buckets(counts: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Bucket per item: 0 = least popular 1/num_buckets of the catalog ... num_buckets-1 = most popular.

    Items are ranked by train impressions (ties broken by item ID, so the split is exact); bucket b
    holds catalog ranks [b * N / num_buckets, (b + 1) * N / num_buckets). Empty for empty counts (no
    item column).
    """
    n = counts.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.argsort(counts, stable=True)
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n)
    return (rank * num_buckets) // n


def evaluate_predictions(
    logits: torch.Tensor,
    labels: torch.Tensor,
    users: torch.Tensor | None,
    items: torch.Tensor,
    buckets: torch.Tensor | None = None,
    tail_buckets: int = 0,
) -> dict:
    """All metrics of one split from all its rows, each tensor (N,).

    users: None when the dataset has no user column: the result then has no gauc / gauc_users.
    buckets: popularity bucket per item (`popularity_buckets`); tail_auc is the AUC over rows whose
    item lies in buckets [0, tail_buckets). None or empty (no item column): no tail / bucket metrics.
    """
    logits, labels, items = logits.float().cpu(), labels.float().cpu(), items.long().cpu()
    g, g_users = gauc(users.long().cpu(), logits, labels) if users is not None else (None, None)
    out = {
        "auc": auc(logits, labels),
        "gauc": g,
        "logloss": logloss(logits, labels),
        "rows": int(labels.numel()),
        "positive_rate": float(labels.mean()) if labels.numel() else math.nan,
        "gauc_users": g_users,
    }
    if users is None:  # no user column: no GAUC keys at all
        del out["gauc"], out["gauc_users"]
    if buckets is not None and buckets.numel():
        item_bucket = buckets[items.clamp(0, buckets.numel() - 1)]
        tail = item_bucket < tail_buckets
        out["tail_auc"] = auc(logits[tail], labels[tail])
        out["tail_rows"] = int(tail.sum())
        out["bucket_auc"] = [
            auc(logits[item_bucket == b], labels[item_bucket == b]) for b in range(int(buckets.max()) + 1)
        ]
        out["bucket_rows"] = [int((item_bucket == b).sum()) for b in range(int(buckets.max()) + 1)]
    return out
