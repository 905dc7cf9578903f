"""OneTrans-like baseline (Zhang et al. 2025): one transformer over sequence and non-sequence tokens.

Shape letters: B batch, N non-sequential tokens (one per static feature, the target item, and the
dense features), L history length (summed over history features), T = N + L, D width.

Non-sequential (NS) tokens: each static feature's pooled embedding (EmbeddingBagCollection), the
target item's raw-ID embedding and a projection of the dense features. Sequential (S) tokens: every
history item's raw-ID embedding (EmbeddingCollection, table t_item shared with the target item).
Mixed parameterisation as in OneTrans, simplified: attention weights are shared by all tokens; the
FFN is shared by the S tokens and token-specific for each NS token. Attention is dense and
non-causal with padded history masked. As in OneTrans's pyramid, the last layer keeps only the NS
tokens (the S tokens serve as keys/values there); the head reads those NS tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from data_pipeline.batch import Batch
from store.models.attention import TokenAttention
from store.models.inputs import on_fields
from store.models.layers import (
    FieldInputs,
    Head,
    ModelOutput,
    StaticEmbedder,
    TokenwiseLinear,
    padded,
    sequence_collection,
    sequence_length,
)
from store.models.registry import ModelSpec

if TYPE_CHECKING:
    from store.models.config import ModelConfig


class OneTransLayer(nn.Module):
    """forward(x (B, T, D) with the N NS tokens first, key_valid (B, T)) -> (B, T, D), or (B, N, D)
    with ``last`` (only the NS tokens go on)."""

    def __init__(self, num_ns: int, dim: int, cfg: ModelConfig, last: bool = False) -> None:
        super().__init__()
        self.num_ns, self.last = num_ns, last
        self.attn = TokenAttention(dim, cfg.num_heads, vanilla=True, dropout=cfg.dropout)
        self.norm1 = nn.LayerNorm(dim)
        hidden = cfg.ffn_mult * dim
        self.ns_in, self.ns_out = TokenwiseLinear(num_ns, dim, hidden), TokenwiseLinear(num_ns, hidden, dim)
        self.s_ffn = (
            None if last else nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        )
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(self.drop(self.attn(x, key_valid)) + x)
        if self.last:
            x = x[:, : self.num_ns]
        ns, s = x[:, : self.num_ns], x[:, self.num_ns :]
        ffn = self.ns_out(F.gelu(self.ns_in(ns)))
        if self.s_ffn is not None:
            ffn = torch.cat([ffn, self.s_ffn(s)], dim=1)
        return self.norm2(self.drop(ffn) + x)


class OneTransStack(nn.Module):
    """The layers, as one module (one leaf for TorchRec's pipeline tracer).

    forward(x (B, N + L, D), key_valid (B, N + L) or None) -> NS tokens (B, N, D).
    """

    def __init__(self, num_ns: int, dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        n = cfg.num_layers
        self.layers = nn.ModuleList([OneTransLayer(num_ns, dim, cfg, last=i == n - 1) for i in range(n)])
        self.num_ns = num_ns

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, key_valid)
        return x[:, : self.num_ns]


class OneTrans(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,)."""

    def __init__(self, inputs: FieldInputs, cfg: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        if inputs.item_table is None:
            raise ValueError("model 'onetrans' needs an item column (its target-item token)")
        d = cfg.embedding_dim
        self.item_feature = inputs.item_feature
        self.static_names = [f for t in inputs.static_tables for f in t.features]
        self.history = inputs.history
        self.static = StaticEmbedder(inputs.static_tables, d, device)
        self.items = sequence_collection([inputs.item_table], d, device)
        self.dense = nn.Linear(inputs.num_dense, d) if inputs.num_dense else None
        self.num_ns = len(self.static_names) + 1 + (1 if inputs.num_dense else 0)
        self.stack = OneTransStack(self.num_ns, d, cfg)
        self.head = Head(self.num_ns * d, cfg.mlp_dims, cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.static(batch.sparse)
        jts = self.items(batch.sparse)
        ns = [pooled[f] for f in self.static_names] + [padded(jts[self.item_feature], 1)[0][:, 0]]
        if self.dense is not None:
            ns.append(self.dense(batch.dense))
        tokens = [torch.stack(ns, dim=1)]  # (B, N, D)
        valid = [torch.ones(tokens[0].shape[:2], dtype=torch.bool, device=tokens[0].device)]
        for f in self.history:
            seq, seq_valid = padded(jts[f.name], sequence_length(f.max_len, jts[f.name]))
            tokens.append(seq)
            valid.append(seq_valid)
        x = torch.cat(tokens, dim=1)  # (B, T, D)
        key_valid = torch.cat(valid, dim=1) if self.history else None
        return ModelOutput(logits=self.head(self.stack(x, key_valid).flatten(1)))


SPEC = ModelSpec("onetrans", on_fields(OneTrans))
