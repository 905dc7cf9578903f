"""Synthetic CTR data from a hidden generative model: a fair test bed for item IDs vs semantic IDs.

``python -m data_pipeline generate --out DIR --rows N [...]`` writes a dataset folder (see
``data_pipeline.spec``) in bounded memory: rows are generated and written in chunks, so a billion rows
is just a bigger N and a longer wait.

The hidden model (all parameters drawn from ``--seed``):

* Items: a two-level topic hierarchy (coarse topic_l1 -> fine topic_l2), Zipf popularity, and a content
  embedding = coarse centroid + fine offset + a little of the item's hidden quality + noise (the
  "pretrained item embedding"). It is written to DIR/items/ with the topics and a popularity bucket.
* Users: a latent taste vector; a few favourite fine topics derived from it; static features (age,
  gender, region, device) correlated with the taste; a Zipf-like activity level; an item sequence
  drawn mostly from the favourite topics.
* Rows: a user (by activity), an impressed item (from the user's favourite topics or by global
  popularity), the recent history (``hist_items``: the window of the user's sequence ending at the
  row's time, variable length), a time (hour, weekday, event-day flag) and dense features. The click is drawn from a logistic model whose item effect
  comes mostly from the item's topics (so it generalises to tail items through semantics) plus an
  item-specific bias large enough for an ID embedding to memorise head items, plus crosses (taste x
  topic, age x coarse topic, hour x device, history x topic). The intercept is calibrated so the
  mean click probability equals ``--ctr``; the true probability is written as ``click_prob``, so the
  Bayes-optimal AUC / logloss on the test split are known.
* Extra high-cardinality columns (``--high-card-columns N --high-card-size V``, default none):
  ``hc_id_0`` .. ``hc_id_{N-1}``, row-level context IDs 0..V-1 (like a site or app ID) with Zipf-like
  popularity (the popular IDs are a random permutation, so the number carries no information). Each
  ID belongs to a hidden cluster; its click effect is a cluster effect + an ID-specific offset + a
  cluster x coarse-topic cross, and it is part of the true logit (so ``click_prob`` stays the exact
  Bayes-optimal probability). They are marked ``high_cardinality`` in the spec, as is ``user_id``.
  Their draws come from a stream of their own, so the other columns of a dataset with extra
  columns equal those of the same dataset without them (only the labels and ``click_prob`` move).

Timestamps increase through the rows; train / valid / test are the first / next / last fractions
(split boundaries are one second apart, so every train time < every valid time < every test time).
Same seed and flags give byte-identical files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import tyro
from tqdm import tqdm

from data_pipeline import fs, outdir
from data_pipeline.spec import (
    ITEMS_DIR,
    SPEC_FILE,
    SPLITS,
    DataError,
    DatasetSpec,
    ItemTable,
    SparseFeature,
    atomic_write_text,
)
from data_pipeline.writer import ShardWriter, arrow_schema

log = logging.getLogger(__name__)

GENERATOR_FILE = "generator.json"
T0 = 1_704_067_200  # 2024-01-01 00:00 UTC, a Monday
DAY = 86_400

# Static user features: name -> cardinality.
USER_FEATURES = {"age": 7, "gender": 3, "region": 32, "device": 4}
CONTEXT_FEATURES = {"hour": 24, "weekday": 7, "holiday": 2}
# Dense features in order; --dense D keeps the first D (beyond these: pure-noise features).
DENSE_FEATURES = (
    "user_activity",
    "user_ctr_prior",
    "item_quality",
    "item_price",
    "item_popularity",
    "item_age",
    "session_depth",
    "hist_len",
)

# Random streams: the model, each item chunk, each row chunk and the calibration pilot draw from
# their own seed sequence, so no part depends on how many draws another made (rows can be made
# chunk by chunk, in any process, reproducibly).
_MODEL, _ITEMS, _ROWS, _CALIB, _HIGH_CARD = range(5)


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines a synthetic dataset (with the seed: byte for byte)."""

    rows: int
    """Total rows over all splits."""
    items: int = 100_000
    """Item catalog size; item IDs are 0..items-1."""
    users: int = 50_000
    """Number of users; user IDs are 0..users-1."""
    seed: int = 0
    """Seeds every parameter of the hidden model and every draw."""
    dense: int = 8
    """Number of dense float features (first ones are informative, extras are noise)."""
    history_len: int = 20
    """Max length of the hist_items list."""
    valid_frac: float = 0.1
    """Fraction of rows (by time, after train) in the valid split."""
    test_frac: float = 0.1
    """Fraction of rows (the last ones in time) in the test split."""
    rows_per_shard: int = 1_000_000
    """Rows per parquet shard."""
    topics_l1: int = 16
    """Number of coarse topics."""
    topics_l2: int = 8
    """Fine topics per coarse topic (fine topic IDs are global: 0..topics_l1*topics_l2-1)."""
    emb_dim: int = 64
    """Length of the item content embedding."""
    zipf: float = 1.05
    """Exponent of item popularity: p(rank r) ~ (r + 1)^-zipf."""
    ctr: float = 0.1
    """Target mean click probability (the intercept is calibrated to it)."""
    days: int = 28
    """Time span of the rows in days."""
    chunk_rows: int = 65_536
    """Rows generated per step (bounds memory; part of the random stream, so it changes the data)."""
    high_card_columns: int = 0
    """Extra high-cardinality categorical columns hc_id_0.. with a click effect (0: none, as before)."""
    high_card_size: int = 100_000
    """IDs per extra high-cardinality column: 0..high_card_size-1."""
    name: str = "synthetic"
    """Dataset name written into the spec."""

    @property
    def num_topics(self) -> int:
        return self.topics_l1 * self.topics_l2

    def split_rows(self) -> dict[str, int]:
        n_valid = int(round(self.rows * self.valid_frac))
        n_test = int(round(self.rows * self.test_frac))
        return {"train": self.rows - n_valid - n_test, "valid": n_valid, "test": n_test}

    def validate(self) -> None:
        """Raise DataError naming the flag for any bad value."""

        def need(ok: bool, flag: str, rule: str, value) -> None:
            if not ok:
                raise DataError(f"--{flag} {rule}, got {value!r}")

        need(self.rows > 0, "rows", "must be > 0", self.rows)
        need(self.seed >= 0, "seed", "must be >= 0", self.seed)
        need(self.users > 0, "users", "must be > 0", self.users)
        need(self.dense >= 0, "dense", "must be >= 0", self.dense)
        need(self.history_len > 0, "history-len", "must be > 0", self.history_len)
        need(0 < self.valid_frac < 1, "valid-frac", "must be in (0, 1)", self.valid_frac)
        need(0 < self.test_frac < 1, "test-frac", "must be in (0, 1)", self.test_frac)
        need(
            self.valid_frac + self.test_frac < 1,
            "valid-frac",
            "plus --test-frac must be < 1",
            self.valid_frac + self.test_frac,
        )
        need(self.rows_per_shard > 0, "rows-per-shard", "must be > 0", self.rows_per_shard)
        need(self.topics_l1 > 0, "topics-l1", "must be > 0", self.topics_l1)
        need(self.topics_l2 > 0, "topics-l2", "must be > 0", self.topics_l2)
        need(
            self.items >= self.num_topics,
            "items",
            f"must be >= the number of fine topics (--topics-l1 x --topics-l2 = {self.num_topics})",
            self.items,
        )
        need(self.emb_dim > 0, "emb-dim", "must be > 0", self.emb_dim)
        need(self.zipf >= 0, "zipf", "must be >= 0", self.zipf)
        need(0.001 <= self.ctr <= 0.9, "ctr", "must be in [0.001, 0.9]", self.ctr)
        need(self.days > 0, "days", "must be > 0", self.days)
        need(self.chunk_rows > 0, "chunk-rows", "must be > 0", self.chunk_rows)
        need(self.high_card_columns >= 0, "high-card-columns", "must be >= 0", self.high_card_columns)
        need(self.high_card_size >= 2, "high-card-size", "must be >= 2", self.high_card_size)
        for split, n in self.split_rows().items():
            if n < 1:
                raise DataError(
                    f"--rows {self.rows} leaves the {split} split empty with --valid-frac "
                    f"{self.valid_frac} and --test-frac {self.test_frac}; use more rows"
                )


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _power_cdf(x: np.ndarray, n, a: float) -> np.ndarray:
    """CDF of the density ~ x^-a on [1, n + 1]."""
    if abs(a - 1.0) < 1e-9:
        return np.log(x) / np.log(n + 1.0)
    b = 1.0 - a
    return (x**b - 1.0) / ((n + 1.0) ** b - 1.0)


