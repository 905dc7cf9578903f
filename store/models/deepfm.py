"""DeepFM baseline (Guo et al. 2017): first-order term + factorization machine + deep MLP.

Shape letters: B batch, F fields, D embedding width.

The FM term is the standard one, 0.5 * sum_d [(sum_f v_fd)^2 - sum_f v_fd^2], over the sparse fields
only, as in the paper (the dense features' field, a linear map with a bias, feeds the deep tower: as
an FM field it adds a per-row offset that made this DeepFM 0.015-0.03 AUC worse). TorchRec's
``FactorizationMachine`` sums over the flattened F * D inputs, which also crosses different
embedding dimensions, so it is not used here.

Its tables learn at 0.02 by default, not the shared 0.05 (``store.models.zoo.MODEL_SPARSE_LR``: at 0.05
the factors fit the pairwise term in the first epoch; 0.02 was chosen by validation AUC).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from data_pipeline.batch import Batch
from store.models.layers import FieldEmbedder, FieldInputs, Head, ModelOutput


@dataclass
class DeepFMConfig:
    """DeepFM's hyper-parameters (``store.models.zoo.build_model`` fills them from ``--model.*``)."""

    embedding_dim: int
    """D: width of every field (the FM's factor size)."""
    mlp_dims: tuple[int, ...]
    """Hidden sizes of the deep tower."""
    dropout: float
    """Dropout probability in the deep tower."""


def factorization_machine(fields: torch.Tensor) -> torch.Tensor:
    """Pairwise interactions sum_{f<g} <v_f, v_g> of fields (B, F, D) -> (B,)."""
    square_of_sum = fields.sum(1).pow(2)
    sum_of_square = fields.pow(2).sum(1)
    return 0.5 * (square_of_sum - sum_of_square).sum(1)


class DeepFM(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) = bias + first order + FM(sparse fields) + MLP(fields)."""

    def __init__(self, inputs: FieldInputs, cfg: DeepFMConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.fields = FieldEmbedder(inputs, cfg.embedding_dim, device, first_order=True)
        self.head = Head(self.fields.num_fields * cfg.embedding_dim, cfg.mlp_dims, cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, first_order = self.fields(batch)  # (B, F, D), (B,)
        fm = factorization_machine(fields[:, : self.fields.num_sparse_fields])  # the sparse fields only
        return ModelOutput(logits=first_order + fm + self.head(fields.flatten(1)))
