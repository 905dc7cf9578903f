"""STORE (semantic IDs + orthogonal rotation + MoBA attention) and its raw-ID twin.

The paper's layout: high-cardinality sparse features (the item, the user, site/app/device IDs, large
categorical columns: ``DatasetSpec.high_cardinality``) are decomposed into K semantic tokens each;
the low-cardinality static features are grouped, fused and orthogonally rotated into K diverse
blocks; all tokens interact in a transformer with MoBA block-sparse attention.

Shape letters: B batch, D token width, K tokens per tokenized feature (SIDs), F tokenized features,
G static feature groups, M = G * D, R rotated tokens, H history features, L history length,
T tokens in the attention.

Tokens, in this order (real tokens first, so padding sits in the last attention blocks)::

    feature tokens  F*K  per tokenized feature (item first), STORE: its ID's K SID embeddings (tables
                         t_sid<k> for the item, t_<f>_sid<k> for feature f; C rows each, per position k)
                         ID: its raw-ID embedding (t_item, t_<f>) -> Linear(D, K*D) -> K tokens, so
                         both variants attend over the same number of tokens
    static tokens    R   the groups' MLP outputs concatenated to C (B, M), rotated O_i = C R_i,
                         each projected to D by one shared linear map (rotation=False: G group tokens)
    history tokens   H   one per history feature: the mean of its items' embeddings, or, with
                or H*L   history_tokens=True, one token per history item (padded, masked).
                         A history item's embedding is the sum of its K SID embeddings (STORE) or its
                         raw-ID embedding (ID).
              or H*L*K   history_sid_tokens=True (with history_tokens): one token per SID of every
                         history item, item after item (STORE: the K SID embeddings themselves; ID:
                         the item's raw-ID embedding through the item table's Linear(D, K*D)).

then L layers X = LN(Attn(X) + X), X = LN(FFN(X) + X) with MoBA (or dense) attention, and a head
over [the fixed tokens flattened, the mean of all real tokens].

Long token sets: the paper's setting of many feature tokens is history_tokens + history_sid_tokens.
With the synthetic data's 50-item histories (``generate --history-len 50``), K = 8 SIDs, the item and
the user tokenized and 8 rotated blocks, that is T = 2*8 + 8 + 50*8 = 424 tokens (K = 4: 212). There,
with ``--model.moba_block_size 106`` (4 key blocks), a CPU training step at sparsity 0.5 runs 1.28x
(a 2-core Intel Xeon) to 1.51x (a 2-core AMD EPYC) the samples/s of dense attention, with test AUC
within 0.001 of it (benchmarks/bench_moba.py; docs/results.md, "MoBA sparsity sweep with a few
hundred tokens").

Sparse lookups: one EmbeddingBagCollection (static features, mean pooled) and one collection for
the tokenized features (``items.ec``): mean-pooled bags when the history is pooled into one token
(the default; the pooled lookup is the history token), an EmbeddingCollection (per position) with
history_tokens=True. For STORE the batch must already be transformed by ``SidTable.transform``
(``store.models.zoo.batch_transform``: tokenized features moved to ``batch.sid`` as ``<f>_sid<k>``,
item-valued ones through the item's codes), and the SID collection reads ``batch.sid`` only, so the
trainer can replicate it. For ID the raw batch is used; t_item serves every item-valued feature.

ID-hash ("id-hash", ``--model.id_hash.rows`` B): the ID twin with every raw-ID table of a tokenized
feature cut to B rows, its IDs hashed into them (``IdHash``: ID 0, the converters' missing value,
keeps row 0; the others share rows 1..B-1, collisions allowed). The hash runs at data time, like
STORE's SID lookup: its batch transform (``hash_transform``, ``store.models.zoo.batch_transform``)
replaces the tokenized features' values in ``batch.sparse`` by their rows, and the model reads
``batch.sparse`` as it comes, so TorchRec's pipeline looks both collections up ahead of the forward.

The model takes explicit inputs (``StoreInputs``: tables, feature lists, groups; ``store_inputs``
makes them from the spec and the SID table) and ``--model.*`` (``ModelConfig``: STORE's options are
shared fields, read by "store", "id" and "id-hash"; "id-hash" has its group ``--model.id_hash.*``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_pipeline.batch import Batch
from data_pipeline.hashing import splitmix64
from data_pipeline.spec import DatasetSpec
from store.models.attention import TransformerEncoder
from store.models.flops import store_flops
from store.models.inputs import history_inputs, parse_feature_groups, static_tables
from store.models.layers import (
    EMBEDDING_INIT_STD,
    EXCLUSIVE_INPUT,
    RAW_ITEM_TABLE,
    Head,
    HistoryFeature,
    ModelOutput,
    StaticEmbedder,
    Table,
    item_collection,
    low_cardinality_features,
    masked_mean,
    padded,
    sequence_length,
    static_table_name,
)
from store.models.registry import ModelSpec, flag_error
from store.models.rotation import OrthogonalRotation
from store.sid import SidTable, sid_feature_name, sid_sources

if TYPE_CHECKING:
    from store.models.config import ModelConfig

DENSE_GROUP = "dense"
HASH_PRIME = (1 << 31) - 1
"""p of ``IdHash``'s ((a * x + b) mod p): a Mersenne prime small enough that a * x + b stays in int64."""
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
"""SplitMix64's state increment, 2^64 / phi."""


