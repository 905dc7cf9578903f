"""Dense and rotation optimizers next to TorchRec's fused embedding optimizer, and the LR schedule.

The embedding tables' optimizer is fused into the backward by TorchRec (`trainer.distributed`);
DMP exposes it as `model.fused_optimizer`. The remaining parameters get a plain torch optimizer
(data-parallel embedding tables are among them: TorchRec trains replicated tables like dense
weights), STORE's rotation matrices R their own. `CombinedOptimizer` makes one optimizer of the
three, so the training pipeline, the LR schedule and the checkpoint see a single object.

The schedule is a pure function of the step (`lr_factor`), so restoring the step restores it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from trainer.config import OptimConfig


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of every base learning rate at `step` (0-based): linear warm-up, then decay."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay == "none" or total_steps <= cfg.warmup_steps:
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    if cfg.decay == "linear":
        return 1.0 - (1.0 - cfg.min_lr_ratio) * progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _dense_factory(cfg: OptimConfig, lr: float) -> Callable[[list], torch.optim.Optimizer]:
    if cfg.dense == "adam":
        return lambda params: torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.dense == "adamw":
        return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return lambda params: torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay)


def build_optimizer(
    dmp: nn.Module, rotation_params: list[nn.Parameter], cfg: OptimConfig, total_steps: int
) -> tuple[CombinedOptimizer, torch.optim.lr_scheduler.LambdaLR, dict[str, int]]:
    """-> (optimizer over fused + dense + rotation, LR scheduler, {group label: index}).

    The rotation matrices move on every `cfg.rotation_every`-th step only (their LR is 0 on the
    other steps): R and the network are optimised alternately.
    """
    rotation_ids = {id(p) for p in rotation_params}
    named = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dense = {k: p for k, p in named.items() if id(p) not in rotation_ids and p.requires_grad}
    rotation = {k: p for k, p in named.items() if id(p) in rotation_ids and p.requires_grad}
    parts: list = [("fused", dmp.fused_optimizer)]
    dense_opt = None
    if dense:
        dense_opt = KeyedOptimizerWrapper(dense, _dense_factory(cfg, cfg.dense_lr))
        parts.append(("dense", dense_opt))
    rotation_opt = None
    if rotation:
        rotation_opt = KeyedOptimizerWrapper(rotation, _dense_factory(cfg, cfg.rotation_lr))
        parts.append(("rotation", rotation_opt))
    optimizer = CombinedOptimizer(parts)

    rotation_groups = {id(g) for g in rotation_opt.param_groups} if rotation_opt else set()

    def base(step: int) -> float:
        return lr_factor(step, cfg, total_steps)

    def alternating(step: int) -> float:
        return base(step) if step % cfg.rotation_every == 0 else 0.0

    lambdas = [alternating if id(g) in rotation_groups else base for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambdas)
    labels: dict[str, int] = {}
    for i, g in enumerate(optimizer.param_groups):
        if id(g) in rotation_groups:
            labels.setdefault("rotation", i)
        elif dense_opt is not None and any(g is h for h in dense_opt.param_groups):
            labels.setdefault("dense", i)
        else:
            labels.setdefault("sparse", i)
    return optimizer, scheduler, labels


def init_dense_state(optimizer: CombinedOptimizer) -> None:
    """Create the lazy state of the non-fused optimizers (zero grads, one no-op step) so a checkpoint
    can be loaded into it in place. Call before loading the model weights (the dummy step may
    apply weight decay)."""
    for _, opt in optimizer.optimizers:
        if isinstance(opt, KeyedOptimizerWrapper) and not opt.state:
            opt.init_state()


def set_schedule_step(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, step: int
) -> None:
    """Put the schedule at `step` (after a resume): the LRs it would have set by then."""
    scheduler.last_epoch = step
    for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = group["initial_lr"] * fn(step)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
