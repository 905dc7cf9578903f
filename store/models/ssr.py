"""SSR baseline (Yu et al. 2026, "Beyond Dense Connectivity: Explicit Sparsity for Scalable
Recommendation", SIGIR, arXiv 2604.08011): each layer splits its input into b parallel *views*,
filters every view down to a few dimensions, then fuses the survivors densely inside the view.

Shape letters: B batch, F fields, D embedding width, N = F * D, b views, d view width,
T competition rounds.

One SSR layer, for every view i (filter, then fuse):

    h_i = Filter_i(x)                         (B, d)   dimension-level sparse filtering
    z_i = LN(GELU(h_i V_i + c_i))             (B, d)   intra-view dense fusion, V_i (d, d)

and the views are joined: concatenated (B, b * d) between layers, averaged (B, d) after the last
one, which feeds the prediction MLP. A dense layer over N inputs costs N * width; b views of d
cost b * d * d, so capacity grows by adding views without the quadratic cost.

Filters (``--model.ssr.variant``):

- ``static`` (SSR-S, Static Random Filter): view i keeps a fixed random subset of d of the layer's
  input dimensions, drawn once (a seeded generator per layer, so every rank and every rebuild of the
  model draws the same subsets) and spread evenly: consecutive slices of one random permutation of
  the inputs, so each input dimension sits in about b * d / N views ("feature bagging").
- ``dynamic`` (SSR-D, Iterative Competitive Sparse): view i projects x to d values z_i = x W_i and
  lets them compete: x_0 = ReLU(z_i), then T times x_{t+1} = ReLU(x_t - alpha_t * mean(x_t)), so
  every round the dimensions below a fraction of the mean response die (exact zeros) while strong
  ones survive; h_i = gamma * x_T. alpha (T,) and gamma (d,) are learned per view.

Defaults: static filter, b = 4 views of d = 32 dimensions, 2 layers (``--model.ssr.views``,
``--model.ssr.view_dim``, ``--model.ssr.layers``); ICS with T = 5 rounds, alpha starting at 0.1 and
gamma at 1 (the authors' code); prediction MLP ``--model.mlp_dims``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from data_pipeline.batch import Batch
from store.models.flops import linear_model_flops
from store.models.inputs import on_fields
from store.models.layers import FieldEmbedder, FieldInputs, Head, ModelOutput, TokenwiseLinear
from store.models.registry import ModelSpec, flag_error

if TYPE_CHECKING:
    from store.models.config import ModelConfig

ICS_ROUNDS = 5
"""T: competition rounds of the dynamic filter."""
ICS_ALPHA = 0.1
"""Starting extinction rate alpha_t of every round."""
FILTER_SEED = 1000
"""Layer l's static subsets come from a generator seeded FILTER_SEED * (l + 1), independent of the
global seed, so they are the same on every rank and after every rebuild."""


@dataclass
class SSRConfig:
    """SSR's own hyper-parameters (--model.ssr.*; the prediction MLP after the last layer is
    --model.mlp_dims, with --model.dropout)."""

    variant: Literal["static", "dynamic"] = "static"
    """The views' filter: "static" (SSR-S, fixed random dimension subsets) or "dynamic" (SSR-D, iterative
    competitive sparsity)."""
    views: int = 4
    """b: views per layer."""
    view_dim: int = 32
    """d: dimensions each view keeps and fuses."""
    layers: int = 2
    """Filter-then-fuse layers."""

    def validate(self, model: ModelConfig) -> None:
        if self.variant not in ("static", "dynamic"):
            raise flag_error("ssr.variant", self.variant, "must be static or dynamic")
        for name in ("views", "view_dim", "layers"):
            if getattr(self, name) <= 0:
                raise flag_error(f"ssr.{name}", getattr(self, name), "must be > 0")


def static_subsets(in_dim: int, num_views: int, view_dim: int, seed: int) -> torch.Tensor:
    """(num_views, view_dim) input indices: consecutive slices of one random permutation of
    range(in_dim), read cyclically, so every view holds distinct indices (when view_dim <= in_dim)
    and the views cover the inputs evenly."""
    perm = torch.randperm(in_dim, generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(num_views * view_dim) % in_dim
    return perm[positions].view(num_views, view_dim)


class CompetitiveSparse(nn.Module):
    """Iterative Competitive Sparse, per view. forward(z (B, b, d)) -> (B, b, d), exact zeros where
    a dimension lost the competition."""

    def __init__(self, num_views: int, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((num_views, ICS_ROUNDS), ICS_ALPHA))
        self.gamma = nn.Parameter(torch.ones(num_views, dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(z)
        for t in range(ICS_ROUNDS):
            inhibition = self.alpha[:, t, None] * x.mean(-1, keepdim=True)  # (B, b, 1): the mean field
            x = F.relu(x - inhibition)
        return self.gamma * x


class SSRLayer(nn.Module):
    """Filter then fuse, b views. forward(x (B, in_dim)) -> (B, b, d), each view layer-normed."""

    def __init__(self, in_dim: int, cfg: SSRConfig, seed: int) -> None:
        super().__init__()
        b, d = cfg.views, cfg.view_dim
        self.num_views = b
        if cfg.variant == "static":
            # Buffer, not parameter: the subsets never train; rebuilt from the seed, never checkpointed.
            self.register_buffer("subsets", static_subsets(in_dim, b, d, seed), persistent=False)
            self.project, self.compete = None, None
        else:
            self.subsets = None
            self.project = TokenwiseLinear(b, in_dim, d)  # W_i
            self.compete = CompetitiveSparse(b, d)
        self.fuse = TokenwiseLinear(b, d, d)  # V_i, c_i
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.subsets is not None:
            h = x[:, self.subsets]  # (B, b, d): a gather, no FLOPs
        else:
            views = x.unsqueeze(1).expand(-1, self.num_views, -1)  # (B, b, in_dim)
            h = self.compete(self.project(views))  # (B, b, d)
        return self.norm(F.gelu(self.fuse(h)))


class SSR(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) = MLP(mean over views of SSR^L(fields (B, N)))."""

    def __init__(self, inputs: FieldInputs, cfg: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        own: SSRConfig = cfg.ssr
        self.fields = FieldEmbedder(inputs, cfg.embedding_dim, device)
        n, b, d = self.fields.num_fields * cfg.embedding_dim, own.views, own.view_dim
        ins = [n] + [b * d] * (own.layers - 1)
        self.layers = nn.ModuleList(SSRLayer(i, own, FILTER_SEED * (k + 1)) for k, i in enumerate(ins))
        self.head = Head(d, cfg.mlp_dims, cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, _ = self.fields(batch)
        x = fields.flatten(1)  # (B, N)
        for layer in self.layers[:-1]:
            x = layer(x).flatten(1)  # (B, b * d): the views concatenated
        x = self.layers[-1](x).mean(1)  # (B, d): the views averaged after the last layer
        return ModelOutput(logits=self.head(x))


SPEC = ModelSpec("ssr", on_fields(SSR), config=SSRConfig, flops=linear_model_flops)