@dataclass
class IdHashConfig:
    """ID-hash's own hyper-parameters (--model.id_hash.*): the row budget of its hashed raw-ID tables."""

    rows: int = 256
    """The row budget B of each tokenized feature's raw-ID table (the item table, shared by every
    item-valued feature, and one table per other high-cardinality feature). ID 0 keeps row 0 and every
    other ID is hashed into the B - 1 other rows. The default is as many rows as one tokenized
    feature's codebooks hold in STORE with the tokenizer's defaults (4 SIDs x 64 codes)."""
    seed: int = 0
    """Seed of the hash function (the same seed, the same ID -> row map in every process and run)."""

    def validate(self, model_config: ModelConfig) -> None:
        check_budget("id_hash", self.rows, self.seed)


def check_budget(group: str, rows: int, seed: int, least: int = 2) -> None:
    """A hashed arm's ``--model.<group>.rows`` in [least, p) (least 2: row 0 is ID 0's) and
    ``--model.<group>.seed`` >= 0; ValueError naming the flag (``flag_error``)."""
    if not least <= rows < HASH_PRIME:
        why = " (row 0 is ID 0's)" if least == 2 else ""
        raise flag_error(f"{group}.rows", rows, f"must be in [{least}, {HASH_PRIME - 1}]{why}")
    if seed < 0:
        raise flag_error(f"{group}.seed", seed, "must be >= 0")


def hash_coefficients(seed: int, count: int) -> list[tuple[int, int]]:
    """``count`` pairs (a, b), a in [1, p), b in [0, p), of the universal hash ((a * x + b) mod p), from
    SplitMix64's first 2 * ``count`` outputs from state ``seed`` (the state advances by 2^64 / phi)."""
    states = [(seed + j * GOLDEN_GAMMA) % (1 << 64) for j in range(1, 2 * count + 1)]
    draws = [int(v) for v in splitmix64(np.array(states, dtype=np.uint64))]
    return [(1 + a % (HASH_PRIME - 1), b % HASH_PRIME) for a, b in zip(draws[0::2], draws[1::2])]


