"""DNN baseline: every field's embedding concatenated, then an MLP.

Shape letters: B batch, F fields (sparse features + one for the dense features), D embedding width.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from data_pipeline.batch import Batch
from store.models.flops import linear_model_flops
from store.models.inputs import on_fields
from store.models.layers import FieldEmbedder, FieldInputs, Head, ModelOutput
from store.models.registry import ModelSpec

if TYPE_CHECKING:
    from store.models.config import ModelConfig


class DNN(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) = MLP(fields (B, F * D))."""

    def __init__(self, inputs: FieldInputs, cfg: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.fields = FieldEmbedder(inputs, cfg.embedding_dim, device)
        self.head = Head(self.fields.num_fields * cfg.embedding_dim, cfg.mlp_dims, cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, _ = self.fields(batch)  # (B, F, D)
        return ModelOutput(logits=self.head(fields.flatten(1)))


SPEC = ModelSpec("dnn", on_fields(DNN), flops=linear_model_flops)
