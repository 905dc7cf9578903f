"""MaskNet baseline (Wang, She & Zhang 2021, "MaskNet: Introducing Feature-Wise Multiplication to CTR
Ranking Models by Instance-Guided Mask"): feed-forward blocks whose input is multiplied, element by
element, by a mask computed from the instance's own embeddings.

Shape letters: B batch, F fields, D embedding width, N = F * D, W block width (MaskBlock output).

Instance-guided mask over a vector of width M (V_emb (B, N) is the whole instance, always):

    V_mask = W_2 ReLU(W_1 V_emb + b_1) + b_2          W_1 (r * M, N), W_2 (M, r * M)

with r the reduction ratio (aggregation width / projection width). A MaskBlock then computes

    V_out = ReLU(LN(W (V_mask * V_in)))               W (W, M), no bias (LN follows)

where V_in is, for a block on the embedding, V_emb itself (the default) or, with
``--model.masknet.embedding_norm true``, the paper's LN_EMB(V_emb) (a layer norm over each field's D
values); for a block on a block, the previous block's output.

- serial (SerMaskNet): ``--model.masknet.blocks`` blocks in a row, the first on the embedding, each
  later one on the previous output; the last output feeds the output layer.
- parallel (ParaMaskNet): the blocks all on the embedding, side by side; their outputs are
  concatenated and fed to an MLP (``--model.mlp_dims``), then the output layer.

Defaults: parallel, 3 blocks of width 64 (``--model.masknet.block_dim``), r = 2
(``--model.masknet.reduction_ratio``), dropout 0.5 (``--model.masknet.dropout``, MaskNet's own:
``--model.dropout`` does not reach it), no LN_EMB. Chosen by the mean best validation AUC over seeds
0-4 on MovieLens-100K (3 epochs, trainer defaults; docs/results.md, "MaskNet's defaults"):

- LN_EMB is the one lever that matters: without it, validation 0.6969 and test 0.7128 +- 0.0032; with
  it, 0.6914 and 0.7044 +- 0.0028 (DNN 0.6963 and 0.7110 +- 0.0029). On Table 1's 200,000 synthetic
  rows too (2 seeds): test 0.7448 against 0.7418. FuxiCTR's MaskNet has the same switch
  (``emb_layernorm``).
- With LN_EMB, nothing else moved validation by more than 0.003: one or two blocks, one block of width
  32 or 128, r = 0.5 or 1, dropout 0.3 or 0.7, no dropout in the MLP: 0.690-0.694. Without it,
  dropout 0.3 ties 0.5 (0.6972), 0.7 is lower (0.6921), and one block scores 0.6952.
- The serial layout scores lower either way (without LN_EMB: 0.6945, test 0.7093).
- The dropout: the parallel model has 496k dense parameters, 34x DNN's; with no dropout it overfits
  (two seeds, with LN_EMB: validation 0.6878 / 0.6911 against 0.6989 / 0.6932 at 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from data_pipeline.batch import Batch
from store.models.flops import linear_model_flops
from store.models.inputs import on_fields
from store.models.layers import FieldEmbedder, FieldInputs, Head, ModelOutput
from store.models.registry import ModelSpec, flag_error

if TYPE_CHECKING:
    from store.models.config import ModelConfig


@dataclass
class MaskNetConfig:
    """MaskNet's own hyper-parameters (--model.masknet.*; the MLP after the parallel blocks is
    --model.mlp_dims)."""

    mode: Literal["parallel", "serial"] = "parallel"
    """"parallel" (ParaMaskNet: every MaskBlock on the embedding, then the --model.mlp_dims MLP) or
    "serial" (SerMaskNet: each MaskBlock on the previous one)."""
    blocks: int = 3
    """Number of MaskBlocks."""
    block_dim: int = 64
    """W: output width of every MaskBlock."""
    embedding_norm: bool = False
    """Layer-normalize each field's embedding before the blocks on the embedding (the paper's LN_EMB; off
    by default: on MovieLens-100K it costs 0.005 validation AUC, module docstring)."""
    reduction_ratio: float = 2.0
    """r: each mask's aggregation layer is round(r * M) wide (at least 1), M the width of the vector it
    masks."""
    dropout: float = 0.5
    """Dropout after every MaskBlock and in its MLP (its own default, --model.dropout does not reach it:
    at 0 the model, 34x DNN's dense parameters, overfits; module docstring)."""

    def validate(self, model: ModelConfig) -> None:
        if self.mode not in ("serial", "parallel"):
            raise flag_error("masknet.mode", self.mode, "must be serial or parallel")
        for name in ("blocks", "block_dim", "reduction_ratio"):
            if not getattr(self, name) > 0:
                raise flag_error(f"masknet.{name}", getattr(self, name), "must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise flag_error("masknet.dropout", self.dropout, "must be in [0, 1)")


class InstanceGuidedMask(nn.Module):
    """forward(v_emb (B, N)) -> mask (B, M): a two-layer MLP, r * M wide in the middle."""

    def __init__(self, in_dim: int, mask_dim: int, reduction_ratio: float) -> None:
        super().__init__()
        hidden = max(1, round(reduction_ratio * mask_dim))
        self.aggregate = nn.Linear(in_dim, hidden)
        self.project = nn.Linear(hidden, mask_dim)

    def forward(self, v_emb: torch.Tensor) -> torch.Tensor:
        return self.project(torch.relu(self.aggregate(v_emb)))


class MaskBlock(nn.Module):
    """forward(v_emb (B, N), v_in (B, M)) -> (B, W) = Dropout(ReLU(LN(W (mask(v_emb) * v_in))))."""

    def __init__(
        self, emb_dim: int, in_dim: int, out_dim: int, dropout: float, reduction_ratio: float
    ) -> None:
        super().__init__()
        self.mask = InstanceGuidedMask(emb_dim, in_dim, reduction_ratio)
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, v_emb: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.relu(self.norm(self.linear(self.mask(v_emb) * v_in))))


class MaskNet(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) from serial or parallel MaskBlocks over the fields."""

    def __init__(self, inputs: FieldInputs, cfg: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        own: MaskNetConfig = cfg.masknet
        self.fields = FieldEmbedder(inputs, cfg.embedding_dim, device)
        n, w = self.fields.num_fields * cfg.embedding_dim, own.block_dim
        self.serial = own.mode == "serial"
        # LN_EMB: a layer norm over each field's D values, on its own
        self.field_norm = nn.LayerNorm(cfg.embedding_dim) if own.embedding_norm else None
        if self.serial:
            ins = [n] + [w] * (own.blocks - 1)  # a block on the embedding, then blocks on blocks
            self.blocks = nn.ModuleList(MaskBlock(n, m, w, own.dropout, own.reduction_ratio) for m in ins)
            self.head = Head(w, (), own.dropout)  # the output layer on the last block
        else:
            self.blocks = nn.ModuleList(
                MaskBlock(n, n, w, own.dropout, own.reduction_ratio) for _ in range(own.blocks)
            )
            self.head = Head(own.blocks * w, cfg.mlp_dims, own.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, _ = self.fields(batch)  # (B, F, D)
        v_emb = fields.flatten(1)  # (B, N): what every mask reads
        # what the blocks on the embedding read: LN_EMB(V_emb), or V_emb itself (the default)
        normed = v_emb if self.field_norm is None else self.field_norm(fields).flatten(1)  # (B, N)
        if self.serial:
            x = normed
            for block in self.blocks:
                x = block(v_emb, x)  # (B, W)
        else:
            x = torch.cat([block(v_emb, normed) for block in self.blocks], dim=1)  # (B, blocks * W)
        return ModelOutput(logits=self.head(x))


SPEC = ModelSpec("masknet", on_fields(MaskNet), config=MaskNetConfig, flops=linear_model_flops)
