"""launch/stats.py: DeLong against a direct computation, and the paired cluster bootstrap on cases with a
known answer, for every metric of the registry (store.metrics) and for a metric added to it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from launch import stats
from launch.stats import BETTER, NO_DIFFERENCE, WORSE, ClusterAuc, cluster_counts, delong, paired_bootstrap
from store import metrics as sm


def tied_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, scores, labels) with many tied scores and users of a few rows each."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.float64)
    scores = np.round(rng.normal(size=n) + labels, 1)  # rounded: ties inside and across classes
    users = rng.integers(0, n // 6, n) * 7 + 3  # arbitrary IDs, not 0..U-1
    return users, scores, labels


def direct_delong_variance(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(AUC_a, AUC_b, Var(AUC_b - AUC_a)) from DeLong et al. (1988) written out: the kernel over every
    (positive, negative) pair, the placements V10 / V01 as its row / column means, their covariances."""
    pos, neg = labels > 0.5, labels < 0.5
    out = []
    for s in (a, b):
        x, y = s[pos][:, None], s[neg][None, :]
        psi = (x > y) + 0.5 * (x == y)  # (m, n)
        out.append((psi.mean(), psi.mean(1), psi.mean(0)))
    m, n = pos.sum(), neg.sum()
    s10 = np.cov(np.stack([out[0][1], out[1][1]]))
    s01 = np.cov(np.stack([out[0][2], out[1][2]]))
    contrast = np.array([-1.0, 1.0])
    var = contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n
    return out[0][0], out[1][0], float(var)


def test_delong_matches_the_direct_computation_of_the_variance():
    rng = np.random.default_rng(3)
    labels = (rng.random(300) < 0.4).astype(np.float64)
    a = np.round(rng.normal(size=300) + 0.8 * labels, 1)
    b = np.round(0.7 * a + rng.normal(size=300) * 0.7 + 0.5 * labels, 1)  # correlated with a, ties
    auc_a, auc_b, var = direct_delong_variance(a, b, labels)
    d = delong(a, b, labels)
    assert (d.auc_a, d.auc_b) == (pytest.approx(auc_a, abs=1e-12), pytest.approx(auc_b, abs=1e-12))
    assert d.se == pytest.approx(math.sqrt(var), rel=1e-10)
    assert d.diff == pytest.approx(auc_b - auc_a, abs=1e-12)
    z = 1.959963984540054
    assert (d.low, d.high) == (pytest.approx(d.diff - z * d.se), pytest.approx(d.diff + z * d.se))
    assert d.p == pytest.approx(math.erfc(abs(d.diff) / d.se / math.sqrt(2)), rel=1e-10)
    assert stats.normal_quantile(0.975) == pytest.approx(z, abs=1e-9)


def test_delong_verdicts():
    rng = np.random.default_rng(4)
    labels = (rng.random(2000) < 0.5).astype(np.float64)
    noise = rng.normal(size=2000)
    good = labels + 0.5 * rng.normal(size=2000)
    assert delong(noise, good, labels).verdict == BETTER
    assert delong(good, noise, labels).verdict == WORSE
    same = delong(good, good.copy(), labels)
    assert (same.diff, same.se, same.p, same.verdict) == (0.0, 0.0, 1.0, NO_DIFFERENCE)
    with pytest.raises(ValueError, match="2 positives"):
        delong(good[:3], noise[:3], np.array([1.0, 0.0, 0.0]))


def test_cluster_counts_draw_every_cluster_with_replacement():
    rng = np.random.default_rng(5)
    for num in (7, 100_000):  # one bincount; blocks of COUNT_BLOCK clusters
        c = np.stack([cluster_counts(rng, num) for _ in range(20)])
        assert c.dtype == np.uint8 and (c.sum(1) == num).all()
        assert c.mean() == pytest.approx(1.0)
    big = np.stack([cluster_counts(rng, 100_000) for _ in range(20)]).astype(np.float64)
    assert big.var() == pytest.approx(1.0, abs=0.02)  # multinomial(U, 1/U): variance 1 - 1/U
    # every block gets its share: no block systematically empty or full
    blocks = big.reshape(20, -1)[:, : 3 * stats.COUNT_BLOCK].reshape(20, 3, -1).sum(2)
    assert np.abs(blocks / stats.COUNT_BLOCK - 1).max() < 0.05


def test_cluster_auc_equals_the_auc_of_the_rows_repeated():
    users, scores, labels = tied_data(2000, 6)
    clusters = np.unique(users, return_inverse=True)[1].ravel()
    pos = labels > 0.5
    fast = ClusterAuc(scores, pos, clusters)
    rng = np.random.default_rng(7)
    for _ in range(3):
        counts = cluster_counts(rng, int(clusters.max()) + 1)
        w = counts[clusters].astype(np.int64)
        total_pos, total_neg = float(w[pos].sum()), float(w[~pos].sum())
        got = float(counts[clusters[pos]].astype(np.float64) @ fast.below(counts)) / (
            2 * total_pos * total_neg
        )
        repeated = np.repeat(np.arange(scores.size), w)  # the resample written out, row by row
        assert got == pytest.approx(roc_auc_score(labels[repeated], scores[repeated]), abs=1e-12)