def _power_pmf(k: np.ndarray, n, a: float) -> np.ndarray:
    """P(rank k) of _power_rank: the power law on [1, n + 1] discretised to unit bins (Zipf-like)."""
    k = k.astype(np.float64)
    return _power_cdf(k + 2.0, n, a) - _power_cdf(k + 1.0, n, a)


def _power_scale(n, a: float):
    """The constant of _power_rank for n ranks (precomputed per topic: it costs a pow per draw)."""
    n = np.asarray(n, dtype=np.float64)
    return np.log(n + 1.0) if abs(a - 1.0) < 1e-9 else (n + 1.0) ** (1.0 - a) - 1.0


def _power_rank(u: np.ndarray, n, a: float, scale) -> np.ndarray:
    """Ranks 0..n-1 (n may be an array) with Zipf-like P(k) ~ (k + 1)^-a, by inverting _power_cdf.

    ``scale`` is ``_power_scale(n, a)``. O(1) per draw; a search over a cumulative table is
    memory-bound and several times slower.
    """
    if abs(a - 1.0) < 1e-9:
        x = np.exp(u * scale)
    else:
        x = (1.0 + u * scale) ** (1.0 / (1.0 - a))
    return np.minimum(x.astype(np.int64) - 1, np.asarray(n) - 1)


