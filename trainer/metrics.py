"""A whole split's metrics, and the train split's statistics they need (click rate, item popularity).

``evaluate_predictions`` sees every row of the split: `trainer.evaluate` gathers the ranks'
predictions first, so the metrics are those of the whole split, not an average of per-rank metrics.
The scores are those of the registry ``store.metrics.METRICS`` (AUC, GAUC, logloss, tail-item AUC,
the AUC per train frequency slice, and any metric registered there). A dataset without a user column
has no GAUC (``users=None``), one without an item column no tail-item AUC (``buckets=None`` or empty)
and no slice AUCs (``item_counts=None``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_pipeline import fs
from data_pipeline.spec import DataError, DatasetSpec, list_shards, split_dir
from store.metrics import SLICES, Rows, auc, compute, item_slices, users_with_both_classes


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


def item_buckets(items: torch.Tensor, buckets: torch.Tensor | None) -> np.ndarray | None:
    """(N,) the popularity bucket of each row's item (`popularity_buckets`; IDs outside the catalog are
    clamped into it); None without buckets (no item column)."""
    if buckets is None or not buckets.numel():
        return None
    return buckets.cpu().numpy()[np.clip(items.long().cpu().numpy(), 0, buckets.numel() - 1)]


def tail_rows(items: torch.Tensor, buckets: torch.Tensor | None, tail_buckets: int) -> np.ndarray | None:
    """(N,) bool: the rows whose item lies in popularity buckets [0, tail_buckets) (None without buckets):
    the rows tail_auc is computed on."""
    item_bucket = item_buckets(items, buckets)
    return None if item_bucket is None else item_bucket < tail_buckets


@dataclass
class ItemFrequency:
    """The train frequency of each row's item, every array (N,)."""

    train_rows: np.ndarray
    """int64: the train rows of the row's item (0 for an ID outside the catalog: the train split's
    counts skip those)."""
    slices: np.ndarray
    """int8: the frequency slice of the row's item (``store.metrics.SLICES``, ``item_slices``)."""


def item_frequency(items: torch.Tensor, counts: torch.Tensor | None) -> ItemFrequency | None:
    """Each row's item's train rows and frequency slice, from ``counts`` (num_items,) train rows per item;
    None without counts (no item column)."""
    if counts is None:
        return None
    counts_np = counts.cpu().numpy().astype(np.int64)
    ids = items.long().cpu().numpy()
    inside = (ids >= 0) & (ids < counts_np.size)
    at = np.where(inside, ids, 0)
    train_rows = np.where(inside, counts_np[at] if counts_np.size else 0, 0)
    slices = np.where(inside, item_slices(counts_np)[at] if counts_np.size else 0, 0).astype(np.int8)
    return ItemFrequency(train_rows.astype(np.int64), slices)


def evaluate_predictions(
    logits: torch.Tensor,
    labels: torch.Tensor,
    users: torch.Tensor | None,
    items: torch.Tensor,
    buckets: torch.Tensor | None = None,
    tail_buckets: int = 0,
    item_counts: torch.Tensor | None = None,
) -> dict:
    """All metrics of one split from all its rows, each tensor (N,).

    users: None when the dataset has no user column: the result then has no gauc / gauc_users.
    buckets: popularity bucket per item (`popularity_buckets`); tail_auc is the AUC over rows whose
    item lies in buckets [0, tail_buckets). None or empty (no item column): no tail / bucket metrics.
    item_counts: train rows per item (num_items,): the slice AUCs (auc_head, ..., `item_frequency`) and
    ``slice_rows`` {slice: rows}; None (no item column): none.
    """
    logits, labels = logits.float().cpu().numpy(), labels.float().cpu().numpy()
    item_bucket = item_buckets(items, buckets)
    tail = None if item_bucket is None else item_bucket < tail_buckets
    users_np = users.long().cpu().numpy() if users is not None else None
    frequency = item_frequency(items, item_counts)
    item_slice = frequency.slices if frequency is not None else None
    out: dict = compute(Rows.of(logits, labels, users_np, tail, item_slice))
    out["rows"] = int(labels.size)
    out["positive_rate"] = float(labels.mean()) if labels.size else math.nan
    if users_np is not None:
        out["gauc_users"] = users_with_both_classes(users_np, labels)
    if item_bucket is not None:
        out["tail_rows"] = int(tail.sum())
        num_buckets = int(buckets.max()) + 1
        out["bucket_auc"] = [
            auc(logits[item_bucket == b], labels[item_bucket == b]) for b in range(num_buckets)
        ]
        out["bucket_rows"] = [int((item_bucket == b).sum()) for b in range(num_buckets)]
    if item_slice is not None:
        out["slice_rows"] = {name: int((item_slice == code).sum()) for code, name in enumerate(SLICES)}
    return out