def arms_of(
    labels: np.ndarray, rng: np.random.Generator, strength: float, seeds: int = 1
) -> list[np.ndarray]:
    return [strength * (2 * labels - 1) + rng.normal(size=labels.size) for _ in range(seeds)]


def test_bootstrap_identical_arms_no_significant_difference():
    users, scores, labels = tied_data(1500, 8)
    result = paired_bootstrap(labels, {"id": [scores], "store": [scores.copy()]}, "id", users, resamples=200)
    for d in result["store"]:
        assert (d.diff, d.low, d.high, d.p) == (0.0, 0.0, 0.0, 1.0)
        assert d.verdict == NO_DIFFERENCE and d.resamples == 200
    assert [d.metric for d in result["store"]] == ["auc", "gauc", "logloss"]


def test_bootstrap_obvious_answers():
    rng = np.random.default_rng(9)
    n = 4000
    labels = (rng.random(n) < 0.3).astype(np.float64)
    users = rng.integers(0, 500, n)
    strong, weak = arms_of(labels, rng, 1.5), arms_of(labels, rng, 0.2)
    better = paired_bootstrap(labels, {"id": weak, "store": strong}, "id", users, resamples=300)["store"]
    assert [(d.metric, d.verdict) for d in better] == [("auc", BETTER), ("gauc", BETTER), ("logloss", BETTER)]
    auc = better[0]
    assert auc.baseline == pytest.approx(sm.auc(weak[0], labels)) and auc.low > 0
    assert auc.low < auc.diff < auc.high and auc.p < 0.01
    assert better[2].diff < 0 and better[2].high < 0  # logloss: lower is better
    worse = paired_bootstrap(labels, {"store": weak, "id": strong}, "id", users, resamples=300)["store"]
    assert [d.verdict for d in worse] == [WORSE, WORSE, WORSE]
    # two arms of the same quality: noise only
    a, b = arms_of(labels, rng, 0.5), arms_of(labels, rng, 0.5)
    tie = paired_bootstrap(labels, {"id": a, "store": b}, "id", users, resamples=300)["store"]
    assert [d.verdict for d in tie] == [NO_DIFFERENCE] * 3
    assert all(d.low < 0 < d.high and d.p > 0.05 for d in tie)


def test_bootstrap_averages_seeds_and_resamples_rows_without_users():
    rng = np.random.default_rng(10)
    labels = (rng.random(1000) < 0.5).astype(np.float64)
    ids, stores = arms_of(labels, rng, 0.3, seeds=2), arms_of(labels, rng, 0.6, seeds=3)
    result = paired_bootstrap(labels, {"id": ids, "store": stores}, "id", None, resamples=100)["store"]
    assert [d.metric for d in result] == ["auc", "logloss"]  # no users: no GAUC
    assert result[0].baseline == pytest.approx(np.mean([sm.auc(s, labels) for s in ids]), abs=1e-12)
    assert result[0].arm == pytest.approx(np.mean([sm.auc(s, labels) for s in stores]), abs=1e-12)
    assert result[1].arm == pytest.approx(np.mean([sm.logloss(s, labels) for s in stores]), abs=1e-12)
    with pytest.raises(ValueError, match="baseline"):
        paired_bootstrap(labels, {"a": ids}, "id")


def test_bootstrap_resamples_users_as_clusters():
    """Half the users are served better by one arm, half by the other: rows of a user move together,
    so the interval over users is much wider than over rows, and the two agree with DeLong's
    (row-level) standard error where rows are independent."""
    rng = np.random.default_rng(11)
    num_users, per_user = 100, 40
    users = np.repeat(np.arange(num_users), per_user)
    labels = (rng.random(users.size) < 0.5).astype(np.float64)
    favoured = rng.random(num_users) < 0.5  # per user: which arm sees the signal
    signal = 2 * labels - 1
    a = np.where(favoured[users], 1.0, 0.1) * signal + rng.normal(size=users.size)
    b = np.where(favoured[users], 0.1, 1.0) * signal + rng.normal(size=users.size)
    by_user = paired_bootstrap(labels, {"id": [a], "store": [b]}, "id", users, resamples=400)["store"][0]
    by_row = paired_bootstrap(labels, {"id": [a], "store": [b]}, "id", None, resamples=400)["store"][0]
    assert by_user.diff == by_row.diff
    assert by_user.high - by_user.low > 2 * (by_row.high - by_row.low)
    d = delong(a, b, labels)
    assert (by_row.high - by_row.low) / (d.high - d.low) == pytest.approx(1.0, abs=0.2)


def test_bootstrap_with_a_handful_of_positives_gives_no_verdict():
    """One positive row: many resamples lack it, the AUC is undefined there; no verdict however far apart."""
    rng = np.random.default_rng(12)
    labels = np.zeros(200)
    labels[5] = 1.0
    good, bad = rng.normal(size=200), rng.normal(size=200)
    good[5], bad[5] = 10.0, -10.0
    auc = paired_bootstrap(labels, {"id": [bad], "store": [good]}, "id", None, resamples=100)["store"][0]
    assert auc.diff > 0.9 and auc.low > 0  # the interval alone would say "better"
    assert 0 < auc.resamples < 100 and auc.verdict == NO_DIFFERENCE
