"""The evaluation metrics: one implementation of each, one registry.

``METRICS`` maps a name to a ``Metric``: how it is computed from a split's rows, whether higher is
better, and what the rows must carry (a user column for GAUC, the tail-item mask for tail AUC, the
item's frequency slice for the slice AUCs). Every
consumer reads it: the trainer's evaluation (``metrics.json``, ``--eval.metric``), the run summary's
headline scores, the comparison report's tables and its paired bootstrap (``launch.stats``). A metric
added here appears in all of them.

Numpy only (float64), so the tokenizer's proxy, the trainer and the report compute the same numbers:

- AUC is the Mann-Whitney statistic with tied scores sharing their mean rank (NaN for one class);
- GAUC is the impression-weighted mean of per-user AUC over the users with both classes;
- logloss is the mean binary cross-entropy of sigmoid(logit), computed from the logit;
- auc_head / auc_torso / auc_tail / auc_unseen are the AUC over the rows whose item is in that train
  frequency slice (``item_slices``: one rule for the trainer and the report; NaN for a slice of one class).

For the bootstrap a metric says how it is recomputed when cluster u (a user, or a row) weighs c_u:
``kind="auc"`` is an AUC over the rows of ``subset`` (``launch.stats.ClusterAuc``); ``kind="ratio"``
is sum_u c_u num_u / sum_u c_u den_u with ``per_cluster`` giving (num, den); ``kind="rows"`` calls
``fn`` on the resampled rows themselves (exact for any metric, slower).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Rows:
    """A split's predictions, every array (N,) in the same row order."""

    logits: np.ndarray
    labels: np.ndarray
    """0 / 1."""
    users: np.ndarray | None = None
    """The user of each row (None: the data has no user column, so no GAUC)."""
    tail: np.ndarray | None = None
    """True where the row's item is in the least popular buckets of the train split (None: no item
    column, or the popularity is not known, as in the report)."""
    item_slice: np.ndarray | None = None
    """The train frequency slice of the row's item (``SLICES``: 0 unseen ... 3 head; ``item_slices``);
    None without an item column."""

    def has(self, needs: tuple[str, ...]) -> bool:
        return all(getattr(self, n) is not None for n in needs)

    @staticmethod
    def of(logits, labels, users=None, tail=None, item_slice=None) -> Rows:  # noqa: ANN001 (numpy or torch)
        """Rows from numpy arrays or CPU tensors, cast to float64 / int64 / bool / int8."""
        as_np = lambda x, t: None if x is None else np.asarray(x, dtype=t)  # noqa: E731
        return Rows(
            as_np(logits, np.float64), as_np(labels, np.float64), as_np(users, np.int64), as_np(tail, bool),
            as_np(item_slice, np.int8),
        )  # fmt: skip


