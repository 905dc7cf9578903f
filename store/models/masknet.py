"""MaskNet baseline (Wang, She & Zhang 2021, "MaskNet: Introducing Feature-Wise Multiplication to CTR
Ranking Models by Instance-Guided Mask"): feed-forward blocks whose input is multiplied, element by
element, by a mask computed from the instance's own embeddings.

Shape letters: B batch, F fields, D embedding width, N = F * D, W block width (MaskBlock output).

Instance-guided mask over a vector of width M (V_emb (B, N) is the whole instance, always):

    V_mask = W_2 ReLU(W_1 V_emb + b_1) + b_2          W_1 (r * M, N), W_2 (M, r * M)

with r the reduction ratio (aggregation width / projection width). A MaskBlock then computes

    V_out = ReLU(LN(W (V_mask * V_in)))               W (W, M), no bias (LN follows)

where V_in is LN_EMB(V_emb) (a layer norm over each field's D values) for a block on the embedding,
or the previous block's output for a block on a block.

- serial (SerMaskNet): ``--model.masknet_blocks`` blocks in a row, the first on the embedding, each
  later one on the previous output; the last output feeds the output layer.
- parallel (ParaMaskNet): the blocks all on the embedding, side by side; their outputs are
  concatenated and fed to an MLP (``--model.mlp_dims``), then the output layer.

Defaults: parallel, 3 blocks of width 64 (``--model.masknet_block_dim``), r = 2, dropout 0.5
(``--model.masknet_dropout``, MaskNet's own: ``--model.dropout`` does not reach it). Both layouts are
the paper's; on MovieLens-100K the serial one scored lower (test AUC 0.700 / 0.701 on seeds 0 / 1,
parallel 0.708 / 0.704, DNN 0.711 / 0.709, before the recipe's init std 1e-4 and embedding L2 1e-4), so
the parallel one is the default. The dropout: the parallel model has 496k dense parameters, 34x DNN's,
and overfits MovieLens-100K without it. It was chosen by the mean best validation AUC of seeds 0 and 1
(3 epochs, trainer defaults): dropout 0 gives 0.6878 / 0.6911 (test 0.7004 / 0.7013), 0.1 0.6938 /
0.6953, 0.2 0.6936 / 0.6914, 0.3 0.6917 / 0.6897, 0.5 0.6989 / 0.6932 (test AUC 0.7072 / 0.7088; DNN
0.7118 / 0.7088). One block instead of three (dropout 0.2) gave validation 0.6954 / 0.6914, blocks of
width 32 0.6913 / 0.6922 (docs/results.md, Table 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from data_pipeline.batch import Batch
from store.models.layers import FieldEmbedder, FieldInputs, Head, ModelOutput

REDUCTION_RATIO = 2
"""r: the mask's aggregation layer is r times wider than the vector it masks."""


@dataclass
class MaskNetConfig:
    """MaskNet's hyper-parameters (``store.models.zoo.build_model`` fills them from ``--model.*``)."""

    embedding_dim: int
    """D: width of every field."""
    mlp_dims: tuple[int, ...]
    """Hidden sizes of the MLP after the parallel blocks (unused by the serial model)."""
    dropout: float
    """Dropout probability after every MaskBlock and in the MLP."""
    mode: str
    """"serial" (SerMaskNet) or "parallel" (ParaMaskNet)."""
    num_blocks: int
    """MaskBlocks."""
    block_dim: int
    """W: output width of every MaskBlock."""


class InstanceGuidedMask(nn.Module):
    """forward(v_emb (B, N)) -> mask (B, M): a two-layer MLP, r * M wide in the middle."""

    def __init__(self, in_dim: int, mask_dim: int) -> None:
        super().__init__()
        self.aggregate = nn.Linear(in_dim, REDUCTION_RATIO * mask_dim)
        self.project = nn.Linear(REDUCTION_RATIO * mask_dim, mask_dim)

    def forward(self, v_emb: torch.Tensor) -> torch.Tensor:
        return self.project(torch.relu(self.aggregate(v_emb)))


class MaskBlock(nn.Module):
    """forward(v_emb (B, N), v_in (B, M)) -> (B, W) = Dropout(ReLU(LN(W (mask(v_emb) * v_in))))."""

    def __init__(self, emb_dim: int, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.mask = InstanceGuidedMask(emb_dim, in_dim)
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, v_emb: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.relu(self.norm(self.linear(self.mask(v_emb) * v_in))))


class MaskNet(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) from serial or parallel MaskBlocks over the fields."""

    def __init__(self, inputs: FieldInputs, cfg: MaskNetConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.fields = FieldEmbedder(inputs, cfg.embedding_dim, device)
        n, w = self.fields.num_fields * cfg.embedding_dim, cfg.block_dim
        self.serial = cfg.mode == "serial"
        self.field_norm = nn.LayerNorm(cfg.embedding_dim)  # LN_EMB: each field on its own
        if self.serial:
            ins = [n] + [w] * (cfg.num_blocks - 1)  # a block on the embedding, then blocks on blocks
            self.blocks = nn.ModuleList(MaskBlock(n, m, w, cfg.dropout) for m in ins)
            self.head = Head(w, (), cfg.dropout)  # the output layer on the last block
        else:
            self.blocks = nn.ModuleList(MaskBlock(n, n, w, cfg.dropout) for _ in range(cfg.num_blocks))
            self.head = Head(cfg.num_blocks * w, cfg.mlp_dims, cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, _ = self.fields(batch)  # (B, F, D)
        v_emb = fields.flatten(1)  # (B, N): what every mask reads
        normed = self.field_norm(fields).flatten(1)  # (B, N): what the blocks on the embedding read
        if self.serial:
            x = normed
            for block in self.blocks:
                x = block(v_emb, x)  # (B, W)
        else:
            x = torch.cat([block(v_emb, normed) for block in self.blocks], dim=1)  # (B, blocks * W)
        return ModelOutput(logits=self.head(x))
