"""GDCN baseline (Wang et al. 2023, "Towards Deeper, Lighter and Interpretable Cross Network for CTR
Prediction", CIKM): DCN-v2's cross network with an information gate on every cross layer, in
parallel with a deep MLP (the paper's GDCN-P).

Shape letters: B batch, F fields, D embedding width, N = F * D.

Gated cross layer l:

    c_{l+1} = c_0 * (W_c c_l + b) * sigmoid(W_g c_l) + c_l        W_c, W_g (N, N)

The gate learns how much of each cross feature of order l + 2 to keep, which is what lets GDCN stack
deeper cross networks than DCN-v2 without the noisy high-order crosses drowning the useful ones.

Defaults: ``--model.gdcn.cross_layers`` gated cross layers (3, the official code's default) beside the
``--model.mlp_dims`` MLP; both read x_0 and a linear layer ``out`` reads [c_L, MLP(x_0)]. The paper's
field-level dimension optimisation (a different D per field) is not applied: every field is D wide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from data_pipeline.batch import Batch
from store.models.flops import linear_model_flops
from store.models.inputs import on_fields
from store.models.layers import FieldEmbedder, FieldInputs, ModelOutput, mlp
from store.models.registry import ModelSpec, flag_error

if TYPE_CHECKING:
    from store.models.config import ModelConfig


@dataclass
class GDCNConfig:
    """GDCN's own hyper-parameters (--model.gdcn.*; the deep tower is --model.mlp_dims)."""

    cross_layers: int = 3
    """Gated cross layers."""

    def validate(self, model: ModelConfig) -> None:
        if self.cross_layers < 0:
            raise flag_error("gdcn.cross_layers", self.cross_layers, "must be >= 0")


class GatedCrossLayer(nn.Module):
    """forward(x0 (B, N), x (B, N)) -> (B, N) = x0 * (W_c x + b) * sigmoid(W_g x) + x."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.cross = nn.Linear(dim, dim)  # W_c, b
        self.gate = nn.Linear(dim, dim, bias=False)  # W_g

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.cross(x) * torch.sigmoid(self.gate(x)) + x


class GDCN(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) = out([GatedCross^L(x0), MLP(x0)]), x0 (B, N)."""

    def __init__(self, inputs: FieldInputs, cfg: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.fields = FieldEmbedder(inputs, cfg.embedding_dim, device)
        n = self.fields.num_fields * cfg.embedding_dim
        self.cross = nn.ModuleList(GatedCrossLayer(n) for _ in range(cfg.gdcn.cross_layers))
        self.deep = mlp(n, cfg.mlp_dims, cfg.dropout)
        self.out = nn.Linear(n + cfg.mlp_dims[-1], 1)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, _ = self.fields(batch)
        x0 = fields.flatten(1)  # (B, N)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return ModelOutput(logits=self.out(torch.cat([x, self.deep(x0)], dim=1)).squeeze(-1))


SPEC = ModelSpec("gdcn", on_fields(GDCN), config=GDCNConfig, flops=linear_model_flops)