@dataclass(frozen=True)
class Metric:
    """One evaluation metric (see the module docstring)."""

    name: str
    title: str
    """How tables and verdicts name it ("AUC")."""
    fn: Callable[[Rows], float]
    higher_is_better: bool
    needs: tuple[str, ...] = ()
    """The ``Rows`` fields it reads beyond logits and labels ("users", "tail", "item_slice")."""
    kind: Literal["auc", "ratio", "rows"] = "rows"
    subset: Callable[[Rows], np.ndarray] | None = None
    """kind "auc": the rows it is the AUC of (None: all)."""
    per_cluster: Callable[[Rows, np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None = field(
        default=None, repr=False
    )
    """kind "ratio": (rows, cluster per row (N,), clusters U) -> (numerator (U,), denominator (U,))."""

    def applies(self, rows: Rows) -> bool:
        return rows.has(self.needs)

    def better(self, value: float, than: float) -> bool:
        return value > than if self.higher_is_better else value < than


# -- the computations --------------------------------------------------------------------------
def midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` (n,), tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    n = xs.size
    new = np.ones(n, dtype=bool)
    new[1:] = xs[1:] != xs[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (ties count one half); NaN when only one class is present."""
    pos = np.asarray(labels) > 0.5
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        return math.nan
    r = midranks(np.asarray(scores, dtype=np.float64))
    return float((r[pos].sum() - m * (m + 1) / 2.0) / (m * n))


def row_logloss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of sigmoid(logits) per row (N,), stable for large |logit|."""
    z = np.asarray(logits, dtype=np.float64)
    return np.maximum(z, 0.0) - z * labels + np.log1p(np.exp(-np.abs(z)))


def logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(row_logloss(logits, labels).mean()) if len(labels) else math.nan


def user_aucs(users: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per user u (users given as 0..U-1): (AUC_u, rows n_u), AUC_u NaN for a user with one class.

    One sort by (user, score); tied scores inside a user share their mean rank (the Mann-Whitney
    statistic per user)."""
    num_users = int(users.max()) + 1 if users.size else 0
    order = np.argsort(scores, kind="stable")
    order = order[np.argsort(users[order], kind="stable")]  # by user, by score inside a user
    u, s, y = users[order], scores[order], labels[order].astype(np.float64)
    n = u.size
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = u[1:] != u[:-1]
    new_tie = new_user.copy()
    new_tie[1:] |= s[1:] != s[:-1]
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    pos_in_user = np.arange(n) - user_start + 1.0  # ranks 1..n_u inside the user
    tie_id = np.cumsum(new_tie) - 1
    rank = (np.bincount(tie_id, pos_in_user) / np.bincount(tie_id))[tie_id]
    count = np.bincount(u, minlength=num_users).astype(np.float64)
    pos = np.bincount(u, y, minlength=num_users)
    rank_pos = np.bincount(u, rank * y, minlength=num_users)
    neg = count - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (rank_pos - pos * (pos + 1) / 2.0) / (pos * neg)
    a[(pos == 0) | (neg == 0)] = np.nan
    return a, count


def users_with_both_classes(users: np.ndarray, labels: np.ndarray) -> int:
    """How many users have a positive and a negative row: the users GAUC averages over."""
    if np.asarray(users).size == 0:
        return 0
    _, inverse = np.unique(users, return_inverse=True)
    count = np.bincount(inverse.ravel())
    pos = np.bincount(inverse.ravel(), np.asarray(labels, dtype=np.float64) > 0.5)
    return int(((pos > 0) & (pos < count)).sum())


def gauc_and_users(users: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(GAUC, users with both classes): the impression-weighted mean of per-user AUC over those users
    (NaN, 0 when there is none)."""
    if np.asarray(users).size == 0:
        return math.nan, 0
    _, inverse = np.unique(users, return_inverse=True)
    a, n = user_aucs(inverse.ravel(), np.asarray(scores, dtype=np.float64), np.asarray(labels))
    ok = np.isfinite(a)
    return (float((a[ok] * n[ok]).sum() / n[ok].sum()), int(ok.sum())) if ok.any() else (math.nan, 0)


def gauc(users: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> float:
    """Impression-weighted mean of per-user AUC over users with both classes (NaN if none)."""
    return gauc_and_users(users, scores, labels)[0]


# -- train frequency slices ------------------------------------------------------------------------
SLICES = ("unseen", "tail", "torso", "head")
"""The train frequency slices of items, by code (``Rows.item_slice``, the predictions' ``item_slice``)."""


def item_slices(counts: np.ndarray) -> np.ndarray:
    """The train frequency slice of every item (num_items,) int8, codes of ``SLICES``, from its train rows
    ``counts`` (num_items,).

    Items with no train row are ``unseen``. The others are sorted by train rows, most first (ties by item
    ID, so the rule is exact): an item is ``head`` while the rows of the items before it are under a third
    of the train rows, ``torso`` while under two thirds, ``tail`` after. So head is the fewest most frequent
    items covering (just over) the first third of the train rows, torso the next third, tail the rest."""
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros(counts.size, dtype=np.int8)  # unseen
    order = np.argsort(-counts, kind="stable")
    before = np.cumsum(counts[order]) - counts[order]  # train rows of the more frequent items
    total = float(counts.sum())
    ranked = np.where(before < total / 3, 3, np.where(before < 2 * total / 3, 2, 1))
    out[order] = np.where(counts[order] > 0, ranked, 0)
    return out


def _slice_auc(code: int) -> Metric:
    name = SLICES[code]
    return Metric(
        f"auc_{name}",
        "AUC (unseen items)" if name == "unseen" else f"AUC ({name} third)",
        lambda r: auc(r.logits[r.item_slice == code], r.labels[r.item_slice == code]),
        True,
        needs=("item_slice",),
        kind="auc",
        subset=lambda r: r.item_slice == code,
    )


# -- the registry -------------------------------------------------------------------------------
def _logloss_per_cluster(rows: Rows, clusters: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
    loss = np.bincount(clusters, row_logloss(rows.logits, rows.labels), minlength=num)
    return loss, np.bincount(clusters, minlength=num).astype(np.float64)


def _gauc_per_cluster(rows: Rows, clusters: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
    """Clusters are the users: a user's own AUC does not change when all of its rows are repeated, so
    GAUC under weights c is sum c_u n_u AUC_u / sum c_u n_u over the users with both classes."""
    a, n = user_aucs(clusters, rows.logits, rows.labels)
    ok = np.isfinite(a)
    return np.where(ok, a * n, 0.0), np.where(ok, n, 0.0)


METRICS: dict[str, Metric] = {}
"""name -> Metric, in the order tables show them."""


def register(metric: Metric) -> Metric:
    """Add ``metric`` to ``METRICS`` (ValueError for a name already taken)."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


register(Metric("auc", "AUC", lambda r: auc(r.logits, r.labels), True, kind="auc"))
register(
    Metric(
        "gauc",
        "GAUC",
        lambda r: gauc(r.users, r.logits, r.labels),
        True,
        needs=("users",),
        kind="ratio",
        per_cluster=_gauc_per_cluster,
    )
)
register(
    Metric(
        "logloss",
        "logloss",
        lambda r: logloss(r.logits, r.labels),
        False,
        kind="ratio",
        per_cluster=_logloss_per_cluster,
    )
)
register(
    Metric(
        "tail_auc",
        "tail AUC",
        lambda r: auc(r.logits[r.tail], r.labels[r.tail]),
        True,
        needs=("tail",),
        kind="auc",
        subset=lambda r: r.tail,
    )
)


for _code in (3, 2, 1, 0):  # auc_head, auc_torso, auc_tail, auc_unseen
    register(_slice_auc(_code))


def get(name: str) -> Metric:
    """The registered metric ``name``; ValueError listing the choices otherwise."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return METRICS[name]


def compute(rows: Rows) -> dict[str, float]:
    """Every registered metric that ``rows`` can compute, by name."""
    return {name: m.fn(rows) for name, m in METRICS.items() if m.applies(rows)}
