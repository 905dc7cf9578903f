"""Two SID arms of the embedding-memory comparison, on STORE's body (same tokens, same transformer):

- "sid-prefix" (prefix n-gram SIDs, as deployed in Meta's ads ranking): an ID's K tokens are one
  embedding per prefix of its SID tuple, (c1), (c1, c2), ..., (c1 .. cK), instead of one per code.
  A prefix is specific where the tuple is (the full tuple of a head item is nearly its own row) and
  shared where it is coarse (c1 alone). Prefix level k has its own table of
  r_k = min(C^(k+1), B // K) rows (``--model.sid_prefix.rows`` B per tokenized feature): where C^(k+1)
  rows fit, the prefix's own index is its row (no collision); else the prefix is hashed into the
  r_k rows (``PrefixHash``).
- "hybrid": STORE's K SID tokens plus a small hashed raw-ID table (``--model.hybrid.rows`` B rows per
  tokenized feature, ``store.models.store.IdHash``), for the head IDs that their SIDs blur: token k of
  a feature is its k-th SID embedding plus the k-th slice of Linear(D, K*D) of its hashed-ID row.

Both read SIDs, so both need ``--sids``, and both run their lookups' inputs through a data-time batch
transform (``SidTable.transform``, then the prefix rows or the hashed IDs) so that every collection
reads ``batch.sid`` as it comes and TorchRec can pipeline it. The hybrid's hashed raw IDs travel in
``batch.sid`` as features ``<f>_raw``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_pipeline.batch import Batch
from data_pipeline.spec import DatasetSpec
from store.models.flops import store_flops
from store.models.layers import RAW_ITEM_TABLE, Table, masked_mean, padded, static_table_name
from store.models.registry import ModelSpec
from store.models.store import (
    HASH_PRIME,
    IdHash,
    SidTokens,
    StoreModel,
    check_budget,
    hash_coefficients,
    hashed_features,
    sid_store_inputs,
)
from store.sid import SidTable, sid_feature_name, sid_sources

if TYPE_CHECKING:
    from store.models.config import ModelConfig


# -- sid-prefix -----------------------------------------------------------------------------------
@dataclass
class SidPrefixConfig:
    """sid-prefix's own hyper-parameters (--model.sid_prefix.*)."""

    rows: int = 4096
    """The row budget B of each tokenized feature: its K prefix tables hold B // K rows each at most
    (fewer where the level has fewer possible prefixes, C^(k+1))."""
    seed: int = 0
    """Seed of the prefix hash (the same seed, the same prefix -> row map in every process and run)."""

    def validate(self, model_config: ModelConfig) -> None:
        check_budget("sid_prefix", self.rows, self.seed, least=1)


