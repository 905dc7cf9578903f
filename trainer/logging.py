"""One `log(metrics, step)` for TensorBoard and the console (rank 0 only), plus the run's JSON files."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from data_pipeline.spec import atomic_write_text

log = logging.getLogger("trainer")

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
