"""Wide & Deep baseline (Cheng et al. 2016, "Wide & Deep Learning for Recommender Systems"): a wide
linear model over the sparse features trained jointly with a deep MLP over their embeddings.

Shape letters: B batch, F fields (sparse features + one for the dense features), D embedding width.

    logit = sum_i w_i (wide: a weight per sparse ID) + MLP(fields (B, F * D)) (deep, its output layer
            holding the one bias)

As in the paper the dense features feed the deep part only. The paper's wide part also takes
hand-picked cross-product transformations (e.g. AND(installed_app, impression_app)); they are
dataset-specific feature engineering and are left out, so the wide part is the first-order term.
The paper trains the wide part with FTRL + L1 and the deep part with AdaGrad; here the wide weights
are embedding rows and take ``--optim.sparse`` like every table. Each weight is the *mean* of its
FIRST_ORDER_WIDTH-wide row (FieldEmbedder's first-order term; the width is FBGEMM's minimum), so that it
moves at ``--optim.sparse_lr`` like a 1-wide weight: with the sum, row-wise AdaGrad moves every column
by the learning rate and the weight by FIRST_ORDER_WIDTH times it, and on MovieLens-100K the per-ID
weights then overfit (test AUC 0.701 against 0.710 with the mean, seed 0). Deep sizes: ``--model.mlp_dims``
(the paper's 1024-512-256 is far larger than these datasets need).
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


class WideDeep(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) = wide (first order) + deep MLP(fields)."""

    def __init__(self, inputs: FieldInputs, cfg: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.fields = FieldEmbedder(inputs, cfg.embedding_dim, device, first_order=True)
        self.head = Head(self.fields.num_fields * cfg.embedding_dim, cfg.mlp_dims, cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, first_order = self.fields(batch)  # (B, F, D), (B,): the sum of every ID's weight row
        wide = first_order  # each weight the mean of its row (module docstring)
        return ModelOutput(logits=wide + self.head(fields.flatten(1)))


SPEC = ModelSpec("widedeep", on_fields(WideDeep), flops=linear_model_flops)
