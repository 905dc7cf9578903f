"""One `log(metrics, step)` for TensorBoard and the console (rank 0 only), plus the run's JSON files;
and the one place where library warnings known to be harmless are silenced (`quiet_libraries`,
applied on import: each filter names the library module and the message, and says why)."""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any

from data_pipeline.spec import atomic_write_text

log = logging.getLogger("trainer")


# -- library warnings known to be harmless -------------------------------------------------------------
# Each entry: what to silence (category or logger, message regex, module) and why it is harmless for
# this trainer. Anything not listed here stays visible. A new TorchRec / FBGEMM / torch release may
# change a message: the filter then no longer matches and the warning shows again, to be judged anew.
HARMLESS_WARNINGS: list[tuple[type[Warning], str, str]] = [
    # TorchRec's planner builds its default storage reservation (HeuristicalStorageReservation), which
    # only sizes the memory it keeps aside for dense parameters; the trainer fixes every table's
    # sharding type, and a plan that does not fit still fails with TorchRec's PlannerError.
    (
        FutureWarning,
        r"HeuristicalStorageReservation is known to cause issues",
        r"torchrec\.distributed\.planner\.",
    ),
    # TorchRec itself passes DDP's deprecated `broadcast_buffers` (False, for the dense part and the
    # data-parallel tables); this torch release still honours it, so DDP behaves as TorchRec intends.
    (FutureWarning, r"`broadcast_buffers` is deprecated\. Use", r"torchrec\.distributed\."),
    # FBGEMM registers the dense (data-parallel) TBE op's autograd.Function under the backend key instead
    # of Autograd; its backward does run and the gradients are right (tests/test_exit_codes.py checks a
    # data-parallel table's gradient, row by row). FBGEMM registers the Autograd key upstream
    # (pytorch/FBGEMM pull 5886); meta-pytorch/torchrec issue 2657 is the same report.
    (
        UserWarning,
        r"fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered",
        r"torch\.autograd\.",
    ),
    # TorchRec keeps table-wise shards as ShardedTensors, which DCP saves and loads (resume, best
    # weights); torch only announces that it will drop them, for TorchRec to migrate.
    (
        FutureWarning,
        r"Please use DTensor instead and we are deprecating ShardedTensor",
        r"torch\.distributed\.",
    ),
]
HARMLESS_LOG_RECORDS: list[tuple[str, str]] = [
    # The trainer builds Topology(world_size, compute_device) directly, which is TorchRec 1.8's planner
    # input; the factory only adds hardware overrides (HBM / DDR caps) the trainer does not pass.
    (
        "torchrec.distributed.planner.types",
        r"^The topology was constructed directly rather than via TopologyFactory",
    ),
    # The same storage reservation as above: the dense-size estimate is not a materialisation problem
    # for the trainer (it asks for no dry run) and only sizes a reservation.
    (
        "torchrec.distributed.planner.storage_reservations",
        r"^There is a known issue with TorchRec's dense tensor size",
    ),
    # TorchRec's plan validation logs this (on the root logger) for every data-parallel table: replicated
    # tables have no sharding spec by design. The trainer prints the whole plan at start-up.
    ("", r"^Sharding spec not found for "),
    # Caching parameters (UVM caching kernels) are never set by the trainer; for data-parallel tables and
    # dense kernels TorchRec says it ignores them, once per table.
    (
        "torchrec.distributed.utils",
        r"^(Sharding Type is data_parallel|Compute Kernel is dense), caching params will be ignored",
    ),
    # TorchRec's pipeline tracer calls torch.fx's is_fx_tracing(); torch notes that it is also true under
    # torch.export, which the trainer does not use.
    (
        "torch.fx._symbolic_trace",
        r"^is_fx_tracing will return true for both fx\.symbolic_trace and torch\.export",
    ),
]


class _DropRecords(logging.Filter):
    """Drops the records of one logger whose message matches ``pattern``."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def quiet_libraries() -> None:
    """Silence `HARMLESS_WARNINGS` (warnings filters, first in the list) and `HARMLESS_LOG_RECORDS` (a
    filter on each logger), nothing else. Run on import of this module; calling it again re-applies
    the warnings filters (e.g. inside ``warnings.catch_warnings``) without adding duplicates."""
    for category, message, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, pattern in HARMLESS_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRecords) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropRecords(pattern))


quiet_libraries()

TENSORBOARD_DIR = "tensorboard"


class RunLogger:
    """Scalars to TensorBoard (``tensorboard_dir``, default OUT/tensorboard) and a compact console
    line. A no-op off rank 0."""

    def __init__(self, out: str | Path, enabled: bool, tensorboard: bool, tensorboard_dir: str = "") -> None:
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=tensorboard_dir or str(Path(out) / TENSORBOARD_DIR))

    def log(self, metrics: dict[str, float], step: int, console: bool = True) -> None:
        """Write every finite scalar of the flat dict `metrics` at `step`."""
        if not self.enabled:
            return
        if self.writer is not None:
            for name, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(name, value, step)
        if console:
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if "/rank" not in k)
            log.info("step %d %s", step, shown)

    def text(self, tag: str, text: str) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_text(tag, text.replace("\n", "  \n"))

    def hparams(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        """Record the resolved hyper-parameters with the final metrics (TensorBoard's HPARAMS tab)."""
        if not (self.enabled and self.writer is not None):
            return
        flat = {
            k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in _flatten(config).items()
        }
        finite = {
            f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)
        }
        self.writer.add_hparams(flat, finite, run_name=".")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_json(path: str | Path, data: Any) -> None:
    """Atomic JSON (NaN written as null, so strict JSON readers accept it)."""
    atomic_write_text(path, json.dumps(_nan_to_none(data), indent=2) + "\n")


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_nan_to_none(v) for v in x]
    return x