def _standardize(x: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Zero mean, unit variance; with ``weights`` (how often each entry appears in the rows) the
    column is standardised as the model sees it, not per user / item."""
    mean = np.average(x, weights=weights)
    std = np.sqrt(np.average((x - mean) ** 2, weights=weights))
    return ((x - mean) / (std + 1e-9)).astype(np.float32)


class HiddenModel:
    """The generative model's parameters (drawn from the seed) and the per-chunk samplers.

    Memory is O(items + users + topics), independent of the row count.
    """

    # Effect sizes (logit scale). The topic-driven item effect (coarse + fine + taste x topic) has a
    # larger spread than the item-specific bias, which is still large enough to matter for head items.
    SD_L1, SD_L2, SD_ITEM = 0.4, 0.4, 0.5
    TASTE = 0.7  # user taste . fine-topic vector, ~N(0, 1) before scaling
    SD_USER = 0.35
    HIST_L2, HIST_L1 = 0.6, 0.3  # fraction of history items sharing the candidate's fine / coarse topic
    FAV_TOPICS = 4  # favourite fine topics per user
    FAV_SLOTS = 16  # favourite topics are stored as 16 equally likely slots (weights in 1/16 steps)
    P_PERSONAL = 0.5  # impression drawn from the user's favourite topics (else by global popularity)
    P_HIST_FAV = 0.8  # history item drawn from the user's favourite topics
    HIST_POOL = 2  # each user's item sequence is HIST_POOL x history_len long (a ring)
    LATENT = 16
    USER_ZIPF = 0.7  # exponent of user activity (rows per user)
    # Extra high-cardinality columns: popularity exponent, hidden clusters (~sqrt(V) of them) and the
    # logit spread of the cluster effect, the ID-specific offset and the cluster x coarse-topic cross.
    HC_ZIPF = 1.0
    SD_HC_CLUSTER, SD_HC_ID, SD_HC_X_L1 = 0.4, 0.3, 0.2

    def __init__(self, cfg: SyntheticConfig) -> None:
        self.cfg = cfg
        rng = _rng(cfg.seed, _MODEL)
        n_items, n_users, n_topics, k = cfg.items, cfg.users, cfg.num_topics, self.LATENT

        # -- topics -----------------------------------------------------------------------------
        self.topic_parent = np.repeat(np.arange(cfg.topics_l1), cfg.topics_l2)  # fine -> coarse
        l1_vec = rng.standard_normal((cfg.topics_l1, k))
        self.topic_vec = (0.8 * l1_vec[self.topic_parent] + 0.6 * rng.standard_normal((n_topics, k))).astype(
            np.float32
        )
        self.centroid = rng.standard_normal((cfg.topics_l1, cfg.emb_dim)).astype(np.float32)
        self.offset = (0.5 * rng.standard_normal((n_topics, cfg.emb_dim))).astype(np.float32)
        # Content also reveals a little of the item's own appeal (its hidden quality), along one axis.
        q_dir = rng.standard_normal(cfg.emb_dim)
        self.quality_dir = (q_dir / np.linalg.norm(q_dir)).astype(np.float32)
        b_l1 = self.SD_L1 * rng.standard_normal(cfg.topics_l1)
        b_l2 = self.SD_L2 * rng.standard_normal(n_topics)

        # -- items ------------------------------------------------------------------------------
        # Uneven topic sizes; every fine topic gets at least one item so per-topic sampling works.
        topic_share = rng.dirichlet(np.full(n_topics, 2.0))
        item_l2 = np.concatenate(
            [rng.permutation(n_topics), rng.choice(n_topics, size=n_items - n_topics, p=topic_share)]
        )
        self.item_l2 = rng.permutation(item_l2).astype(np.int64)
        self.item_l1 = self.topic_parent[self.item_l2].astype(np.int64)
        # Popularity: a global rank (independent of the ID, so IDs carry no information themselves)
        # and each item's rank within its fine topic (by global rank); both follow the same
        # Zipf-like law, sampled in O(1) per draw by _power_rank.
        self.rank_to_item = rng.permutation(n_items)
        rank = np.empty(n_items, dtype=np.int64)
        rank[self.rank_to_item] = np.arange(n_items)
        self.by_topic = np.lexsort((rank, self.item_l2))  # grouped by topic, head items first
        self.topic_start = np.searchsorted(self.item_l2[self.by_topic], np.arange(n_topics))
        self.topic_size = np.diff(np.append(self.topic_start, n_items))
        # Segments for _items_for_users: one per fine topic, then all items by global rank.
        self.seg_items = np.concatenate([self.by_topic, self.rank_to_item])
        self.seg_start = np.append(self.topic_start, n_items)
        self.seg_size = np.append(self.topic_size, n_items)
        self.seg_scale = _power_scale(self.seg_size, cfg.zipf)
        quality = rng.standard_normal(n_items)
        log_price = 0.5 * rng.standard_normal(n_topics)[self.item_l2] + 0.4 * rng.standard_normal(n_items)
        log_age = np.log1p(rng.exponential(180.0, n_items))
        self.item_base = (
            b_l1[self.item_l1]
            + b_l2[self.item_l2]
            + self.SD_ITEM * rng.standard_normal(n_items)
            + 0.25 * quality
            - 0.15 * _standardize(log_price)
            - 0.1 * _standardize(log_age)
        ).astype(np.float32)
        quality_seen = quality + 0.7 * rng.standard_normal(n_items)
        self.item_quality = quality.astype(np.float32)

        # -- users ------------------------------------------------------------------------------
        self.user_vec = (rng.standard_normal((n_users, k)) / np.sqrt(k)).astype(np.float32)
        # Favourite topics: the top few by (noisy) taste, weighted by softmax of the taste, stored as
        # slots so a draw is one gather: slot s holds the topic whose cumulative weight covers s.
        self.user_fav = np.empty((n_users, self.FAV_SLOTS), dtype=np.int32)
        mid = (np.arange(self.FAV_SLOTS) + 0.5) / self.FAV_SLOTS
        step = 16_384
        for a in range(0, n_users, step):  # in blocks: users x topics may not fit at once
            aff = self.user_vec[a : a + step] @ self.topic_vec.T
            # Uniform noise (sd ~0.46): as good a perturbation as a normal here, and 5x cheaper to draw.
            noisy = aff + (rng.random(aff.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(1.6)
            top = np.empty((aff.shape[0], self.FAV_TOPICS), dtype=np.int64)
            for j in range(self.FAV_TOPICS):  # a few argmax passes beat argpartition here
                top[:, j] = noisy.argmax(axis=1)
                np.put_along_axis(noisy, top[:, j : j + 1], -np.inf, axis=1)
            score = np.take_along_axis(aff, top, axis=1)
            w = np.exp(2.0 * (score - score.max(axis=1, keepdims=True)))
            cum = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
            slot = np.minimum((cum[:, None, :] < mid[None, :, None]).sum(axis=2), self.FAV_TOPICS - 1)
            self.user_fav[a : a + step] = np.take_along_axis(top, slot, axis=1)
        # Static features correlated with taste: argmax of a random projection of it plus noise.
        self.user_cat = {}
        user_bias = self.SD_USER * rng.standard_normal(n_users)
        for name, card in USER_FEATURES.items():
            proj = rng.standard_normal((k, card)).astype(np.float32) * np.float32(1.5)
            logits = self.user_vec @ proj + rng.gumbel(size=(n_users, card)).astype(np.float32)
            self.user_cat[name] = logits.argmax(axis=1).astype(np.int64)
            eff = 0.15 * rng.standard_normal(card)
            user_bias = user_bias + eff[self.user_cat[name]]
        activity_rank = rng.permutation(n_users)
        self.rank_to_user = np.argsort(activity_rank)
        self.user_scale = float(_power_scale(n_users, self.USER_ZIPF))
        user_w = _power_pmf(activity_rank, n_users, self.USER_ZIPF)  # share of rows per user
        # Heavier users have longer histories.
        activity = 1.0 - activity_rank / max(n_users - 1, 1)
        self.user_hist_q = (0.3 + 0.7 * activity).astype(np.float64)
        self.user_base = user_bias.astype(np.float32)
        self.user_dense = np.stack(
            [
                _standardize(np.log(user_w) + 0.1 * rng.standard_normal(n_users), user_w),
                _standardize(user_bias + 0.3 * rng.standard_normal(n_users), user_w),
            ],
            axis=1,
        )

        # Each user's item sequence (a ring of HIST_POOL x history_len items from their tastes): a row's
        # history is the window of it that ends at the row's time, so histories drift through the
        # period and rows of one user at similar times share items, as real recent histories do.
        pool = self.HIST_POOL * cfg.history_len
        self.user_pool = np.empty((n_users, pool), dtype=np.int32 if n_items < 2**31 else np.int64)
        for a in range(0, n_users, step):
            block = np.arange(a, min(a + step, n_users))
            draws = self._items_for_users(np.repeat(block, pool), self.P_HIST_FAV, rng)
            self.user_pool[block] = draws.reshape(len(block), pool)

        # -- item popularity as observed: the marginal impression probability --------------------
        slot_p = np.repeat(user_w / self.FAV_SLOTS, self.FAV_SLOTS)
        topic_mass = np.bincount(self.user_fav.ravel(), weights=slot_p, minlength=n_topics)
        in_topic = np.arange(n_items) - self.topic_start[self.item_l2[self.by_topic]]
        size = self.topic_size[self.item_l2[self.by_topic]]
        pop = (1 - self.P_PERSONAL) * _power_pmf(np.arange(n_items), n_items, cfg.zipf)[rank]
        pop[self.by_topic] += (
            self.P_PERSONAL * topic_mass[self.item_l2[self.by_topic]] * _power_pmf(in_topic, size, cfg.zipf)
        )
        self.pop = pop
        pop_rank = np.empty(n_items, dtype=np.int64)
        pop_rank[np.argsort(-pop, kind="stable")] = np.arange(n_items)
        self.item_pop_bucket = np.minimum(9, (10 * np.log1p(pop_rank) / np.log1p(n_items)).astype(np.int64))
        self.item_dense = np.stack(
            [
                _standardize(quality_seen, pop),
                _standardize(log_price, pop),
                _standardize(np.log(pop), pop),
                _standardize(log_age, pop),
            ],
            axis=1,
        )

        # -- crosses and context ----------------------------------------------------------------
        self.age_x_l1 = (0.3 * rng.standard_normal((USER_FEATURES["age"], cfg.topics_l1))).astype(np.float32)
        self.gender_x_l1 = (0.2 * rng.standard_normal((USER_FEATURES["gender"], cfg.topics_l1))).astype(
            np.float32
        )
        hours = np.arange(24)
        hour_eff = 0.25 * np.sin(2 * np.pi * (hours - 14) / 24) + 0.05 * rng.standard_normal(24)
        self.hour_x_device = (
            hour_eff[:, None] + 0.2 * rng.standard_normal((24, USER_FEATURES["device"]))
        ).astype(np.float32)
        self.weekday_eff = (0.1 * rng.standard_normal(7)).astype(np.float32)
        self.holiday_days = rng.random(cfg.days + 2) < 0.1
        self.holiday_eff = 0.3
        self.high_card = [self._high_card_column(j) for j in range(cfg.high_card_columns)]
        self.intercept = 0.0
        self.intercept = self._calibrate()

    def _high_card_column(self, j: int) -> dict[str, np.ndarray]:
        """Parameters of extra column j (its own seed stream): the ID at each popularity rank, each
        ID's hidden cluster and logit offset (cluster effect + ID effect), the cluster x topic_l1 cross."""
        cfg = self.cfg
        rng = _rng(cfg.seed, _HIGH_CARD, j)
        v = cfg.high_card_size
        n_clusters = int(np.clip(round(np.sqrt(v)), 1, 1024))
        cluster = rng.integers(0, n_clusters, v)
        b_cluster = self.SD_HC_CLUSTER * rng.standard_normal(n_clusters)
        return {
            "rank_to_id": rng.permutation(v),
            "cluster": cluster,
            "effect": (b_cluster[cluster] + self.SD_HC_ID * rng.standard_normal(v)).astype(np.float32),
            "x_l1": (self.SD_HC_X_L1 * rng.standard_normal((n_clusters, cfg.topics_l1))).astype(np.float32),
            "scale": _power_scale(v, self.HC_ZIPF),
        }

    def high_card_effect(self, j: int, ids: np.ndarray, l1: np.ndarray) -> np.ndarray:
        """The logit contribution of extra column j's IDs on rows whose items have coarse topic l1."""
        hc = self.high_card[j]
        return hc["effect"][ids] + hc["x_l1"][hc["cluster"][ids], l1]

    # -- sampling -----------------------------------------------------------------------------
    def _items_for_users(self, users: np.ndarray, p_fav: float, rng: np.random.Generator) -> np.ndarray:
        """One item per entry of ``users``: from a favourite topic with prob p_fav, else by popularity.

        One uniform per draw picks the branch, the slot and the rank (its leftover fraction is again
        uniform), and the global popularity law is segment number num_topics, so there is no masking.
        """
        u = rng.random(users.shape[0])
        fav = u < p_fav
        v = u * (self.FAV_SLOTS / p_fav)
        slot = np.minimum(v.astype(np.int64), self.FAV_SLOTS - 1)
        seg = np.where(fav, self.user_fav.ravel()[users * self.FAV_SLOTS + slot], self.cfg.num_topics)
        w = np.where(fav, v - slot, (u - p_fav) / (1.0 - p_fav))
        j = _power_rank(w, self.seg_size[seg], self.cfg.zipf, self.seg_scale[seg])
        return self.seg_items[self.seg_start[seg] + j]

    def sample(self, rng: np.random.Generator, ts: np.ndarray) -> dict[str, np.ndarray]:
        """Rows at the given timestamps (n,) int64: column name -> (n,) array, except ``hist_items`` =
        (offsets (n + 1,) int32, values) and the extra key ``logit`` (the true logit, float64)."""
        cfg = self.cfg
        n = ts.shape[0]
        users = self.rank_to_user[_power_rank(rng.random(n), cfg.users, self.USER_ZIPF, self.user_scale)]
        items = self._items_for_users(users, self.P_PERSONAL, rng)
        h = cfg.history_len
        hist_len = np.minimum(h, (rng.random(n) * (h + 1) * self.user_hist_q[users]).astype(np.int64))
        hist_row = np.repeat(np.arange(n), hist_len)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(hist_len, out=offsets[1:])
        # The window of the user's ring ending at the row's time (plus a little jitter), oldest first.
        pool = self.user_pool.shape[1]
        end = (ts - T0) * pool // (cfg.days * DAY) + rng.integers(0, 3, n) + pool
        pos = end[hist_row] - hist_len[hist_row] + (np.arange(hist_row.shape[0]) - offsets[hist_row])
        hist_items = self.user_pool.ravel()[users[hist_row] * pool + pos % pool].astype(np.int64)

        l1, l2 = self.item_l1[items], self.item_l2[items]
        day = (ts - T0) // DAY
        hour = (ts // 3600) % 24
        weekday = (ts // DAY + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        holiday = self.holiday_days[np.clip(day, 0, self.holiday_days.shape[0] - 1)].astype(np.int64)
        age, gender = self.user_cat["age"][users], self.user_cat["gender"][users]
        device = self.user_cat["device"][users]
        depth = rng.geometric(0.3, n) - 1

        n_hist = np.maximum(hist_len, 1)
        hist_match = np.bincount(
            hist_row,
            weights=self.HIST_L2 * (self.item_l2[hist_items] == l2[hist_row])
            + self.HIST_L1 * (self.item_l1[hist_items] == l1[hist_row]),
            minlength=n,
        )
        taste = np.einsum("nk,nk->n", self.user_vec[users], self.topic_vec[l2])
        logit = (
            self.intercept
            + self.item_base[items]
            + self.user_base[users]
            + self.TASTE * taste
            + self.age_x_l1[age, l1]
            + self.gender_x_l1[gender, l1]
            + self.hour_x_device[hour, device]
            + self.weekday_eff[weekday]
            + self.holiday_eff * holiday
            + hist_match / n_hist
            - 0.15 * np.log1p(depth)
        )
        extra = {}
        if self.high_card:
            # A jumped copy of the row stream: rng itself is not advanced, so every other draw of
            # the chunk (and the label's uniforms) is the same as without the extra columns.
            rng_hc = np.random.Generator(rng.bit_generator.jumped())
            for j, name in enumerate(high_card_names(len(self.high_card))):
                hc = self.high_card[j]
                rank = _power_rank(rng_hc.random(n), cfg.high_card_size, self.HC_ZIPF, hc["scale"])
                extra[name] = hc["rank_to_id"][rank]
                logit = logit + self.high_card_effect(j, extra[name], l1)
        prob = _sigmoid(logit)
        label = rng.random(n) < prob

        dense_all = [
            self.user_dense[users, 0],
            self.user_dense[users, 1],
            self.item_dense[items, 0],
            self.item_dense[items, 1],
            self.item_dense[items, 2],
            self.item_dense[items, 3],
            (np.log1p(depth) - 0.9).astype(np.float32),
            (hist_len / cfg.history_len).astype(np.float32),
        ]
        dense = dense_all[: cfg.dense]
        if cfg.dense > len(dense_all):
            noise = rng.standard_normal((cfg.dense - len(dense_all), n), dtype=np.float32)
            dense += list(noise)
        cols = {
            "click": label.astype(np.float32),
            **{name: d for name, d in zip(dense_names(cfg.dense), dense)},
            "user_id": users,
            "item_id": items,
            "hist_items": (offsets, hist_items),
            "item_topic_l1": l1,
            "item_topic_l2": l2,
            **{name: self.user_cat[name][users] for name in USER_FEATURES},
            "hour": hour,
            "weekday": weekday,
            "holiday": holiday,
            **extra,
            "ts": ts,
            "click_prob": prob.astype(np.float32),
            "logit": logit,  # not a column: for calibration
        }
        return cols

    def _calibrate(self, n: int = 65_536, chunk: int = 8_192) -> float:
        """Intercept so the mean click probability is cfg.ctr (bisection on a fixed pilot sample,
        drawn in small chunks so the pilot does not set the memory peak)."""
        rng = _rng(self.cfg.seed, _CALIB)
        logits = []
        for _ in range(n // chunk):
            ts = T0 + rng.integers(0, self.cfg.days * DAY, chunk)
            logits.append(self.sample(rng, ts)["logit"])
        logit = np.concatenate(logits)
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if _sigmoid(logit + mid).mean() < self.cfg.ctr:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    # -- item table ---------------------------------------------------------------------------
    def item_chunks(self, chunk: int = 65_536):
        """Yield the item table as pyarrow tables of at most ``chunk`` items."""
        d = self.cfg.emb_dim
        for idx, a in enumerate(range(0, self.cfg.items, chunk)):
            ids = np.arange(a, min(a + chunk, self.cfg.items))
            rng = _rng(self.cfg.seed, _ITEMS, idx)
            l1, l2 = self.item_l1[ids], self.item_l2[ids]
            emb = self.centroid[l1] + self.offset[l2] + self.item_quality[ids, None] * self.quality_dir
            emb += 0.4 * rng.standard_normal(emb.shape, dtype=np.float32)
            offsets = pa.array(np.arange(0, (len(ids) + 1) * d, d, dtype=np.int32))
            yield pa.table(
                {
                    "item_id": ids,
                    "embedding": pa.ListArray.from_arrays(offsets, pa.array(emb.reshape(-1))),
                    "topic_l1": l1,
                    "topic_l2": l2,
                    "pop_bucket": self.item_pop_bucket[ids],
                }
            )


def dense_names(n: int) -> list[str]:
    names = list(DENSE_FEATURES[:n])
    return names + [f"noise_{i}" for i in range(n - len(names))]


def high_card_names(n: int) -> list[str]:
    """Names of the first n extra high-cardinality columns."""
    return [f"hc_id_{j}" for j in range(n)]


def make_spec(cfg: SyntheticConfig) -> DatasetSpec:
    """The spec of a synthetic dataset (num_rows filled in)."""
    user = [SparseFeature(name, card) for name, card in USER_FEATURES.items()]
    context = [SparseFeature(name, card) for name, card in CONTEXT_FEATURES.items()]
    item = [
        SparseFeature("item_topic_l1", cfg.topics_l1),
        SparseFeature("item_topic_l2", cfg.num_topics),
    ]
    sparse = [
        SparseFeature("user_id", cfg.users, high_cardinality=True),
        SparseFeature("item_id", cfg.items, item_ref=True),
        SparseFeature("hist_items", cfg.items, multi=True, max_len=cfg.history_len, item_ref=True),
        *item,
        *user,
        *context,
        *(
            SparseFeature(c, cfg.high_card_size, high_cardinality=True)
            for c in high_card_names(cfg.high_card_columns)
        ),
    ]
    return DatasetSpec(
        name=cfg.name,
        label="click",
        dense=dense_names(cfg.dense),
        sparse=sparse,
        item_id="item_id",
        user_id="user_id",
        timestamp="ts",
        prob="click_prob",
        id_mapping="mod",
        item_table=ItemTable(
            num_items=cfg.items,
            id_column="item_id",
            embedding_column="embedding",
            embedding_dim=cfg.emb_dim,
            category_columns=("topic_l1", "topic_l2", "pop_bucket"),
        ),
        feature_groups={
            "user": [f.name for f in user],
            "context": [f.name for f in context],
            "item": [f.name for f in item],
        },
        num_rows=cfg.split_rows(),
    )


def _to_table(cols: dict, schema: pa.Schema) -> pa.Table:
    arrays = []
    for f in schema:
        v = cols[f.name]
        if isinstance(v, tuple):
            offsets, values = v
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)))
        else:
            arrays.append(pa.array(v, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _write(root: str, cfg: SyntheticConfig, spec: DatasetSpec, model: HiddenModel, progress: bool) -> None:
    with ShardWriter(fs.join(root, ITEMS_DIR), _item_schema(cfg), cfg.rows_per_shard) as w:
        for t in model.item_chunks():
            w.write(t)

    schema = arrow_schema(spec)
    counts = cfg.split_rows()
    bounds = np.cumsum([0] + [counts[s] for s in SPLITS])  # split i covers rows [bounds[i], bounds[i+1])
    span = cfg.days * DAY

    def pieces():
        """(split index, first row, end row): chunks aligned to global row numbers, cut at split
        boundaries, so a chunk's random stream depends only on where it starts."""
        for i in range(len(SPLITS)):
            a = int(bounds[i])
            while a < bounds[i + 1]:
                b = int(min((a // cfg.chunk_rows + 1) * cfg.chunk_rows, bounds[i + 1]))
                yield i, a, b
                a = b

    def make(piece: tuple[int, int, int]) -> tuple[int, pa.Table]:
        i, a, b = piece
        rng = _rng(cfg.seed, _ROWS, a // cfg.chunk_rows, a % cfg.chunk_rows)
        ts = T0 + (np.arange(a, b, dtype=np.int64) * span) // cfg.rows + i  # +i: gaps between splits
        return i, _to_table(model.sample(rng, ts), schema)

    # Dictionary pages only where they pay off (small vocabularies): ~20% less writing time.
    small = [f.name for f in spec.sparse if not f.multi and f.vocab_size <= 1000]
    writers = [
        ShardWriter(
            fs.join(root, split), schema, cfg.rows_per_shard, use_dictionary=small, write_statistics=False
        )
        for split in SPLITS
    ]
    bar = tqdm(total=cfg.rows, unit="rows", unit_scale=True, disable=not progress, desc="generate")
    try:
        for i, table in _prefetched(make, pieces()):
            writers[i].write(table)
            if i > 0:
                writers[i - 1].close()  # no-op once closed
            bar.update(table.num_rows)
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        bar.close()
    spec_info = {"config": asdict(cfg), "intercept": model.intercept}
    atomic_write_text(fs.join(root, GENERATOR_FILE), json.dumps(spec_info, indent=2) + "\n")
    spec.save(root)  # last: a folder with spec.json is complete


def _prefetched(fn, items):
    """Yield fn(item) for each item, computing the next one in a thread meanwhile.

    Generation (numpy) and parquet encoding both release the GIL, so on two cores they overlap; at
    most two results are alive at once, which keeps memory bounded.
    """
    items = iter(items)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = next(items, None)
        if first is None:
            return
        pending = pool.submit(fn, first)
        for item in items:
            done = pending.result()
            pending = pool.submit(fn, item)
            yield done
        yield pending.result()


def _item_schema(cfg: SyntheticConfig) -> pa.Schema:
    return pa.schema(
        [
            pa.field("item_id", pa.int64()),
            pa.field("embedding", pa.list_(pa.float32())),
            pa.field("topic_l1", pa.int64()),
            pa.field("topic_l2", pa.int64()),
            pa.field("pop_bucket", pa.int64()),
        ]
    )


def generate_dataset(
    out: str | os.PathLike,
    rows: int,
    *,
    overwrite: bool = False,
    progress: bool = True,
    **options,
) -> DatasetSpec:
    """Write a synthetic dataset to ``out`` and return its spec.

    ``options`` are the other ``SyntheticConfig`` fields (items, users, seed, dense, history_len, ...).
    ``out`` is claimed as a dataset folder (`data_pipeline.outdir.claim_dataset`): a folder holding an
    earlier dataset is refused unless ``overwrite``, which replaces only that dataset's files (spec.json,
    the splits, the item table); files of the user's beside them are kept. Locally the dataset is
    written to a temp folder beside ``out`` and its entries moved in when complete (the old dataset
    stays until then, spec.json last), so ``out`` never holds half a dataset. An object-store ``out``
    (``s3://bucket/prefix``) has no rename: the shards are uploaded in place (an old dataset there is
    removed first, spec.json first) and spec.json, written last, marks the dataset complete.
    """
    try:
        cfg = SyntheticConfig(rows=rows, **options)
    except TypeError as e:
        raise DataError(f"generate: {e}") from None
    cfg.validate()
    if not fs.is_local(out):
        return _generate_in_place(fs.location(out), cfg, overwrite, progress)
    out = Path(
        os.path.abspath(fs.local_path(out))
    )  # normalised: "." or "x/.." must not put the temp folder inside
    claimed = outdir.claim_dataset(str(out), overwrite, clear=False)
    spec = make_spec(cfg)
    spec.validate()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model = HiddenModel(cfg)
        log.info("hidden model built: intercept %.3f", model.intercept)
        _write(str(tmp), cfg, spec, model, progress)
        claimed.clear()  # the earlier dataset's entries (spec.json first), and only those
        written = sorted(p.name for p in tmp.iterdir())
        claimed.add(*written)
        for name in sorted(written, key=lambda n: n == SPEC_FILE):  # spec.json last: now complete
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return spec


def _generate_in_place(out: str, cfg: SyntheticConfig, overwrite: bool, progress: bool) -> DatasetSpec:
    """generate_dataset into object storage: written in place, spec.json last."""
    claimed = outdir.claim_dataset(out, overwrite)  # the earlier dataset goes first, spec.json first
    spec = make_spec(cfg)
    spec.validate()
    model = HiddenModel(cfg)
    log.info("hidden model built: intercept %.3f", model.intercept)
    claimed.add(SPEC_FILE, *SPLITS, ITEMS_DIR)
    _write(out, cfg, spec, model, progress)
    return spec


@dataclass
class GenerateConfig:
    """Write a synthetic CTR dataset from a hidden generative model."""

    out: str
    """Output dataset folder (absent, empty, or holding files of yours, which are kept): a path or an object-store URI (s3://bucket/prefix;
    credentials from the environment, see data_pipeline/fs.py)."""
    dataset: Annotated[SyntheticConfig, tyro.conf.OmitArgPrefixes]
    overwrite: bool = False
    """Replace the dataset an earlier generate or convert wrote in --out (only its files)."""
    progress: bool = True
    """Progress bar (--no-progress: none)."""


def run(args: GenerateConfig) -> DatasetSpec:
    options = {name: v for name, v in asdict(args.dataset).items() if name != "rows"}
    spec = generate_dataset(
        args.out, args.dataset.rows, overwrite=args.overwrite, progress=args.progress, **options
    )
    log.info("wrote %s: %s", args.out, spec.num_rows)
    return spec
