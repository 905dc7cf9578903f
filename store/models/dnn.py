"""DNN baseline: every field's embedding concatenated, then an MLP.

Shape letters: B batch, F fields (sparse features + one for the dense features), D embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from data_pipeline.batch import Batch
from store.models.layers import FieldEmbedder, FieldInputs, Head, ModelOutput


@dataclass
class DNNConfig:
    """DNN's hyper-parameters (``store.models.zoo.build_model`` fills them from ``--model.*``)."""

    embedding_dim: int
    """D: width of every field."""
    mlp_dims: tuple[int, ...]
    """Hidden sizes of the MLP."""
    dropout: float
    """Dropout probability in the MLP."""


class DNN(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) = MLP(fields (B, F * D))."""

    def __init__(self, inputs: FieldInputs, cfg: DNNConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.fields = FieldEmbedder(inputs, cfg.embedding_dim, device)
        self.head = Head(self.fields.num_fields * cfg.embedding_dim, cfg.mlp_dims, cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, _ = self.fields(batch)  # (B, F, D)
        return ModelOutput(logits=self.head(fields.flatten(1)))
