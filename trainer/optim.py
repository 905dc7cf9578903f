"""Dense and rotation optimizers next to TorchRec's fused embedding optimizer, and the LR schedule.

The sharded embedding tables' optimizer is fused into the backward by TorchRec
(`trainer.distributed`); DMP exposes it as `model.fused_optimizer`. TorchRec leaves replicated
(data-parallel) tables to the caller, like dense weights: they get the same algorithm and LR as the
fused one (`--optim.sparse`, `--optim.sparse_lr`), so a table learns alike whether it is sharded or
replicated (STORE's SID codebooks are replicated, the ID arm's big tables sharded). The remaining
parameters get a plain torch optimizer, STORE's rotation matrices R their own. `CombinedOptimizer`
makes one optimizer of them all, so the training pipeline, the LR schedule and the checkpoint see a
single object.

The schedule is a `LambdaLR` whose lambdas (`lr_factor`) and base LRs come from the flags. A
checkpoint saves its position (`scheduler_state`: tensors, like the rest of the checkpoint) and a
resume puts it back (`load_scheduler_state`), which also resets the LRs the schedule had set there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from trainer.config import OptimConfig
from trainer.distributed import sparse_optimizer_class


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


def with_row_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> torch.optim.Optimizer:
    """Give a replicated table's optimizer FBGEMM's L2 mode: before each step, add ``weight_decay * w``
    to the gradient of the rows the batch touched (non-zero gradient rows), and to no other row.

    torch's own ``weight_decay`` would decay every row at every step, and an adaptive optimizer
    (Adagrad, Adam) normalises that decay-only gradient to a full-size step: rows a batch rarely
    touches would be pulled to zero at the learning rate. The sharded tables' fused optimizer only
    ever sees the rows of the batch, so with this both kinds of table are regularised alike.
    """
    if not weight_decay:
        return optimizer

    def decay(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        with torch.no_grad():
            for group in opt.param_groups:
                for p in group["params"]:
                    g = p.grad
                    if g is None:
                        continue
                    if g.is_sparse:
                        g = g.coalesce()
                        rows = g.indices()[0]
                        p.grad = torch.sparse_coo_tensor(
                            g.indices(), g.values() + weight_decay * p[rows], g.shape
                        ).coalesce()
                    else:
                        touched = g.reshape(len(g), -1).ne(0).any(1)
                        g[touched] += weight_decay * p[touched]

    optimizer.register_step_pre_hook(decay)
    return optimizer


def build_optimizer(
    dmp: nn.Module,
    rotation_params: list[nn.Parameter],
    cfg: OptimConfig,
    total_steps: int,
    table_names: set[str] = frozenset(),
) -> tuple[CombinedOptimizer, torch.optim.lr_scheduler.LambdaLR, dict[str, int]]:
    """-> (optimizer over fused + replicated tables + dense + rotation, LR scheduler, {group label: index}).

    ``table_names``: the model's embedding tables; those not fused (replicated) get the sparse
    optimizer and LR.

    The rotation matrices move on every `cfg.rotation_every`-th step only (their LR is 0 on the
    other steps): R and the network are optimised alternately.
    """
    rotation_ids = {id(p) for p in rotation_params}
    named = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dense = {k: p for k, p in named.items() if id(p) not in rotation_ids and p.requires_grad}
    rotation = {k: p for k, p in named.items() if id(p) in rotation_ids and p.requires_grad}
    # a replicated table's weight: "...embedding_bags.<table>.weight" (or "...embeddings.<table>.weight")
    replicated = {k: p for k, p in dense.items() if k.endswith(".weight") and k.split(".")[-2] in table_names}
    dense = {k: p for k, p in dense.items() if k not in replicated}
    parts: list = [("fused", dmp.fused_optimizer)]
    if replicated:
        cls, kwargs = sparse_optimizer_class(cfg.sparse)
        parts.append(
            (
                "replicated",
                KeyedOptimizerWrapper(
                    replicated,
                    lambda ps: with_row_decay(
                        cls(ps, lr=cfg.sparse_lr, **kwargs), cfg.embedding_weight_decay
                    ),
                ),
            )
        )
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


_SCHEDULER_KEYS = ("last_epoch", "_step_count")
"""What `scheduler_state` saves of `LambdaLR.state_dict()`: its position, the same on every rank. The
per-group lists (base and last LRs) are left out: they follow from the flags and the position, and
the number of param groups (fused embedding optimizers) may differ between ranks."""


def scheduler_state(scheduler: torch.optim.lr_scheduler.LambdaLR) -> dict[str, torch.Tensor]:
    """The scheduler's position as int64 tensors (a checkpoint holds tensors only)."""
    state = scheduler.state_dict()
    return {k: torch.tensor(state[k], dtype=torch.int64) for k in _SCHEDULER_KEYS}


def scheduler_state_at(step: int) -> dict[str, torch.Tensor]:
    """What `scheduler_state` returns after `step` scheduler steps (for checkpoints written before the
    scheduler was saved: their position is their step)."""
    return {"last_epoch": torch.tensor(step), "_step_count": torch.tensor(step + 1)}


def load_scheduler_state(
    scheduler: torch.optim.lr_scheduler.LambdaLR, state: Mapping[str, torch.Tensor]
) -> None:
    """Put the scheduler where `scheduler_state` was taken, with the LRs it had set there.

    The scheduler is put one step earlier and steps once: its own `step()` recomputes the LRs from
    this run's lambdas and base LRs and sets them on the param groups.
    """
    loaded = scheduler.state_dict()
    loaded.update({k: int(state[k]) - 1 for k in _SCHEDULER_KEYS})
    scheduler.load_state_dict(loaded)
    with warnings.catch_warnings():  # expected here (no optimizer step yet): nothing is skipped
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
        scheduler.step()
