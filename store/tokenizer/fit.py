"""The tokenizer's one training loop: the FM that learns ID rows (``learned.train_fm``), SASRec
(``sasrec.train_sasrec``) and the selection's proxy FM (``select.proxy_auc``) all step through
``fit``. They differ in what a batch is (reader batches, blocks of sequences, an in-memory sample)
and in what they report per epoch; those stay with the caller, as the ``batches`` and ``end_epoch``
callbacks.

Not the trainer's loop (``trainer.train``): these are small single-process models of plain
``torch.nn`` modules, trained before any TorchRec model exists, without sharding, checkpoints or
distributed evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from torch import Tensor
from torch.optim import Optimizer

B = TypeVar("B")


def step(loss: Tensor, optimizers: Sequence[Optimizer]) -> None:
    """One update of every optimizer in ``optimizers`` on ``loss`` (gradients cleared first)."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()


def fit(
    epochs: int,
    batches: Callable[[int], Iterable[B]],
    loss: Callable[[B], Tensor],
    optimizers: Sequence[Optimizer],
    end_epoch: Callable[[int], None] | None = None,
) -> None:
    """``epochs`` passes: for each batch of ``batches(epoch)``, one ``step`` on ``loss(batch)``; then
    ``end_epoch(epoch)`` (validation, logging)."""
    for epoch in range(epochs):
        for batch in batches(epoch):
            step(loss(batch), optimizers)
        if end_epoch is not None:
            end_epoch(epoch)