@dataclass(frozen=True)
class IdHash:
    """The map of raw IDs to the ``rows`` rows of a hashed table: ID 0 -> row 0 (the converters' missing
    value; a raw table gives it its own row too), ID x > 0 -> 1 + ((a * (x mod p) + b) mod p) mod
    (rows - 1), with p = 2^31 - 1 and a, b drawn from ``seed`` by SplitMix64 (a universal hash family:
    any two IDs below p share a row with probability about 1 / (rows - 1))."""

    rows: int
    a: int
    b: int

    @classmethod
    def from_seed(cls, rows: int, seed: int) -> IdHash:
        ((a, b),) = hash_coefficients(seed, 1)
        return cls(rows, a, b)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Raw int64 IDs (>= 0) -> rows in [0, rows), same shape."""
        h = 1 + ((ids % HASH_PRIME) * self.a + self.b) % HASH_PRIME % (self.rows - 1)
        return torch.where(ids == 0, torch.zeros_like(ids), h)


def hashed_features(kjt: KeyedJaggedTensor, id_hash: IdHash, features: Collection[str]) -> KeyedJaggedTensor:
    """``kjt`` with the values of its keys in ``features`` through ``id_hash``; the other keys' values,
    every key, length and weight as they were (empty lists stay empty)."""
    keys = kjt.keys()
    values = kjt.values().clone()
    offsets = kjt.offset_per_key()
    for i, key in enumerate(keys):
        if key in features:
            values[offsets[i] : offsets[i + 1]] = id_hash(values[offsets[i] : offsets[i + 1]])
    return KeyedJaggedTensor(
        keys=keys, values=values, lengths=kjt.lengths(), weights=kjt.weights_or_none(), stride=kjt.stride()
    )


def hash_batch(batch: Batch, id_hash: IdHash, features: tuple[str, ...]) -> Batch:
    """``batch`` with the values of its sparse features ``features`` hashed (``hashed_features``)."""
    return dataclasses.replace(batch, sparse=hashed_features(batch.sparse, id_hash, features))


@dataclass
class StoreInputs:
    """What STORE and its ID twin read from a batch (``store_inputs``)."""

    static_tables: list[Table]
    """One mean-pooled table ``t_<f>`` per low-cardinality static feature, in spec order."""
    groups: dict[str, list[str]]
    """The G static feature groups {group: features}; their features are those of static_tables."""
    tokenized: list[str]
    """The F tokenized features, in token order (the item first)."""
    token_tables: list[Table]
    """STORE: K SID codebooks per tokenized feature (``t_sid<k>`` for the item, ``t_<f>_sid<k>``; C
    rows), serving ``<f>_sid<k>`` of ``batch.sid``. ID: one raw-ID table per tokenized feature, in
    token order (``t_item`` for every item-valued feature, ``t_<f>``), serving ``batch.sparse``."""
    num_tokens: int
    """K: tokens per tokenized feature (STORE: SIDs per ID)."""
    sid_tokens: bool
    """True: token_tables are SID codebooks (STORE); False: raw-ID tables, each embedding projected into
    K tokens (ID)."""
    history: list[HistoryFeature]
    """The H item-valued features other than the target item."""
    num_dense: int
    """Dense features (one more static group when > 0)."""


def sid_table_name(feature: str, k: int, item_feature: str) -> str:
    """STORE's codebook table of the k-th SID of tokenized feature ``feature``."""
    return f"t_sid{k}" if feature == item_feature else f"t_{feature}_sid{k}"


