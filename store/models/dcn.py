"""DCN-v2 baseline (Wang et al. 2021): full-rank cross network in parallel with a deep MLP.

Shape letters: B batch, F fields, D embedding width, N = F * D.
Cross layer (TorchRec's ``CrossNet``): x_{l+1} = x_0 * (W_l x_l + b_l) + x_l with W_l (N, N).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torchrec.modules.crossnet import CrossNet

from data_pipeline.batch import Batch
from store.models.inputs import on_fields
from store.models.layers import FieldEmbedder, FieldInputs, ModelOutput, mlp
from store.models.registry import ModelSpec, flag_error

if TYPE_CHECKING:
    from store.models.config import ModelConfig


@dataclass
class DCNConfig:
    """DCN-v2's own hyper-parameters (--model.dcn.*; the deep tower is --model.mlp_dims)."""

    cross_layers: int = 3
    """Full-rank cross layers."""

    def validate(self, model: ModelConfig) -> None:
        if self.cross_layers < 0:
            raise flag_error("dcn.cross_layers", self.cross_layers, "must be >= 0")


class DCN(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) = Linear([CrossNet(x0), MLP(x0)]), x0 (B, N)."""

    def __init__(self, inputs: FieldInputs, cfg: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.fields = FieldEmbedder(inputs, cfg.embedding_dim, device)
        n = self.fields.num_fields * cfg.embedding_dim
        self.cross = CrossNet(in_features=n, num_layers=cfg.dcn.cross_layers)
        self.deep = mlp(n, cfg.mlp_dims, cfg.dropout)
        self.out = nn.Linear(n + cfg.mlp_dims[-1], 1)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, _ = self.fields(batch)
        x0 = fields.flatten(1)  # (B, N)
        return ModelOutput(logits=self.out(torch.cat([self.cross(x0), self.deep(x0)], dim=1)).squeeze(-1))


SPEC = ModelSpec("dcn", on_fields(DCN), config=DCNConfig)
