"""AutoInt baseline (Song et al. 2019): multi-head self-attention across feature fields.

Shape letters: B batch, F fields, D embedding width.
Each layer: X = ReLU(MHA(X) + X W_res), then logits = Linear(flatten(X)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from data_pipeline.batch import Batch
from store.models.inputs import on_fields
from store.models.layers import FieldEmbedder, FieldInputs, ModelOutput
from store.models.registry import ModelSpec, flag_error

if TYPE_CHECKING:
    from store.models.config import ModelConfig


@dataclass
class AutoIntConfig:
    """AutoInt's own hyper-parameters (--model.autoint.*; its attention dropout is --model.dropout)."""

    layers: int = 2
    """Self-attention layers over the feature fields."""
    heads: int = 2
    """Heads per self-attention layer; must divide --model.embedding_dim."""

    def validate(self, model: ModelConfig) -> None:
        if self.layers < 0:
            raise flag_error("autoint.layers", self.layers, "must be >= 0")
        if self.heads <= 0:
            raise flag_error("autoint.heads", self.heads, "must be > 0")
        if model.embedding_dim % self.heads:
            raise flag_error(
                "autoint.heads", self.heads, f"must divide --model.embedding_dim={model.embedding_dim}"
            )


class InteractingLayer(nn.Module):
    """One AutoInt layer. forward(x (B, F, D)) -> (B, F, D)."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.residual = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.attn(x, x, x, need_weights=False)[0] + self.residual(x))


class AutoInt(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,)."""

    def __init__(self, inputs: FieldInputs, cfg: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.fields = FieldEmbedder(inputs, d, device)
        self.layers = nn.Sequential(
            *[InteractingLayer(d, cfg.autoint.heads, cfg.dropout) for _ in range(cfg.autoint.layers)]
        )
        self.out = nn.Linear(self.fields.num_fields * d, 1)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, _ = self.fields(batch)  # (B, F, D)
        return ModelOutput(logits=self.out(self.layers(fields).flatten(1)).squeeze(-1))


SPEC = ModelSpec("autoint", on_fields(AutoInt), config=AutoIntConfig)
