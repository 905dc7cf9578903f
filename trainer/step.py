"""One training step's model: a zoo model plus its loss (`TrainModule`), what a step returns
(`StepOutput`), the error a non-finite loss raises, and the process-wide seeding."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_pipeline.batch import Batch


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class StepOutput:
    """What one forward returns next to the loss (all detached)."""

    loss: torch.Tensor
    """() total loss = bce + sum(aux)."""
    bce: torch.Tensor
    """() binary cross-entropy."""
    aux: dict[str, torch.Tensor]
    """Each regulariser (already weighted by the model)."""
    logits: torch.Tensor
    """(B,) logits."""


class TrainModule(nn.Module):
    """A zoo model plus the BCE loss: forward(batch) -> (loss, StepOutput), the shape
    `TrainPipelineSparseDist` expects. bf16 autocast wraps the model's forward on GPU."""

    def __init__(self, model: nn.Module, autocast: bool, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.autocast = autocast
        self.device_type = device_type

    def forward(self, batch: Batch) -> tuple[torch.Tensor, StepOutput]:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(batch)
        logits = out.logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, batch.labels)
        aux = {name: value.float() for name, value in out.aux_losses.items()}
        loss = bce + sum(aux.values()) if aux else bce
        detached = StepOutput(
            loss.detach(), bce.detach(), {k: v.detach() for k, v in aux.items()}, logits.detach()
        )
        return loss, detached


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
