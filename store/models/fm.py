"""FM baseline (Rendle 2010, "Factorization Machines"): a bias, a weight per ID and a factorised
pairwise interaction between every two sparse fields.

Shape letters: B batch, F sparse fields, D embedding width (the factor size k of the paper).

    logit = bias + sum_i w_i + w_dense . x_dense + sum_{f<g} <v_f, v_g>

The first-order weights w_i are FieldEmbedder's narrow ``<table>_w`` tables, each weight the mean of
its row (as in ``store.models.widedeep``: it then learns at ``--optim.sparse_lr``); the dense features enter
the linear part only, as in DeepFM's FM they are not an FM field (a dense vector has no factor per
ID). No hyper-parameter of its own: D is ``--model.embedding_dim``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from data_pipeline.batch import Batch
from store.models.deepfm import factorization_machine
from store.models.layers import FieldEmbedder, FieldInputs, ModelOutput


@dataclass
class FMConfig:
    """FM's hyper-parameters (``store.models.zoo.build_model`` fills them from ``--model.*``)."""

    embedding_dim: int
    """D: the factor size of every ID."""


class FM(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) = bias + first order + dense linear + FM(sparse fields)."""

    def __init__(self, inputs: FieldInputs, cfg: FMConfig, device: torch.device | None = None) -> None:
        super().__init__()
        # The sparse fields only: the dense features get a weight each below, not a factor.
        sparse = dataclasses.replace(inputs, num_dense=0)
        self.fields = FieldEmbedder(sparse, cfg.embedding_dim, device, first_order=True)
        self.dense = nn.Linear(inputs.num_dense, 1, bias=False) if inputs.num_dense else None
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> ModelOutput:
        fields, first_order = self.fields(batch)  # (B, F, D), (B,): the sum of every ID's weight row
        logits = self.bias + first_order + factorization_machine(fields)
        if self.dense is not None:
            logits = logits + self.dense(batch.dense).squeeze(-1)
        return ModelOutput(logits=logits)
