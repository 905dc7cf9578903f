"""FM baseline (Rendle 2010, "Factorization Machines"): a bias, a weight per ID and a factorised
pairwise interaction between every two sparse fields.

Shape letters: B batch, F sparse fields, D embedding width (the factor size k of the paper).

    logit = bias + sum_i w_i + w_dense . x_dense + sum_{f<g} <v_f, v_g>

The first-order weights w_i are FieldEmbedder's narrow ``<table>_w`` tables, each weight the mean of
its row (as in ``store.models.widedeep``: it then learns at ``--optim.sparse_lr``); the dense features enter
the linear part only, as in DeepFM's FM they are not an FM field (a dense vector has no factor per
ID). No hyper-parameter of its own: D is ``--model.embedding_dim``. Its tables learn at 0.02 by
default, as DeepFM's, not the shared 0.05 (``store.models.deepfm.SPARSE_LR``, chosen by validation AUC).

The history items have factors and first-order weights of their own (table ``t_item_hist``, as many
rows as ``t_item``), not the target item's: in the paper's encoding a history is its own group of
one-hot columns (libFM's SVD++ encoding, Rendle 2012: "implicit indicators"), so "i is in the user's
history" and "i is the item shown" are two features. Sharing the raw item table, as the other
baselines do, ties the two: an item's weight then says both "i is liked" and "users who watched i
like things". On MovieLens-100K its own table took test AUC from 0.6983 / 0.6888 (seeds 0 / 1) to
0.7007 / 0.6969, best validation AUC from 0.6798 / 0.6838 to 0.6842 / 0.6880.

Every first-order weight starts at (about) zero, as in the paper's and libFM's w = 0: the per-ID ones
at the tables' ``--model.embedding_init_std``, and w_dense at exactly 0. nn.Linear's default start
(uniform +-1/sqrt(dense count), +-0.71 for MovieLens' two log counts) is not small here: the dense
weights train with the dense Adam at 1e-3 while the per-ID weights move at the sparse LR and take up
the same signal first, so w_dense stayed near its random start (log_item_count's weight +0.32 on
seed 0, -0.23 on seed 1), and the counts, larger in the later test split, then shifted the
predictions by chance. From zero, MovieLens-100K test AUC went from 0.6974 / 0.6785 (seeds 0 / 1) to
0.6983 / 0.6888 (docs/results.md).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn

from data_pipeline.batch import Batch
from store.models.deepfm import SPARSE_LR, factorization_machine
from store.models.flops import linear_model_flops
from store.models.inputs import on_fields
from store.models.layers import RAW_ITEM_TABLE, FieldEmbedder, FieldInputs, ModelOutput, Table
from store.models.registry import ModelSpec

if TYPE_CHECKING:
    from store.models.config import ModelConfig

HISTORY_TABLE = f"{RAW_ITEM_TABLE}_hist"
"""FM's table of the history items (every item-valued feature but the target item)."""


def own_history_table(inputs: FieldInputs) -> FieldInputs:
    """``inputs`` with the history features moved off the shared item table onto ``HISTORY_TABLE``
    (same rows and init); unchanged without history features."""
    item = inputs.item_table
    if item is None:
        return inputs
    history = tuple(f for f in item.features if f != inputs.item_feature)
    if not history:
        return inputs
    target = tuple(f for f in item.features if f == inputs.item_feature)
    return dataclasses.replace(
        inputs,
        static_tables=[*inputs.static_tables, Table(HISTORY_TABLE, item.rows, history, item.init_std)],
        item_table=dataclasses.replace(item, features=target) if target else None,
    )


class FM(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) = bias + first order + dense linear + FM(sparse fields)."""

    def __init__(self, inputs: FieldInputs, cfg: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        # The sparse fields only: the dense features get a weight each below, not a factor.
        sparse = own_history_table(dataclasses.replace(inputs, num_dense=0))
        self.fields = FieldEmbedder(sparse, cfg.embedding_dim, device, first_order=True)
        self.dense = nn.Linear(inputs.num_dense, 1, bias=False) if inputs.num_dense else None
        if self.dense is not None:
            nn.init.zeros_(self.dense.weight)  # w_dense = 0, like every first-order weight (docstring)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> ModelOutput:
        fields, first_order = self.fields(batch)  # (B, F, D), (B,): the sum of every ID's weight row
        logits = self.bias + first_order + factorization_machine(fields)
        if self.dense is not None:
            logits = logits + self.dense(batch.dense).squeeze(-1)
        return ModelOutput(logits=logits)


SPEC = ModelSpec("fm", on_fields(FM), sparse_lr=SPARSE_LR, flops=linear_model_flops)