def prefix_rows(budget: int, num_sids: int, codebook_size: int) -> list[int]:
    """Rows of the K prefix tables of one feature: r_k = min(C^(k+1), max(1, budget // K))."""
    per_level = max(1, budget // num_sids)
    return [min(per_level, codebook_size ** (k + 1)) for k in range(num_sids)]


@dataclass(frozen=True)
class PrefixHash:
    """SID tuples -> the row of each prefix in its level's table.

    The prefix (c_0 .. c_k) is the integer p_k = p_{k-1} * C + c_k (mod p = 2^31 - 1), exact while
    C^(k+1) < p. Level k with ``rows[k]`` = C^(k+1) takes p_k as its row (every prefix its own row);
    a smaller level hashes it: ((a_k * p_k + b_k) mod p) mod rows[k], a_k and b_k drawn from ``seed``
    by SplitMix64 (a universal family: two prefixes share a row with probability about 1 / rows[k])."""

    codebook_size: int
    rows: tuple[int, ...]
    a: tuple[int, ...]
    b: tuple[int, ...]

    @classmethod
    def from_seed(cls, rows: list[int], codebook_size: int, seed: int) -> PrefixHash:
        a, b = zip(*hash_coefficients(seed, len(rows)))
        return cls(codebook_size, tuple(rows), a, b)

    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        """(K, N) int64 codes (one row per SID) -> (K, N) int64 rows, row k in [0, rows[k])."""
        out, p = [], torch.zeros_like(codes[0])
        for k, r in enumerate(self.rows):
            p = (p * self.codebook_size + codes[k]) % HASH_PRIME
            exact = self.codebook_size ** (k + 1) <= r
            out.append(p if exact else (p * self.a[k] + self.b[k]) % HASH_PRIME % r)
        return torch.stack(out)


def prefix_features(kjt: KeyedJaggedTensor, spec: DatasetSpec, prefix: PrefixHash) -> KeyedJaggedTensor:
    """SID features (``SidTable.transform``'s ``batch.sid``) with every ``<f>_sid<k>`` value replaced by
    the row of the ID's level-k prefix; keys and lengths as they were."""
    keys = kjt.keys()
    values = list(torch.split(kjt.values(), kjt.length_per_key()))
    index = {key: i for i, key in enumerate(keys)}
    for served in sid_sources(spec).values():
        for f in served:
            idx = [index[sid_feature_name(f, k)] for k in range(len(prefix.rows))]
            rows = prefix(torch.stack([values[i] for i in idx]))
            for k, i in enumerate(idx):
                values[i] = rows[k]
    return KeyedJaggedTensor(
        keys=keys,
        values=torch.cat(values) if values else kjt.values(),
        lengths=kjt.lengths(),
        stride=kjt.stride(),
    )


def prefix_table_name(feature: str, k: int, item_feature: str) -> str:
    """sid-prefix's table of the level-k prefixes of ``feature``."""
    return f"t_prefix{k}" if feature == item_feature else f"t_{feature}_prefix{k}"


def build_sid_prefix(
    spec: DatasetSpec, cfg: ModelConfig, sids: SidTable | None, device: torch.device | None
) -> StoreModel:
    """STORE whose K codebooks per tokenized feature are its K prefix tables (``prefix_rows``)."""
    inputs = sid_store_inputs(spec, cfg, sids)
    rows = prefix_rows(cfg.sid_prefix.rows, sids.num_sids, sids.codebook_size)
    tables = [
        Table(prefix_table_name(src, k, spec.item_id), rows[k],
              tuple(sid_feature_name(f, k) for f in served), cfg.embedding_init_std)
        for src, served in sid_sources(spec).items()
        for k in range(sids.num_sids)
    ]  # fmt: skip
    return StoreModel(dataclasses.replace(inputs, token_tables=tables), cfg, device)


def prefix_batch(batch: Batch, sids: SidTable, spec: DatasetSpec, prefix: PrefixHash, train: bool) -> Batch:
    """``batch`` through ``sids.transform``, its SID values then turned into prefix rows."""
    out = sids.transform(batch, spec, train)
    return dataclasses.replace(out, sid=prefix_features(out.sid, spec, prefix))


def prefix_transform(
    spec: DatasetSpec, cfg: ModelConfig, sids: SidTable | None, train: bool
) -> Callable[[Batch], Batch]:
    assert sids is not None
    rows = prefix_rows(cfg.sid_prefix.rows, sids.num_sids, sids.codebook_size)
    prefix = PrefixHash.from_seed(rows, sids.codebook_size, cfg.sid_prefix.seed)
    return functools.partial(prefix_batch, sids=sids, spec=spec, prefix=prefix, train=train)


# -- hybrid ---------------------------------------------------------------------------------------
@dataclass
class HybridConfig:
    """hybrid's own hyper-parameters (--model.hybrid.*): its hashed raw-ID tables beside the SIDs."""

    rows: int = 256
    """The row budget B of each tokenized feature's hashed raw-ID table (ID 0 keeps row 0, the others
    share rows 1..B-1), on top of its K SID codebooks."""
    seed: int = 0
    """Seed of the hash function."""

    def validate(self, model_config: ModelConfig) -> None:
        check_budget("hybrid", self.rows, self.seed)


def raw_feature_name(feature: str) -> str:
    """The hybrid's hashed raw IDs of batch feature ``feature``, in ``batch.sid``."""
    return f"{feature}_raw"


class HybridTokens(SidTokens):
    """STORE's SID tokens plus, per tokenized feature, its hashed raw-ID row through Linear(D, K*D),
    added token by token. Reads ``batch.sid`` only (SIDs and ``<f>_raw``): one collection, the SID
    codebooks and the raw tables (t_item_raw for every item-valued feature, t_<f>_raw)."""

    def __init__(
        self,
        sid_tables: list[Table],
        raw_tables: list[Table],
        num_sids: int,
        lengths: dict[str, int],
        dim: int,
        pooled: bool,
        device: torch.device | None,
    ) -> None:
        super().__init__(sid_tables + raw_tables, num_sids, lengths, dim, pooled, device)
        self.split = nn.ModuleList([nn.Linear(dim, num_sids * dim) for _ in raw_tables])
        # batch feature -> its raw table (and split): item_id and hist_items share the item's
        self.table_index = {f[: -len("_raw")]: i for i, t in enumerate(raw_tables) for f in t.features}

    def _raw(self, jts, feature: str, length: int | None = None) -> torch.Tensor:
        """(B, D) the feature's hashed-ID embedding (pooled: the history's mean), or (B, L, D) padded."""
        jt = jts[raw_feature_name(feature)]
        if self.pooled:
            return jt
        return padded(jt, 1)[0][:, 0] if length is None else padded(jt, length)[0]

    def _split(self, feature: str, emb: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., K, D) through the feature's table's Linear(D, K*D)."""
        return self.split[self.table_index[feature]](emb).unflatten(-1, (self.num_sids, -1))

    def feature_tokens(self, jts, feature: str) -> torch.Tensor:
        return super().feature_tokens(jts, feature) + self._split(feature, self._raw(jts, feature))

    def history(self, jts, feature: str) -> torch.Tensor:
        if self.pooled:
            return super().history(jts, feature) + self._raw(jts, feature)
        return masked_mean(*self.sequence(jts, feature))

    def sequence(self, jts, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
        per_sid, valid = self._sid_grid(jts, feature)
        return per_sid.sum(2) + self._raw(jts, feature, per_sid.shape[1]), valid

    def sid_sequence(self, jts, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
        per_sid, valid = self._sid_grid(jts, feature)  # (B, L, K, D), (B, L)
        b, length, k, d = per_sid.shape
        tokens = per_sid + self._split(feature, self._raw(jts, feature, length))
        return tokens.reshape(b, length * k, d), valid.repeat_interleave(k, dim=1)


def build_hybrid(
    spec: DatasetSpec, cfg: ModelConfig, sids: SidTable | None, device: torch.device | None
) -> StoreModel:
    """STORE with a hashed raw-ID table of ``--model.hybrid.rows`` rows per tokenized feature."""
    inputs = sid_store_inputs(spec, cfg, sids)
    raw_tables = [
        Table(f"{RAW_ITEM_TABLE if src == spec.item_id else static_table_name(src)}_raw", cfg.hybrid.rows,
              tuple(raw_feature_name(f) for f in served), cfg.embedding_init_std)
        for src, served in sid_sources(spec).items()
    ]  # fmt: skip
    lengths = {f.name: f.max_len for f in inputs.history}
    items = HybridTokens(
        inputs.token_tables,
        raw_tables,
        sids.num_sids,
        lengths,
        cfg.embedding_dim,
        not cfg.history_tokens,
        device,
    )
    return StoreModel(inputs, cfg, device, items=items)


def hybrid_batch(batch: Batch, sids: SidTable, spec: DatasetSpec, id_hash: IdHash, train: bool) -> Batch:
    """``batch`` through ``sids.transform``, plus the tokenized features' hashed raw IDs in ``batch.sid``
    as ``<f>_raw``."""
    features = [f for served in sid_sources(spec).values() for f in served]
    keys = batch.sparse.keys()
    raw = hashed_features(batch.sparse.permute([keys.index(f) for f in features]), id_hash, features)
    renamed = KeyedJaggedTensor(
        keys=[raw_feature_name(f) for f in features],
        values=raw.values(),
        lengths=raw.lengths(),
        stride=raw.stride(),
    )
    out = sids.transform(batch, spec, train)
    return dataclasses.replace(out, sid=KeyedJaggedTensor.concat([out.sid, renamed]))


def hybrid_transform(
    spec: DatasetSpec, cfg: ModelConfig, sids: SidTable | None, train: bool
) -> Callable[[Batch], Batch]:
    assert sids is not None
    id_hash = IdHash.from_seed(cfg.hybrid.rows, cfg.hybrid.seed)
    return functools.partial(hybrid_batch, sids=sids, spec=spec, id_hash=id_hash, train=train)


SPECS = (
    ModelSpec(
        "sid-prefix",
        build_sid_prefix,
        config=SidPrefixConfig,
        needs_sids=True,
        transform=prefix_transform,
        budget="rows",
        flops=store_flops,
    ),
    ModelSpec(
        "hybrid",
        build_hybrid,
        config=HybridConfig,
        needs_sids=True,
        transform=hybrid_transform,
        budget="rows",
        flops=store_flops,
    ),
)
