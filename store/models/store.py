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

then L layers X = LN(Attn(X) + X), X = LN(FFN(X) + X) with MoBA (or dense) attention, and a head
over [the fixed tokens flattened, the mean of all real tokens].

Sparse lookups: one EmbeddingBagCollection (static features, mean pooled) and one collection for
the tokenized features (``items.ec``): mean-pooled bags when the history is pooled into one token
(the default; the pooled lookup is the history token), an EmbeddingCollection (per position) with
history_tokens=True. For STORE the batch must already be transformed by ``SidTable.transform``
(tokenized features moved to ``batch.sid`` as ``<f>_sid<k>``, item-valued ones through the item's
codes), and the SID collection reads ``batch.sid`` only, so the trainer can replicate it. For ID the
raw batch is used; t_item serves every item-valued feature.
"""

from __future__ import annotations

import torch
from torch import nn

from data_pipeline.batch import Batch
from data_pipeline.spec import DatasetSpec
from store.models.attention import TransformerEncoder
from store.models.config import ModelConfig, parse_feature_groups
from store.models.layers import (
    EXCLUSIVE_INPUT,
    RAW_ITEM_TABLE,
    Head,
    ModelOutput,
    StaticEmbedder,
    history_features,
    item_collection,
    low_cardinality_features,
    masked_mean,
    num_item_rows,
    padded,
    sequence_length,
    static_table_name,
)
from store.models.rotation import OrthogonalRotation
from store.sid import SidTable, sid_feature_name, sid_sources

DENSE_GROUP = "dense"


def resolve_groups(spec: DatasetSpec, cfg: ModelConfig) -> dict[str, list[str]]:
    """Static feature groups: --model.feature_groups, else the spec's, else one group of all.

    Tokenized features (item-valued and high-cardinality) are dropped from groups (they are tokens of
    their own); static features no group names go to an extra group "other"; empty groups are dropped.
    """
    static = low_cardinality_features(spec)
    groups = parse_feature_groups(cfg.feature_groups)
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


class SidTokens(nn.Module):
    """Tokenized features through their SID codebooks, read from ``batch.sid``: table t_sid<k> (C rows)
    serves the k-th SID of every item-valued feature, t_<f>_sid<k> that of high-cardinality feature f.

    pooled=True (history pooled into one token): an EmbeddingBagCollection, mean-pooled; a history
    token is then sum_k mean_items E_k[code_k(item)], which equals the mean over items of their
    summed SID embeddings. pooled=False (one token per history item): an EmbeddingCollection.
    """

    def __init__(
        self, spec: DatasetSpec, sids: SidTable, dim: int, pooled: bool, device: torch.device | None
    ) -> None:
        super().__init__()
        self.spec = spec
        self.num_sids = sids.num_sids
        self.pooled = pooled
        tables = [
            (sid_table_name(spec, src, k), sids.codebook_size, [sid_feature_name(f, k) for f in served])
            for src, served in sid_sources(spec).items()
            for k in range(sids.num_sids)
        ]
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
        parts = self._parts(jts, feature)
        length = sequence_length(self.spec, feature, parts[0])
        dense = [padded(jt, length) for jt in parts]
        return torch.stack([d for d, _ in dense], dim=2).sum(2), dense[0][1]


class RawTokens(nn.Module):
    """Tokenized features through raw-ID tables (t_item for every item-valued feature, t_<f> for
    high-cardinality feature f), each feature's embedding projected into K tokens.

    pooled=True: an EmbeddingBagCollection (mean-pooled history); else an EmbeddingCollection.
    """

    def __init__(
        self, spec: DatasetSpec, num_tokens: int, dim: int, pooled: bool, device: torch.device | None
    ) -> None:
        super().__init__()
        self.spec = spec
        self.num_tokens = num_tokens
        self.pooled = pooled
        tables = [
            (RAW_ITEM_TABLE, num_item_rows(spec), served)
            if src == spec.item_id
            else (static_table_name(src), spec.feature(src).vocab_size, served)
            for src, served in sid_sources(spec).items()
        ]
        self.ec = item_collection(tables, dim, pooled, device)
        self.split = nn.ModuleList([nn.Linear(dim, num_tokens * dim) for _ in tables])
        self.index = {src: i for i, src in enumerate(sid_sources(spec))}

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
        return padded(jt, sequence_length(self.spec, feature, jt))


def sid_table_name(spec: DatasetSpec, feature: str, k: int) -> str:
    """STORE's codebook table of the k-th SID of tokenized feature ``feature``."""
    return f"t_sid{k}" if feature == spec.item_id else f"t_{feature}_sid{k}"


class StoreModel(nn.Module):
    """STORE when given a SidTable, else the ID-based twin. forward(batch) -> ModelOutput (logits (B,))."""

    def __init__(
        self,
        spec: DatasetSpec,
        cfg: ModelConfig,
        sids: SidTable | None,
        device: torch.device | None = None,
        num_item_tokens: int = 1,
    ) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.spec, self.cfg = spec, cfg
        pooled = not cfg.history_tokens  # the history is pooled: bags, not sequences
        if sids is not None:
            self.items: nn.Module = SidTokens(spec, sids, d, pooled, device)
            k = sids.num_sids
        else:
            self.items = RawTokens(spec, num_item_tokens, d, pooled, device)
            k = num_item_tokens
        self.num_item_tokens = k
        self.tokenized = list(spec.high_cardinality)
        self.static = StaticEmbedder(spec, d, device, features=low_cardinality_features(spec))
        self.groups = resolve_groups(spec, cfg)
        self.group_mlps = nn.ModuleDict(
            {g: _shallow_mlp(len(cols) * d, d) for g, cols in self.groups.items()}
        )
        if spec.dense:
            self.group_mlps[DENSE_GROUP] = _shallow_mlp(len(spec.dense), d)
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
        self.history = history_features(spec)
        self.num_fixed_tokens = (
            k * len(self.tokenized) + num_static + (0 if cfg.history_tokens else len(self.history))
        )
        attention = dict(
            block_size=cfg.moba_block_size,
            sparsity=cfg.moba_sparsity,
            vanilla=cfg.vanilla_attention,
            gather=cfg.moba_gather,
        )
        self.encoder = TransformerEncoder(
            cfg.num_layers, d, cfg.num_heads, cfg.ffn_mult, cfg.dropout, **attention
        )
        self.head = Head((self.num_fixed_tokens + 1) * d, cfg.mlp_dims, cfg.dropout)

    def rotation_parameters(self) -> list[nn.Parameter]:
        return [] if self.rotation is None else self.rotation.rotation_parameters()

    def tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Input tokens (B, T, D) and their valid mask (B, T), before the attention layers."""
        jts = self.items.lookup(batch)
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
                seq, seq_valid = self.items.sequence(jts, f)
                tokens.append(seq)
                valid.append(seq_valid)
            else:
                tokens.append(self.items.history(jts, f).unsqueeze(1))
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
