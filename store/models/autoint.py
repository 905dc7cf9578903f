"""AutoInt baseline (Song et al. 2019): multi-head self-attention across feature fields.

Shape letters: B batch, F fields, D embedding width.
Each layer: X = ReLU(MHA(X) + X W_res), then logits = Linear(flatten(X)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from data_pipeline.batch import Batch
from store.models.layers import FieldEmbedder, FieldInputs, ModelOutput


@dataclass
class AutoIntConfig:
    """AutoInt's hyper-parameters (``store.models.zoo.build_model`` fills them from ``--model.*``)."""

    embedding_dim: int
    """D: width of every field."""
    num_layers: int
    """Self-attention layers over the fields."""
    num_heads: int
    """Heads per self-attention layer; divides D."""
    dropout: float
    """Dropout probability in the attention."""


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

    def __init__(self, inputs: FieldInputs, cfg: AutoIntConfig, device: torch.device | None = None) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.fields = FieldEmbedder(inputs, d, device)
        self.layers = nn.Sequential(
            *[InteractingLayer(d, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_layers)]
        )
        self.out = nn.Linear(self.fields.num_fields * d, 1)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, _ = self.fields(batch)  # (B, F, D)
        return ModelOutput(logits=self.out(self.layers(fields).flatten(1)).squeeze(-1))
