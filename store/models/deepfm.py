"""DeepFM baseline (Guo et al. 2017): first-order term + factorization machine + deep MLP.

Shape letters: B batch, F fields, D embedding width.

The FM term is the standard one, 0.5 * sum_d [(sum_f v_fd)^2 - sum_f v_fd^2], over the sparse fields
only, as in the paper (the dense features' field, a linear map with a bias, feeds the deep tower: as
an FM field it adds a per-row offset that made this DeepFM 0.015-0.03 AUC worse). TorchRec's
``FactorizationMachine`` sums over the flattened F * D inputs, which also crosses different
embedding dimensions, so it is not used here.

Its tables learn at 0.02 by default, not the shared 0.05 (``SPARSE_LR``: at 0.05
the factors fit the pairwise term in the first epoch; 0.02 was chosen by validation AUC).
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

SPARSE_LR = 0.02
"""Default ``--optim.sparse_lr`` of the models with a factorization-machine term (DeepFM, FM): at 0.05
(the zoo's default) the factors, and with them the pairwise term, fit in the first epoch. 0.02 was chosen
by validation AUC (2 seeds, 3 epochs) on MovieLens-100K (DeepFM 0.6828 / 0.6882 at 0.05, 0.6949 / 0.6965
at 0.02, 0.6958 / 0.6955 at 0.01; FM 0.6842 / 0.6880, 0.6919 / 0.6943, 0.6899 / 0.6906) and the
synthetic data (200,000 rows; DeepFM 0.7525 / 0.7471 at 0.05, 0.7530 / 0.7513 at 0.02; FM 0.7468 /
0.7426, 0.7490 / 0.7483). DNN has no such preference (0.6970 / 0.6954 at 0.05, 0.6965 / 0.6958 at 0.01).
Figures: docs/results.md, Table 1."""


def factorization_machine(fields: torch.Tensor) -> torch.Tensor:
    """Pairwise interactions sum_{f<g} <v_f, v_g> of fields (B, F, D) -> (B,)."""
    square_of_sum = fields.sum(1).pow(2)
    sum_of_square = fields.pow(2).sum(1)
    return 0.5 * (square_of_sum - sum_of_square).sum(1)


class DeepFM(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) = bias + first order + FM(sparse fields) + MLP(fields)."""

    def __init__(self, inputs: FieldInputs, cfg: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.fields = FieldEmbedder(inputs, cfg.embedding_dim, device, first_order=True)
        self.head = Head(self.fields.num_fields * cfg.embedding_dim, cfg.mlp_dims, cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, first_order = self.fields(batch)  # (B, F, D), (B,)
        fm = factorization_machine(fields[:, : self.fields.num_sparse_fields])  # the sparse fields only
        return ModelOutput(logits=first_order + fm + self.head(fields.flatten(1)))


SPEC = ModelSpec("deepfm", on_fields(DeepFM), sparse_lr=SPARSE_LR, flops=linear_model_flops)
