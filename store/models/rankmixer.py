"""RankMixer-like baseline (Zhu et al. 2025): parameter-free token mixing + per-token FFNs.

Shape letters: B batch, F fields, D embedding width, T tokens (``--model.rankmixer.tokens``), E = D / T.

Tokenization: the F field embeddings are concatenated (B, F * D), zero-padded and cut into T equal
chunks, each mapped to D by its own linear map. Each layer:
    X = LN(TokenMixing(X) + X)   token t of the output = concat over tokens s of head t of token s
    X = LN(PerTokenFFN(X) + X)   a separate two-layer FFN per token
then mean pooling over tokens and an MLP head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from data_pipeline.batch import Batch
from store.models.inputs import on_fields
from store.models.layers import FieldEmbedder, FieldInputs, Head, ModelOutput, TokenwiseLinear
from store.models.registry import ModelSpec, flag_error

if TYPE_CHECKING:
    from store.models.config import ModelConfig


@dataclass
class RankMixerConfig:
    """RankMixer's own hyper-parameters (--model.rankmixer.*; layers, FFN width, head and dropout are
    --model.num_layers, --model.ffn_mult, --model.mlp_dims, --model.dropout)."""

    tokens: int = 4
    """T: tokens the feature fields are packed into; must divide --model.embedding_dim."""

    def validate(self, model: ModelConfig) -> None:
        if self.tokens <= 0:
            raise flag_error("rankmixer.tokens", self.tokens, "must be > 0")
        if model.embedding_dim % self.tokens:
            raise flag_error(
                "rankmixer.tokens", self.tokens, f"must divide --model.embedding_dim={model.embedding_dim}"
            )


def token_mixing(x: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (B, T, D): split each token into T heads of E = D / T; output t gathers head t of all."""
    b, t, d = x.shape
    return x.view(b, t, t, d // t).transpose(1, 2).reshape(b, t, d)


class RankMixerLayer(nn.Module):
    """forward(x (B, T, D)) -> (B, T, D)."""

    def __init__(self, num_tokens: int, dim: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.ffn_in = TokenwiseLinear(num_tokens, dim, ffn_mult * dim)
        self.ffn_out = TokenwiseLinear(num_tokens, ffn_mult * dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(token_mixing(x) + x)
        return self.norm2(self.drop(self.ffn_out(F.gelu(self.ffn_in(x)))) + x)


class RankMixer(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,)."""

    def __init__(self, inputs: FieldInputs, cfg: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        d, t = cfg.embedding_dim, cfg.rankmixer.tokens
        self.fields = FieldEmbedder(inputs, d, device)
        self.num_tokens = t
        self.chunk = -(-self.fields.num_fields * d // t)
        self.tokenize = TokenwiseLinear(t, self.chunk, d)
        self.layers = nn.Sequential(
            *[RankMixerLayer(t, d, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.num_layers)]
        )
        self.head = Head(d, cfg.mlp_dims, cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, _ = self.fields(batch)
        flat = fields.flatten(1)  # (B, F * D)
        flat = F.pad(flat, (0, self.num_tokens * self.chunk - flat.shape[1]))  # (B, T * chunk)
        x = self.layers(self.tokenize(flat.view(-1, self.num_tokens, self.chunk)))  # (B, T, D)
        return ModelOutput(logits=self.head(x.mean(1)))


SPEC = ModelSpec("rankmixer", on_fields(RankMixer), config=RankMixerConfig)
