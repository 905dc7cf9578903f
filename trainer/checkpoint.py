"""Sharded checkpoints with `torch.distributed.checkpoint` (DCP), written atomically.

Layout::

    OUT/checkpoints/step_<N>/          complete checkpoints (DCP files + .metadata)
    OUT/checkpoints/.tmp-step_<N>/     being written; renamed to step_<N>/ by rank 0 once every rank
                                       finished, so a killed run never leaves a half checkpoint that
                                       looks whole

State is a nested dict whose leaves are tensors only (model and optimizer state dicts hold
ShardedTensors / DTensors for sharded tables; trainer state is small tensors), so loading never
unpickles an arbitrary object: DCP's own metadata file goes through an allow-list unpickler, and a
checkpoint holding pickled values (bytes) is refused.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

from trainer.distributed import barrier

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
"""OUT/best/step_<N>/: the model weights of the best validation so far (the trainer's --eval.metric)."""
_STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the run."""


# -- safe metadata loading -----------------------------------------------------------------------
_ALLOWED_MODULE_PREFIXES = (
    "torch.distributed.checkpoint.",
    "torch.distributed._shard.",
    "torch.distributed.tensor",
)
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
}
_TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}
_TORCH_ENUMS = {"strided", "sparse_coo", "contiguous_format", "preserve_format", "channels_last"}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's `.metadata` (dataclasses of shapes, dtypes, offsets) and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (
            module.startswith(_ALLOWED_MODULE_PREFIXES)
            or (module, name) in _ALLOWED_GLOBALS
            or (module == "torch" and (name in _TORCH_DTYPES or name in _TORCH_ENUMS))
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which is not allowed")


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with an allow-list unpickler for the metadata file."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / ".metadata"
        if not path.is_file():
            raise CheckpointError(f"{self.path}: no .metadata file (incomplete checkpoint)")
        try:
            metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{path}: {e}") from None
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


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
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = _STEP_RE.match(p.name)
            if m and p.is_dir() and (p / ".metadata").is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1][1] if done else None

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
        reader = SafeFileSystemReader(str(path))
        metadata = reader.read_metadata()
        pickled = [
            k for k, md in metadata.state_dict_metadata.items() if isinstance(md, BytesStorageMetadata)
        ]
        if pickled:
            raise CheckpointError(f"{path}: holds pickled values {pickled[:5]}; refusing to load them")
        from trainer.checkpoint_errors import check_files, unwrap

        check_files(path)  # a missing or truncated data file: a CheckpointError naming it, before reading
        try:
            dcp.load(state, storage_reader=SafeFileSystemReader(str(path)))
        except CheckpointException as e:  # a BaseException, which `except Exception` would miss
            raise unwrap(path, e) from None

    @staticmethod
    def keys(path: str | os.PathLike) -> set[str]:
        """Flattened state keys stored in a checkpoint (to check what a checkpoint holds before loading)."""
        return set(SafeFileSystemReader(str(path)).read_metadata().state_dict_metadata)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
