"""DNN baseline: every field's embedding concatenated, then an MLP.

Shape letters: B batch, F fields (sparse features + one for the dense features), D embedding width.
"""

from __future__ import annotations

import torch
from torch import nn

from data_pipeline.batch import Batch
from data_pipeline.spec import DatasetSpec
from store.models.config import ModelConfig
from store.models.layers import FieldEmbedder, Head, ModelOutput


class DNN(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) = MLP(fields (B, F * D))."""

    def __init__(self, spec: DatasetSpec, cfg: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.fields = FieldEmbedder(spec, cfg.embedding_dim, device)
        self.head = Head(self.fields.num_fields * cfg.embedding_dim, cfg.mlp_dims, cfg.dropout)

    def rotation_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, batch: Batch) -> ModelOutput:
        fields, _ = self.fields(batch)  # (B, F, D)
        return ModelOutput(logits=self.head(fields.flatten(1)))
