"""Sharded checkpoints with `torch.distributed.checkpoint` (DCP), written atomically.

Layout::

    OUT/checkpoints/step_<N>/          complete checkpoints (DCP files + .metadata)
    OUT/checkpoints/.tmp-step_<N>/     being written; renamed to step_<N>/ by rank 0 once every rank
                                       finished, so a killed run never leaves a half checkpoint that
                                       looks whole

State is a nested dict whose leaves are tensors only (model and optimizer state dicts hold
ShardedTensors / DTensors for sharded tables; trainer state is small tensors). Reading a checkpoint
(the safe metadata unpickler, the checks that name a missing or truncated file) is
``data_pipeline.checkpoint_files``, shared with the tokenizer.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp

from data_pipeline.checkpoint_files import (  # noqa: F401  (the trainer's names for them)
    BEST_DIR,
    CHECKPOINT_DIR,
    CheckpointError,
    SafeFileSystemReader,
    complete,
    keys,
    latest,
    load,
)
from trainer.distributed import barrier

log = logging.getLogger(__name__)


# -- RNG state as tensors -------------------------------------------------------------------------
def rng_state() -> dict[str, torch.Tensor]:
    """torch / numpy / python RNG states as plain tensors (no pickling)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, _ = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_meta": torch.tensor([np_pos, np_has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_gauss], dtype=torch.float64),
        "python": torch.tensor([py_version, *py_state], dtype=torch.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    pos, has_gauss = (int(v) for v in state["numpy_meta"])
    np.random.set_state(("MT19937", keys, pos, has_gauss, float(state["numpy_gauss"][0])))
    py = [int(v) for v in state["python"]]
    random.setstate((py[0], tuple(py[1:]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _check_tensors_only(state: Mapping[str, Any], prefix: str = "") -> None:
    for k, v in state.items():
        if isinstance(v, Mapping):
            _check_tensors_only(v, f"{prefix}{k}.")
        elif not isinstance(v, torch.Tensor):  # ShardedTensor and DTensor count as tensors here
            if type(v).__name__ not in ("ShardedTensor",):
                raise TypeError(
                    f"checkpoint state {prefix}{k} is a {type(v).__name__}; only tensors are saved"
                )


# -- the manager ----------------------------------------------------------------------------------
class CheckpointManager:
    """Save / find / load / prune step checkpoints under OUT/checkpoints (or OUT/<subdir>: the trainer
    keeps the best validation's weights in OUT/best). Every rank calls save/load."""

    def __init__(
        self, out_dir: str | os.PathLike, keep: int, rank: int = 0, subdir: str = CHECKPOINT_DIR
    ) -> None:
        self.root = Path(out_dir) / subdir
        self.keep = keep
        self.rank = rank

    def path(self, step: int) -> Path:
        return self.root / f"step_{step}"

    def complete(self) -> list[tuple[int, Path]]:
        """Complete checkpoints (renamed, with .metadata), oldest first."""
        return complete(self.root)

    def latest(self) -> Path | None:
        return latest(self.root)

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write `state` to .tmp-step_<step>/, then rename it to step_<step>/ and prune old ones."""
        _check_tensors_only(state)
        final, tmp = self.path(step), self.root / f".tmp-step_{step}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left by a killed run
                shutil.rmtree(tmp)
        barrier()
        dcp.save(state, checkpoint_id=tmp)
        barrier()  # every rank's files are written (DCP writes .metadata last, on rank 0)
        if self.rank == 0:
            if final.exists():  # the same step saved again (e.g. after a resume): replace it
                old = self.root / f".old-step_{step}"
                os.replace(final, old)
                shutil.rmtree(old)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            self._prune()
        barrier()
        return final

    def _prune(self) -> None:
        done = self.complete()
        for _, p in done[: max(0, len(done) - self.keep)]:
            shutil.rmtree(p, ignore_errors=True)

    def load(self, path: str | os.PathLike, state: dict[str, Any]) -> None:
        """Load `path` into `state` in place (tensors, sharded tensors are resharded as needed)."""
        load(path, state)

    @staticmethod
    def keys(path: str | os.PathLike) -> set[str]:
        """Flattened state keys stored in a checkpoint (to check what a checkpoint holds before loading)."""
        return keys(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