class SidTokens(nn.Module):
    """Tokenized features through their SID codebooks, read from ``batch.sid``: table t_sid<k> (C rows)
    serves the k-th SID of every item-valued feature, t_<f>_sid<k> that of high-cardinality feature f.

    pooled=True (history pooled into one token): an EmbeddingBagCollection, mean-pooled; a history
    token is then sum_k mean_items E_k[code_k(item)], which equals the mean over items of their
    summed SID embeddings. pooled=False (one token per history item): an EmbeddingCollection.
    """

    def __init__(
        self,
        tables: list[Table],
        num_sids: int,
        lengths: dict[str, int],
        dim: int,
        pooled: bool,
        device: torch.device | None,
    ) -> None:
        super().__init__()
        self.num_sids = num_sids
        self.lengths = lengths  # {history feature: HistoryFeature.max_len}
        self.pooled = pooled
        self.ec = item_collection(tables, dim, pooled, device)
        # It reads batch.sid, which holds exactly its features: the trainer may replicate it.
        setattr(self.ec, EXCLUSIVE_INPUT, True)

    def lookup(self, batch: Batch):
        if batch.sid is None:
            raise ValueError("STORE needs batches passed through SidTable.transform (batch.sid is None)")
        out = self.ec(batch.sid)
        return out.to_dict() if self.pooled else out

    def _parts(self, jts, feature: str) -> list:
        return [jts[sid_feature_name(feature, k)] for k in range(self.num_sids)]

    def feature_tokens(self, jts, feature: str) -> torch.Tensor:
        """(B, K, D): the K SID embeddings of a tokenized feature's ID (the target item's for the item)."""
        parts = self._parts(jts, feature)
        if self.pooled:
            return torch.stack(parts, dim=1)
        return torch.stack([padded(jt, 1)[0][:, 0] for jt in parts], dim=1)

    def history(self, jts, feature: str) -> torch.Tensor:
        """(B, D): the history's mean item embedding (an item's is the sum of its K SID embeddings)."""
        if self.pooled:
            return torch.stack(self._parts(jts, feature), dim=0).sum(0)
        return masked_mean(*self.sequence(jts, feature))

    def sequence(self, jts, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) history item embeddings (sum over the K SIDs), valid (B, L)."""
        per_sid, valid = self._sid_grid(jts, feature)
        return per_sid.sum(2), valid

    def sid_sequence(self, jts, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L*K, D): the K SID embeddings of every history item, item after item; valid (B, L*K)."""
        per_sid, valid = self._sid_grid(jts, feature)  # (B, L, K, D), (B, L)
        b, length, k, d = per_sid.shape
        return per_sid.reshape(b, length * k, d), valid.repeat_interleave(k, dim=1)

    def _sid_grid(self, jts, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, K, D) SID embeddings of the history items, valid (B, L)."""
        parts = self._parts(jts, feature)
        length = sequence_length(self.lengths[feature], parts[0])
        dense = [padded(jt, length) for jt in parts]
        return torch.stack([d for d, _ in dense], dim=2), dense[0][1]


class RawTokens(nn.Module):
    """Tokenized features through raw-ID tables (t_item for every item-valued feature, t_<f> for
    high-cardinality feature f), each feature's embedding projected into K tokens.

    pooled=True: an EmbeddingBagCollection (mean-pooled history); else an EmbeddingCollection.
    ID-hash's tables are the same, with ``IdHash.rows`` rows: its batches come hashed (``hash_transform``).
    """

    def __init__(
        self,
        tables: list[Table],
        tokenized: list[str],
        num_tokens: int,
        lengths: dict[str, int],
        dim: int,
        pooled: bool,
        device: torch.device | None,
        collection: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.lengths = lengths  # {history feature: HistoryFeature.max_len}
        self.pooled = pooled
        # collection: a prebuilt one over ``tables`` (ID-ZCH's managed-collision collection, store.models.zch)
        self.ec = collection if collection is not None else item_collection(tables, dim, pooled, device)
        self.split = nn.ModuleList([nn.Linear(dim, num_tokens * dim) for _ in tables])
        self.index = {f: i for i, f in enumerate(tokenized)}  # tables are in token order
        self.table_index = {f: i for i, t in enumerate(tables) for f in t.features}  # batch feature -> table

    def lookup(self, batch: Batch):
        out = self.ec(batch.sparse)
        return out.to_dict() if self.pooled else out

    def feature_tokens(self, jts, feature: str) -> torch.Tensor:
        """(B, K, D): the feature's raw-ID embedding through its own Linear(D, K*D)."""
        jt = jts[feature]
        emb = jt if self.pooled else padded(jt, 1)[0][:, 0]  # (B, D)
        return self.split[self.index[feature]](emb).view(emb.shape[0], self.num_tokens, -1)

    def history(self, jts, feature: str) -> torch.Tensor:
        """(B, D): the history's mean item embedding."""
        return jts[feature] if self.pooled else masked_mean(*self.sequence(jts, feature))

    def sequence(self, jts, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
        jt = jts[feature]
        return padded(jt, sequence_length(self.lengths[feature], jt))

    def sid_sequence(self, jts, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L*K, D): every history item's raw-ID embedding through its table's Linear(D, K*D) (the
        target item's split for item-valued features), item after item; valid (B, L*K)."""
        seq, valid = self.sequence(jts, feature)  # (B, L, D), (B, L)
        b, length, d = seq.shape
        tokens = self.split[self.table_index[feature]](seq).view(b, length * self.num_tokens, d)
        return tokens, valid.repeat_interleave(self.num_tokens, dim=1)


class StoreModel(nn.Module):
    """STORE with SID codebook tokens (``inputs.sid_tokens``), else the ID-based twin.

    forward(batch) -> ModelOutput (logits (B,)).
    """

    def __init__(
        self,
        inputs: StoreInputs,
        cfg: ModelConfig,
        device: torch.device | None = None,
        items: nn.Module | None = None,
    ) -> None:
        """``items``: a prebuilt token module replacing the one built from ``inputs.token_tables`` (the
        hybrid arm's ``HybridTokens``, ``store.models.sid_arms``; ID-ZCH's ``ZchTokens``)."""
        super().__init__()
        d = cfg.embedding_dim
        self.cfg = cfg
        pooled = not cfg.history_tokens  # the history is pooled: bags, not sequences
        k = inputs.num_tokens
        lengths = {f.name: f.max_len for f in inputs.history}
        self.items: nn.Module | None = None  # no tokenized feature (e.g. --drop item_id, nothing else high)
        if items is not None:
            self.items = items
        elif inputs.sid_tokens and inputs.token_tables:
            self.items = SidTokens(inputs.token_tables, k, lengths, d, pooled, device)
        elif inputs.token_tables:
            self.items = RawTokens(inputs.token_tables, inputs.tokenized, k, lengths, d, pooled, device)
        self.num_item_tokens = k
        self.tokenized = list(inputs.tokenized)
        self.static = StaticEmbedder(inputs.static_tables, d, device)
        self.groups = inputs.groups
        self.group_mlps = nn.ModuleDict(
            {g: _shallow_mlp(len(cols) * d, d) for g, cols in self.groups.items()}
        )
        if inputs.num_dense:
            self.group_mlps[DENSE_GROUP] = _shallow_mlp(inputs.num_dense, d)
        num_groups = len(self.group_mlps)
        self.rotation = None
        if cfg.rotation and num_groups:
            self.num_rotations = cfg.num_rotations or k
            self.rotation = OrthogonalRotation(
                num_groups * d, d, self.num_rotations, cfg.orthogonal_parametrization
            )
            num_static = self.num_rotations
        else:
            num_static = num_groups
        self.history = inputs.history
        self.num_fixed_tokens = (
            k * len(self.tokenized) + num_static + (0 if cfg.history_tokens else len(self.history))
        )
        attention = dict(
            block_size=cfg.moba_block_size,
            sparsity=cfg.moba_sparsity,
            vanilla=cfg.vanilla_attention,
            gating=cfg.moba_gating,
            query_block_size=cfg.moba_query_block_size,
            kernel="gather" if cfg.moba_gather else cfg.moba_kernel,
        )
        self.encoder = TransformerEncoder(
            cfg.num_layers, d, cfg.num_heads, cfg.ffn_mult, cfg.dropout, **attention
        )
        self.head = Head((self.num_fixed_tokens + 1) * d, cfg.mlp_dims, cfg.dropout)

    def tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Input tokens (B, T, D) and their valid mask (B, T), before the attention layers."""
        jts = self.items.lookup(batch) if self.items is not None else {}
        pooled = self.static(batch.sparse)
        parts = [self.items.feature_tokens(jts, f) for f in self.tokenized]
        outs = []
        for g, cols in self.groups.items():
            outs.append(self.group_mlps[g](torch.cat([pooled[f] for f in cols], dim=1)))
        if DENSE_GROUP in self.group_mlps:
            outs.append(self.group_mlps[DENSE_GROUP](batch.dense))
        if outs:
            parts.append(
                self.rotation(torch.cat(outs, 1)) if self.rotation is not None else torch.stack(outs, 1)
            )
        fixed = torch.cat(parts, dim=1)  # (B, K * tokenized + static tokens, D)
        valid = [torch.ones_like(fixed[..., 0], dtype=torch.bool)]  # (B, fixed tokens); fx-traceable
        tokens = [fixed]
        for f in self.history:
            if self.cfg.history_tokens:
                read = self.items.sid_sequence if self.cfg.history_sid_tokens else self.items.sequence
                seq, seq_valid = read(jts, f.name)  # (B, L or L*K, D), (B, L or L*K)
                tokens.append(seq)
                valid.append(seq_valid)
            else:
                tokens.append(self.items.history(jts, f.name).unsqueeze(1))
                valid.append(valid[0][:, :1])
        return torch.cat(tokens, dim=1), torch.cat(valid, dim=1)

    def forward(self, batch: Batch) -> ModelOutput:
        x, valid = self.tokens(batch)
        key_valid = valid if self.cfg.history_tokens else None  # no padding without history tokens
        x = self.encoder(x, key_valid)
        fixed = x[:, : self.num_fixed_tokens].flatten(1)
        logits = self.head(torch.cat([fixed, masked_mean(x, valid)], dim=1))
        return ModelOutput(logits=logits, aux_losses=self.aux_losses())

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """diversity = -lambda * sum_{i<j} ||R_i - R_j||_F^2; orthogonality penalty for free R."""
        if self.rotation is None:
            return {}
        out = {"diversity": -self.cfg.diversity_lambda * self.rotation.diversity()}
        if not self.cfg.orthogonal_parametrization:
            out["orthogonality"] = self.cfg.orthogonality_weight * self.rotation.orthogonality_penalty()
        return out


def _shallow_mlp(in_dim: int, dim: int) -> nn.Sequential:
    """One group's encoder: Linear -> ReLU -> Linear to one D-vector."""
    return nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Linear(dim, dim))


# -- inputs from the spec, and the two specs --------------------------------------------------------
def store_inputs(
    spec: DatasetSpec,
    feature_groups: str,
    sids: SidTable | None,
    num_tokens: int,
    init_std: float = EMBEDDING_INIT_STD,
    hash_rows: int | None = None,
) -> StoreInputs:
    """STORE's inputs when given ``sids`` (its codebooks, ``num_tokens`` = its num_sids), else the ID
    twin's (one raw-ID table per tokenized feature, ``num_tokens`` tokens each; ``hash_rows`` rows each
    when given: ID-hash's hashed tables).

    ``feature_groups``: ``--model.feature_groups`` (see ``resolve_groups``).
    """
    sources = sid_sources(spec)  # {tokenized feature: the batch features that take its codes}
    if sids is not None:
        token_tables = [
            Table(sid_table_name(src, k, spec.item_id), sids.codebook_size,
                  tuple(sid_feature_name(f, k) for f in served), init_std)
            for src, served in sources.items()
            for k in range(sids.num_sids)
        ]  # fmt: skip
    else:
        token_tables = [
            Table(
                RAW_ITEM_TABLE if src == spec.item_id else static_table_name(src),
                hash_rows if hash_rows is not None else spec.table_rows(src),
                tuple(served),
                init_std,
            )
            for src, served in sources.items()
        ]
    return StoreInputs(
        static_tables=static_tables(spec, low_cardinality_features(spec), init_std),
        groups=resolve_groups(spec, feature_groups),
        tokenized=list(spec.high_cardinality),
        token_tables=token_tables,
        num_tokens=num_tokens,
        sid_tokens=sids is not None,
        history=history_inputs(spec),
        num_dense=len(spec.dense),
    )


def resolve_groups(spec: DatasetSpec, feature_groups: str) -> dict[str, list[str]]:
    """Static feature groups: ``feature_groups`` (--model.feature_groups), else the spec's, else one
    group of all.

    Tokenized features (item-valued and high-cardinality) are dropped from groups (they are tokens of
    their own); static features no group names go to an extra group "other"; empty groups are dropped.
    """
    static = low_cardinality_features(spec)
    groups = parse_feature_groups(feature_groups)
    if groups:
        unknown = [f for cols in groups.values() for f in cols if f not in spec.sparse_names]
        if unknown:
            raise ValueError(f"--model.feature_groups names unknown sparse features {unknown}")
    else:
        groups = {g: list(cols) for g, cols in spec.feature_groups.items()}
    groups = {g: [f for f in cols if f in static] for g, cols in groups.items()}
    named = {f for cols in groups.values() for f in cols}
    rest = [f for f in static if f not in named]
    if rest:
        groups["other" if groups else "static"] = rest
    return {g: cols for g, cols in groups.items() if cols}


def build_store(
    spec: DatasetSpec, cfg: ModelConfig, sids: SidTable | None, device: torch.device | None
) -> StoreModel:
    """STORE: the SID table's codebooks, K = its num_sids tokens per tokenized feature."""
    return StoreModel(sid_store_inputs(spec, cfg, sids), cfg, device)


def sid_store_inputs(spec: DatasetSpec, cfg: ModelConfig, sids: SidTable | None) -> StoreInputs:
    """The inputs of a model on SIDs (STORE and its SID arms): the SID table, checked against the
    dataset, gives the codebooks and K = its num_sids tokens per tokenized feature."""
    assert sids is not None  # needs_sids: build_model has checked
    sids.check_fits(spec)
    return store_inputs(spec, cfg.feature_groups, sids, sids.num_sids, cfg.embedding_init_std)


def build_id(
    spec: DatasetSpec, cfg: ModelConfig, sids: SidTable | None, device: torch.device | None
) -> StoreModel:
    """The ID twin: raw-ID tables, each embedding projected into ``--model.id_item_tokens`` tokens (0:
    as many as the SID table has SIDs when ``sids`` is given, else 1)."""
    inputs = store_inputs(spec, cfg.feature_groups, None, _id_tokens(cfg, sids), cfg.embedding_init_std)
    return StoreModel(inputs, cfg, device)


def build_id_hash(
    spec: DatasetSpec, cfg: ModelConfig, sids: SidTable | None, device: torch.device | None
) -> StoreModel:
    """ID-hash: the ID twin (same tokens) with each tokenized feature's raw-ID table cut to
    ``--model.id_hash.rows`` rows; it takes batches whose IDs ``hash_transform`` hashed into them."""
    inputs = store_inputs(
        spec, cfg.feature_groups, None, _id_tokens(cfg, sids), cfg.embedding_init_std, cfg.id_hash.rows
    )
    return StoreModel(inputs, cfg, device)


def _id_tokens(cfg: ModelConfig, sids: SidTable | None) -> int:
    return cfg.id_item_tokens or (sids.num_sids if sids is not None else 1)


def sid_transform(
    spec: DatasetSpec, cfg: ModelConfig, sids: SidTable | None, train: bool
) -> Callable[[Batch], Batch]:
    """STORE's batch transform: ``sids.transform`` (the tokenized features moved to SIDs; a train
    batch's rows to their out-of-fold SIDs where the table has them)."""
    assert sids is not None  # needs_sids: batch_transform has checked
    return functools.partial(sids.transform, spec=spec, train=train)


def hash_transform(
    spec: DatasetSpec, cfg: ModelConfig, sids: SidTable | None, train: bool
) -> Callable[[Batch], Batch]:
    """ID-hash's batch transform: the values of every feature its raw-ID tables serve (the tokenized
    features, item-valued ones included) through ``IdHash`` of ``--model.id_hash.*``
    (``hash_batch``); the static features keep their IDs."""
    features = tuple(f for served in sid_sources(spec).values() for f in served)
    return functools.partial(
        hash_batch, id_hash=IdHash.from_seed(cfg.id_hash.rows, cfg.id_hash.seed), features=features
    )


SPECS = (
    ModelSpec("store", build_store, needs_sids=True, transform=sid_transform, flops=store_flops),
    ModelSpec("id", build_id, flops=store_flops),
    ModelSpec(
        "id-hash",
        build_id_hash,
        config=IdHashConfig,
        transform=hash_transform,
        budget="rows",
        flops=store_flops,
    ),
)
