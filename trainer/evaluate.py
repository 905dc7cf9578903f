"""Evaluation: every rank predicts its slice of a split, the predictions are gathered, the metrics are those
of the whole split (`trainer.metrics`).

Each rank reads its own rows of the split (`ParquetBatchReader` with rank / world size); the last
batch is padded and `reader.valid_rows` says how many rows are real, so padding never reaches the
metrics. `EvalHistory` keeps every result of the run for OUT/metrics.json and the summary.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data_pipeline import fs
from data_pipeline.reader import ParquetBatchReader
from data_pipeline.spec import DatasetSpec
from store.records import EvalEntry
from trainer import distributed as D
from trainer.logging import RunLogger, write_json
from trainer.metrics import evaluate_predictions, item_frequency

log = logging.getLogger(__name__)


def item_train_counts(counts: torch.Tensor | None, spec: DatasetSpec, env: D.DistEnv) -> torch.Tensor | None:
    """Train rows per item (num_items,) on every rank: ``counts`` are rank 0's (`trainer.metrics.
    train_split_stats`; ignored on the other ranks). None without an item column (no tail-item AUC,
    popularity buckets or frequency slices)."""
    if not spec.item_id:
        if env.is_main:
            log.info(
                "the dataset has no item column: no tail-item AUC, popularity buckets or frequency slices"
            )
        return None
    num_items = spec.item_table.num_items if spec.item_table else None
    num_items = num_items or spec.feature(spec.item_id).vocab_size
    if not env.is_main:
        counts = torch.zeros(num_items, dtype=torch.int64)
    return D.broadcast_from_main(counts, env.device)


@dataclass
class Predictions:
    """This rank's predictions on a split, padding rows dropped; every tensor (N,) on the CPU."""

    logits: torch.Tensor
    labels: torch.Tensor
    users: torch.Tensor
    items: torch.Tensor


def predict(
    model: nn.Module, reader: ParquetBatchReader, device: torch.device, max_batches: int = 0
) -> Predictions:
    """Run `model` (forward(batch) -> (loss, output with .logits)) in eval mode over `reader`, at most
    `max_batches` batches (0: all); the model is back in train mode on return."""
    reader.set_epoch(0)
    limit = max_batches or len(reader)
    valid = min(reader.valid_rows, limit * reader.layout.batch_size)
    logits, labels, users, items = [], [], [], []
    model.eval()
    with torch.no_grad():
        for batch in itertools.islice(reader, limit):
            batch = batch.to(device)
            _, out = model(batch)
            logits.append(out.logits.float().cpu())
            labels.append(batch.labels.cpu())
            users.append(batch.user_ids.cpu())
            items.append(batch.item_ids.cpu())
    model.train()

    def cat(ts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        return torch.cat(ts)[:valid] if ts else torch.zeros(0, dtype=dtype)

    return Predictions(
        cat(logits, torch.float32),
        cat(labels, torch.float32),
        cat(users, torch.int64),
        cat(items, torch.int64),
    )


def evaluate_split(
    model: nn.Module,
    reader: ParquetBatchReader,
    device: torch.device,
    *,
    max_batches: int,
    with_users: bool,
    buckets: torch.Tensor | None,
    tail_buckets: int,
    item_counts: torch.Tensor | None = None,
) -> tuple[dict, Predictions]:
    """Metrics of the whole split `reader` reads a slice of (every rank calls this), and the whole
    split's predictions in the split's row order (each rank reads a contiguous slice of it, in rank
    order, so the gathered rows come out in that order whatever the number of ranks).

    with_users: False when the dataset has no user column (no GAUC; `users` is then empty).
    buckets / tail_buckets / item_counts: see `evaluate_predictions`.
    """
    p = predict(model, reader, device, max_batches)
    logits, labels, items = D.gather_tensors(p.logits), D.gather_tensors(p.labels), D.gather_tensors(p.items)
    users = D.gather_tensors(p.users) if with_users else None  # no user column: no GAUC
    metrics = evaluate_predictions(logits, labels, users, items, buckets, tail_buckets, item_counts)
    empty = torch.zeros(0, dtype=torch.int64)
    return metrics, Predictions(logits, labels, users if users is not None else empty, items)


def write_predictions(
    path: Path,
    p: Predictions,
    with_users: bool,
    with_items: bool,
    tail: np.ndarray | None = None,
    item_counts: torch.Tensor | None = None,
) -> None:
    """A split's predictions as parquet, written atomically: ``row`` (position in the split), ``label``,
    ``logit``, ``user`` / ``item`` when the dataset has those columns, ``tail`` (the row's item is
    in the least popular buckets, what tail AUC is computed on) when given, and with ``item_counts``
    (train rows per item) ``item_train_count`` and ``item_slice`` (`trainer.metrics.item_frequency`:
    what the slice AUCs are computed on). Runs on the same dataset
    have the same rows, so two runs' files pair row by row (``launch.report``'s paired tests)."""
    import pyarrow as pa

    columns = {
        "row": pa.array(np.arange(len(p.labels), dtype=np.int64)),
        "label": pa.array(p.labels.numpy().astype(np.float32)),
        "logit": pa.array(p.logits.numpy().astype(np.float32)),
    }
    if with_users:
        columns["user"] = pa.array(p.users.numpy().astype(np.int64))
    if with_items:
        columns["item"] = pa.array(p.items.numpy().astype(np.int64))
    if tail is not None:
        columns["tail"] = pa.array(np.asarray(tail, dtype=bool))
    frequency = item_frequency(p.items, item_counts)
    if frequency is not None:
        columns["item_train_count"] = pa.array(frequency.train_rows)
        columns["item_slice"] = pa.array(frequency.slices)
    fs.write_parquet(path, pa.table(columns))  # atomic: temp name, then rename


class EvalHistory:
    """Every evaluation of the run in order, as {"split", "step", "epoch", **metrics}: each logged as
    `<split>/<metric>` scalars, the whole list rewritten to `path` (OUT/metrics.json) when `write`."""

    def __init__(self, logger: RunLogger, path: Path, write: bool) -> None:
        self.logger, self.path, self.write = logger, path, write
        self.entries: list[dict] = []

    def record(self, split: str, step: int, epoch: int, result: dict) -> None:
        self.entries.append(EvalEntry(split, step, epoch, result).to_dict())  # one row of metrics.json
        self.logger.log({f"{split}/{k}": v for k, v in result.items() if isinstance(v, float)}, step)
        if self.write:
            write_json(self.path, self.entries)

    def split(self, name: str) -> list[dict]:
        return [e for e in self.entries if e["split"] == name]

    def restore(self, step: int) -> None:
        """On resume: take back the entries `path` holds up to `step` (those after it are redone)."""
        if not self.path.is_file():
            return
        try:
            entries = json.loads(self.path.read_text())
        except json.JSONDecodeError:
            log.warning("%s: not valid JSON; the evaluations before the resume are not in it", self.path)
            return
        self.entries = [e for e in entries if e.get("split") == "valid" and e.get("step", 0) <= step]
