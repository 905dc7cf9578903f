"""Is arm B better than arm A on the same test rows? Paired significance tests for the comparison report.

Two tests, numpy only:

- ``paired_bootstrap``: the difference of every registered metric (``store.metrics.METRICS``: AUC,
  GAUC, logloss, ...) between each arm and a baseline, with a percentile interval, from resamples of
  the test split. Users are resampled as clusters (a user's rows are not independent: their clicks
  share the user), rows when the data has no user column.
  Every resample is applied to every arm and every seed, so the interval is the one of the paired
  difference. A metric of an arm with several seeds is the mean over its seeds.
- ``delong``: DeLong, DeLong & Clarke-Pearson (1988) for the AUC of two score vectors on the same
  rows: the variance of the AUC difference from the structural components (placements), computed
  with midranks as in Sun & Xu (2014). Rows count as independent.

A resample draws U clusters with replacement; cluster u is drawn c_u times and weighs its rows by c_u.
Every metric is then a function of the counts c (B resamples x U clusters):

- logloss = sum_u c_u L_u / sum_u c_u n_u   (L_u: the user's summed loss, n_u its rows);
- GAUC = sum_u c_u n_u AUC_u / sum_u c_u n_u over users with both classes (a user's own AUC does
  not change when all of its rows are repeated);
- AUC = sum_{i pos, j neg} c_i c_j H(s_i - s_j) / (P N), H = 1 / 0.5 / 0 for > / = / <: with the
  negatives sorted once per score vector, the weight of the negatives below each positive is a
  cumulative sum of the counts, O(rows) per resample;
- a metric of kind "rows" is computed on the resampled rows themselves.

Shapes: N test rows, U clusters, S seeds of an arm, B resamples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from store.metrics import METRICS, Metric, Rows, midranks

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no significant difference"
"""The verdicts: the arm against the baseline."""


# -- DeLong ---------------------------------------------------------------------------------------
@dataclass
class DeLong:
    """DeLong's test of AUC(b) - AUC(a) on the same rows."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    low: float
    high: float
    p: float
    verdict: str


