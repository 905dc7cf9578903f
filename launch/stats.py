"""Is arm B better than arm A on the same test rows? Paired significance tests for the comparison report.

Two tests, numpy only:

- ``paired_bootstrap``: the difference of AUC, GAUC and logloss between each arm and a baseline, with a
  percentile interval, from resamples of the test split. Users are resampled as clusters (a user's
  rows are not independent: their clicks share the user), rows when the data has no user column.
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
  cumulative sum of the counts, O(rows) per resample.

Shapes: N test rows, U clusters, S seeds of an arm, B resamples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no significant difference"
"""The verdicts: the arm against the baseline."""
HIGHER_IS_BETTER = {"auc": True, "gauc": True, "logloss": False}
"""The direction of each metric the bootstrap reports."""


# -- point metrics --------------------------------------------------------------------------------
def midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `x` (n,), tied values sharing the mean of their ranks."""
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
    """Per user u (users as given, 0..U-1): (AUC_u, rows n_u), AUC_u NaN for a user with one class.

    One sort by (user, score); tied scores inside a user share their mean rank (the Mann-Whitney
    statistic per user, as trainer.metrics.gauc)."""
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


def gauc(users: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> float:
    """Impression-weighted mean of per-user AUC over users with both classes (NaN if none)."""
    _, inverse = np.unique(users, return_inverse=True)
    a, n = user_aucs(inverse.ravel(), scores, labels)
    ok = np.isfinite(a)
    return float((a[ok] * n[ok]).sum() / n[ok].sum()) if ok.any() else math.nan


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
) -> dict[str, list[Difference]]:
    """Each arm of `logits` against `baseline` -> {arm: [Difference for auc, (gauc,) logloss]}.

    labels: (N,) 0/1; logits: {arm: [(N,) per seed]}, every vector rating the same rows in the same
    order; users: (N,) user per row, the clusters that are resampled (None: rows are resampled and
    there is no GAUC). A metric of an arm is the mean over its seeds; every resample is shared by all
    arms and seeds.
    """
    if baseline not in logits:
        raise ValueError(f"baseline {baseline!r} is not one of the arms {sorted(logits)}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    labels = np.asarray(labels, dtype=np.float64)
    pos = labels > 0.5
    if users is None:
        clusters = np.arange(labels.size)
    else:
        clusters = np.unique(np.asarray(users), return_inverse=True)[1].ravel()
    num_clusters = int(clusters.max()) + 1 if labels.size else 0
    arms = list(logits)
    runs = [(arm, np.asarray(v, dtype=np.float64)) for arm in arms for v in logits[arm]]
    metrics = ["auc", "logloss"] if users is None else ["auc", "gauc", "logloss"]
    # arm_of_run (A, R): each arm's mean over its runs (seeds)
    arm_of_run = np.array([[float(a == arm) for a, _ in runs] for arm in arms])
    arm_of_run /= arm_of_run.sum(1, keepdims=True)

    # Sums per cluster that every resample weighs by its counts: the rows W (K, U) are rows,
    # positives, negatives, then per run its summed loss, and (users) n_u AUC_u and n_u of the users
    # with both classes.
    per_cluster = [np.bincount(clusters, minlength=num_clusters).astype(np.float64)]
    per_cluster.append(np.bincount(clusters, pos.astype(np.float64), minlength=num_clusters))
    per_cluster.append(per_cluster[0] - per_cluster[1])
    per_cluster += [np.bincount(clusters, row_logloss(v, labels), minlength=num_clusters) for _, v in runs]
    if users is not None:
        terms = []
        for _, v in runs:
            a, n = user_aucs(clusters, v, labels)
            ok = np.isfinite(a)
            terms.append((np.where(ok, a * n, 0.0), np.where(ok, n, 0.0)))
        per_cluster += [t[0] for t in terms] + [t[1] for t in terms]
    weights = np.stack(per_cluster)
    R = len(runs)
    aucs = [ClusterAuc(v, pos, clusters) for _, v in runs]
    pos_clusters = clusters[pos]

    def run_metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric of every run (R,) under cluster counts (U,)."""
        # einsum, not BLAS: OpenBLAS threads spin badly on a busy machine, these products are small
        sums = np.einsum("ku,u->k", weights, counts.astype(np.float64))
        rows, total_pos, total_neg = sums[0], sums[1], sums[2]
        out = {"logloss": sums[3 : 3 + R] / rows}
        if users is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                out["gauc"] = sums[3 + R : 3 + 2 * R] / sums[3 + 2 * R : 3 + 3 * R]
        if total_pos == 0 or total_neg == 0:
            out["auc"] = np.full(R, np.nan)
        else:
            below = np.stack([a.below(counts) for a in aucs]).astype(np.float64)  # (R, P)
            numerator = np.einsum("rp,p->r", below, counts[pos_clusters].astype(np.float64))
            out["auc"] = numerator / (2.0 * total_pos * total_neg)
        return out

    point = {k: arm_of_run @ v for k, v in run_metrics(np.ones(num_clusters, dtype=np.uint8)).items()}
    rng = np.random.default_rng(seed)
    draws = {k: np.empty((resamples, len(arms))) for k in metrics}  # (B, A)
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
        for k in metrics:
            d = draws[k][:, i] - draws[k][:, base]
            d = d[np.isfinite(d)]
            diff = float(point[k][i] - point[k][base])
            if d.size:
                low, high = (float(q) for q in np.quantile(d, [alpha, 1 - alpha]))
                p = min(1.0, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
            else:
                low = high = p = math.nan
            # a resample without a positive or a negative row: too few of a class for the bootstrap
            said = verdict(low, high, HIGHER_IS_BETTER[k]) if d.size == resamples else NO_DIFFERENCE
            out[arm].append(
                Difference(
                    k, float(point[k][base]), float(point[k][i]), diff, low, high, p, said, int(d.size)
                )
            )
    return out