def placements(scores: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: V10 (m,), the share of negatives each positive outranks, and
    V01 (n,), the share of positives that outrank each negative (ties count one half)."""
    m, n = int(pos.sum()), int((~pos).sum())
    tz = midranks(scores)
    v10 = (tz[pos] - midranks(scores[pos])) / n
    v01 = 1.0 - (tz[~pos] - midranks(scores[~pos])) / m
    return v10, v01


def delong(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, level: float = 0.95) -> DeLong:
    """Paired DeLong test of AUC(b) - AUC(a): the two score vectors (N,) rate the same rows.

    Var(AUC_b - AUC_a) = w' (S10 / m + S01 / n) w with w = (-1, 1), S10 / S01 the 2x2 covariances of the
    placements over the m positives / n negatives. The interval is diff +- z * se (normal)."""
    pos = np.asarray(labels) > 0.5
    m, n = int(pos.sum()), int((~pos).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
    v10a, v01a = placements(np.asarray(scores_a, dtype=np.float64), pos)
    v10b, v01b = placements(np.asarray(scores_b, dtype=np.float64), pos)
    a, b = float(v10a.mean()), float(v10b.mean())
    var = float(np.var(v10b - v10a, ddof=1) / m + np.var(v01b - v01a, ddof=1) / n)
    se = math.sqrt(max(var, 0.0))
    diff = b - a
    z = normal_quantile(0.5 + level / 2)
    if se > 0:
        p = math.erfc(abs(diff) / se / math.sqrt(2))
    else:
        p = 1.0 if diff == 0 else 0.0
    low, high = diff - z * se, diff + z * se
    return DeLong(a, b, diff, se, low, high, p, verdict(low, high, higher_is_better=True))


def normal_quantile(q: float) -> float:
    """The standard normal's quantile (bisection on erfc; 1.959964 at 0.975)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def verdict(low: float, high: float, higher_is_better: bool) -> str:
    """better / worse when the interval of (arm - baseline) excludes 0, else no significant difference."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return NO_DIFFERENCE
    if low > 0:
        return BETTER if higher_is_better else WORSE
    if high < 0:
        return WORSE if higher_is_better else BETTER
    return NO_DIFFERENCE


# -- the paired cluster bootstrap -----------------------------------------------------------------
COUNT_BLOCK = 1 << 15
"""Clusters per block when drawing a resample's counts (a block's counts stay in cache)."""


def cluster_counts(rng: np.random.Generator, num_clusters: int) -> np.ndarray:
    """How often each of U clusters is drawn in U draws with replacement (U,), uint8 when every count fits.

    Exact in blocks of COUNT_BLOCK clusters: a multinomial says how many draws fall into each block,
    then the draws inside each block are counted (one bincount over all U clusters would scatter into
    a table too large for the cache)."""
    if num_clusters <= COUNT_BLOCK:
        counts = np.bincount(rng.integers(0, num_clusters, num_clusters), minlength=num_clusters)
    else:
        starts = np.arange(0, num_clusters, COUNT_BLOCK)
        sizes = np.minimum(starts + COUNT_BLOCK, num_clusters) - starts
        per_block = rng.multinomial(num_clusters, sizes / num_clusters)
        counts = np.concatenate(
            [np.bincount(rng.integers(0, n, k), minlength=n) for n, k in zip(sizes, per_block)]
        )
    return counts.astype(np.uint8) if counts.max() < 256 else counts


class ClusterAuc:
    """The AUC of one score vector when cluster u weighs c_u: ``numerator(c)`` for counts c (U,).

    Set up once (the negatives sorted, each positive's position among them); per resample one gather
    and one cumulative sum over the negatives and two gathers over the positives."""

    def __init__(self, scores: np.ndarray, pos: np.ndarray, clusters: np.ndarray) -> None:
        neg_scores = scores[~pos]
        order = np.argsort(neg_scores, kind="stable")
        sorted_neg = neg_scores[order]
        self.neg_clusters = clusters[~pos][order]
        pos_scores = scores[pos]
        # negatives strictly below a positive: [0, lo); tied with it: [lo, hi)
        self.lo = np.searchsorted(sorted_neg, pos_scores, "left")
        self.hi = np.searchsorted(sorted_neg, pos_scores, "right")
        # 2 x the negatives' weight never exceeds 2 x U x (most negatives of one cluster): int32 when
        # that fits (a cumulative sum into int32 is about twice as fast as into int64 or float64)
        num_clusters = int(clusters.max()) + 1 if clusters.size else 0
        most = int(np.bincount(self.neg_clusters).max()) if self.neg_clusters.size else 0
        small = 2 * num_clusters * most < 2**31
        self.cum = np.zeros(sorted_neg.size + 1, dtype=np.int32 if small else np.int64)

    def below(self, counts: np.ndarray) -> np.ndarray:
        """Per positive row (P,): 2 x (weight of the negatives below it + half the weight tied with it).
        The AUC is (counts at the positives) . below / (2 x positive weight x negative weight)."""
        np.cumsum(counts[self.neg_clusters], out=self.cum[1:])
        return self.cum[self.lo] + self.cum[self.hi]


@dataclass
class Difference:
    """One metric of an arm against the baseline, over the bootstrap."""

    metric: str
    baseline: float
    """The baseline's metric on the test split (mean over its seeds)."""
    arm: float
    diff: float
    """arm - baseline."""
    low: float
    high: float
    """The percentile interval of the difference over the resamples."""
    p: float
    """Two-sided bootstrap p-value: 2 x the share of resamples on the far side of 0 (capped at 1)."""
    verdict: str
    resamples: int
    """Resamples in which the metric was defined for every arm (a resample may lack a class). When it
    was not defined in all of them (a class with a handful of rows), the verdict is no significant
    difference."""

    def as_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(
    labels: np.ndarray,
    logits: Mapping[str, Sequence[np.ndarray]],
    baseline: str,
    users: np.ndarray | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    tail: np.ndarray | None = None,
    item_slice: np.ndarray | None = None,
) -> dict[str, list[Difference]]:
    """Each arm of `logits` against `baseline` -> {arm: [Difference per metric]}, for every metric of
    the registry (``store.metrics.METRICS``) these rows can compute, in its order.

    labels: (N,) 0/1; logits: {arm: [(N,) per seed]}, every vector rating the same rows in the same
    order; users: (N,) user per row, the clusters that are resampled (None: rows are resampled and
    there is no GAUC); tail: (N,) the tail-item mask (None: no tail AUC); item_slice: (N,) the
    frequency slice of each row's item (``store.metrics.item_slices``; None: no slice AUCs). A metric
    of an arm is the mean over its seeds; every resample is shared by all arms and seeds.
    """
    if baseline not in logits:
        raise ValueError(f"baseline {baseline!r} is not one of the arms {sorted(logits)}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    labels = np.asarray(labels, dtype=np.float64)
    if users is None:
        clusters = np.arange(labels.size)
    else:
        clusters = np.unique(np.asarray(users), return_inverse=True)[1].ravel()
    num_clusters = int(clusters.max()) + 1 if labels.size else 0
    arms = list(logits)
    runs = [
        (arm, Rows.of(v, labels, None if users is None else clusters, tail, item_slice))
        for arm in arms
        for v in logits[arm]
    ]
    metrics = [m for m in METRICS.values() if runs[0][1].has(m.needs)]
    # arm_of_run (A, R): each arm's mean over its runs (seeds)
    arm_of_run = np.array([[float(a == arm) for a, _ in runs] for arm in arms])
    arm_of_run /= arm_of_run.sum(1, keepdims=True)
    run_metrics = _resampled_metrics(metrics, [r for _, r in runs], clusters, num_clusters)

    point = {k: arm_of_run @ v for k, v in run_metrics(np.ones(num_clusters, dtype=np.uint8)).items()}
    rng = np.random.default_rng(seed)
    draws = {m.name: np.empty((resamples, len(arms))) for m in metrics}  # (B, A)
    for b in range(resamples):
        for k, values in run_metrics(cluster_counts(rng, num_clusters)).items():
            draws[k][b] = arm_of_run @ values

    alpha = (1 - level) / 2
    out: dict[str, list[Difference]] = {}
    base = arms.index(baseline)
    for i, arm in enumerate(arms):
        if arm == baseline:
            continue
        out[arm] = []
        for m in metrics:
            k = m.name
            d = draws[k][:, i] - draws[k][:, base]
            d = d[np.isfinite(d)]
            diff = float(point[k][i] - point[k][base])
            if d.size:
                low, high = (float(q) for q in np.quantile(d, [alpha, 1 - alpha]))
                p = min(1.0, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
            else:
                low = high = p = math.nan
            # a resample without a positive or a negative row: too few of a class for the bootstrap
            said = verdict(low, high, m.higher_is_better) if d.size == resamples else NO_DIFFERENCE
            out[arm].append(
                Difference(
                    k, float(point[k][base]), float(point[k][i]), diff, low, high, p, said, int(d.size)
                )
            )
    return out


def _resampled_metrics(
    metrics: Sequence[Metric], runs: Sequence[Rows], clusters: np.ndarray, num_clusters: int
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """``counts (U,) -> {metric: value per run (R,)}``: every metric of every run when cluster u
    weighs counts[u], set up once for all resamples (see the module docstring)."""
    R = len(runs)
    # kind "ratio": the per-cluster numerators and denominators of every (metric, run), one matrix W
    # (2 x metrics x R, U) that each resample weighs by its counts
    ratios = [m for m in metrics if m.kind == "ratio"]
    parts = [m.per_cluster(r, clusters, num_clusters) for m in ratios for r in runs]  # type: ignore[misc]
    weights = np.stack([p[0] for p in parts] + [p[1] for p in parts]) if parts else None
    half = len(parts)
    # kind "auc": per metric, its rows' clusters and each run's ClusterAuc
    aucs = {}
    for m in (m for m in metrics if m.kind == "auc"):
        mask = m.subset(runs[0]) if m.subset is not None else np.ones(clusters.size, dtype=bool)
        pos = (runs[0].labels > 0.5) & mask
        neg = (runs[0].labels <= 0.5) & mask
        sub = clusters[mask]
        sub_pos = pos[mask]
        aucs[m.name] = (
            clusters[pos],
            clusters[neg],
            [ClusterAuc(r.logits[mask], sub_pos, sub) for r in runs],
        )
    by_rows = [m for m in metrics if m.kind == "rows"]

    def run_metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if weights is not None:
            # einsum, not BLAS: OpenBLAS threads spin badly on a busy machine, these products are small
            sums = np.einsum("ku,u->k", weights, counts.astype(np.float64))
            with np.errstate(invalid="ignore", divide="ignore"):
                values = sums[:half] / sums[half:]
            for j, m in enumerate(ratios):
                out[m.name] = values[j * R : (j + 1) * R]
        for name, (pos_clusters, neg_clusters, per_run) in aucs.items():
            total_pos = float(counts[pos_clusters].sum(dtype=np.int64))
            total_neg = float(counts[neg_clusters].sum(dtype=np.int64))
            if total_pos == 0 or total_neg == 0:
                out[name] = np.full(R, np.nan)
                continue
            below = np.stack([a.below(counts) for a in per_run]).astype(np.float64)  # (R, P)
            numerator = np.einsum("rp,p->r", below, counts[pos_clusters].astype(np.float64))
            out[name] = numerator / (2.0 * total_pos * total_neg)
        if by_rows:
            idx = np.repeat(np.arange(clusters.size), counts[clusters])
            for m in by_rows:
                out[m.name] = np.array([m.fn(_take(r, idx)) for r in runs])
        return {m.name: out[m.name] for m in metrics}

    return run_metrics


def _take(rows: Rows, idx: np.ndarray) -> Rows:
    pick = lambda x: None if x is None else x[idx]  # noqa: E731
    return Rows(rows.logits[idx], rows.labels[idx], pick(rows.users), pick(rows.tail), pick(rows.item_slice))
