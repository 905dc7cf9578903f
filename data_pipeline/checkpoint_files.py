"""The files of a trainer checkpoint, for every package that reads one (the trainer resuming, the
tokenizer taking a finished run's learned tables): where they lie, which are complete, what they
hold, and why one cannot be loaded, in words that name its folder and file.

Layout of a run folder OUT::

    OUT/checkpoints/step_<N>/          complete checkpoints (DCP files + .metadata)
    OUT/checkpoints/.tmp-step_<N>/     being written (renamed once every rank finished)
    OUT/best/step_<N>/                 the weights of the best validation (the trainer's --eval.metric)

Loading never unpickles an arbitrary object: DCP's own metadata file goes through an allow-list
unpickler, and a checkpoint holding pickled values (bytes) is refused. DCP reports every failure of
a load as a `CheckpointException`, a *BaseException* (``except Exception`` does not catch it) whose
text is a traceback per rank; a truncated ``__0_0.distcp`` shows up as ``RuntimeError:
PytorchStreamReader failed reading zip archive`` without the file's name. Here:

* `check_files` compares every data file a checkpoint's ``.metadata`` lists with what is on disk
  (exists, holds at least the bytes the metadata points into): a cheap ``stat`` per file, before
  anything is read, that names the missing or truncated file;
* `unwrap` turns a `CheckpointException` into a `CheckpointError` naming the checkpoint when a file
  could not be read, or into the first rank's own exception otherwise (a missing key, a shape
  mismatch: the caller says the checkpoint does not fit the model);
* `describe` is the last resort of ``python -m trainer``: a `CheckpointException` that escaped the
  trainer, explained from the run folder's checkpoints.

Writing (with the ranks' barriers) is the trainer's: ``trainer.checkpoint.CheckpointManager``.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
"""OUT/best/step_<N>/: the model weights of the best validation so far (the trainer's --eval.metric)."""
STEP_RE = re.compile(r"^step_(\d+)$")


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


# -- which checkpoints are there ------------------------------------------------------------------
def complete(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of the complete checkpoints under ``root`` (renamed, with .metadata), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and (p / ".metadata").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root`` (None when there is none)."""
    done = complete(root)
    return done[-1][1] if done else None


def keys(path: str | os.PathLike) -> set[str]:
    """Flattened state keys stored in checkpoint ``path`` (to check what it holds before loading)."""
    return set(SafeFileSystemReader(str(path)).read_metadata().state_dict_metadata)


def load(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Load checkpoint ``path`` into ``state`` in place (sharded tensors are resharded as needed; every
    rank of a distributed run calls it). CheckpointError naming the file for a pickled value, a
    missing or truncated file; a checkpoint that does not fit raises the first rank's own exception."""
    metadata = SafeFileSystemReader(str(path)).read_metadata()
    pickled = [k for k, md in metadata.state_dict_metadata.items() if isinstance(md, BytesStorageMetadata)]
    if pickled:
        raise CheckpointError(f"{path}: holds pickled values {pickled[:5]}; refusing to load them")
    check_files(path)  # a missing or truncated data file: a CheckpointError naming it, before reading
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(str(path)))
    except CheckpointException as e:  # a BaseException, which `except Exception` would miss
        raise unwrap(path, e) from None


def read_tensors(path: str | os.PathLike, names: list[str]) -> dict[str, torch.Tensor]:
    """{key: full tensor} of the keys ``names`` of checkpoint ``path``, read in this process alone
    (e.g. a finished run's embedding tables)."""
    meta = SafeFileSystemReader(str(path)).read_metadata().state_dict_metadata
    state = {k: torch.empty(tuple(meta[k].size), dtype=meta[k].properties.dtype) for k in names}
    load(path, state)
    return state


# -- why a checkpoint cannot be loaded ------------------------------------------------------------
UNREADABLE = (OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)
"""Exceptions of reading a checkpoint's files (beside torch's RuntimeError from its zip reader)."""


def check_files(path: str | os.PathLike) -> None:
    """CheckpointError naming the first data file of the checkpoint folder ``path`` that its
    ``.metadata`` lists but that is missing or shorter than the bytes the metadata points into."""
    path = Path(path)
    metadata = SafeFileSystemReader(str(path)).read_metadata()  # CheckpointError without .metadata
    needed: dict[str, int] = {}
    for item in (metadata.storage_data or {}).values():
        end = int(item.offset) + int(item.length)
        needed[item.relative_path] = max(needed.get(item.relative_path, 0), end)
    for name, end in sorted(needed.items()):
        file = path / name
        if not file.is_file():
            raise CheckpointError(
                f"{file}: missing: checkpoint {path} is incomplete (its .metadata lists this file); "
                "delete the checkpoint to resume from an older one"
            )
        size = file.stat().st_size
        if size < end:
            raise CheckpointError(
                f"{file}: truncated ({size:,} bytes, the checkpoint's .metadata points up to byte {end:,}): "
                f"checkpoint {path} cannot be read; delete it to resume from an older one"
            )


def _failures(exc: CheckpointException) -> list[BaseException]:
    return [failure[0] for _, failure in sorted(exc.failures.items())]


def _is_unreadable(e: BaseException) -> bool:
    return isinstance(e, UNREADABLE) or (isinstance(e, RuntimeError) and "PytorchStreamReader" in str(e))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def unwrap(path: str | os.PathLike, exc: CheckpointException) -> BaseException:
    """What a `CheckpointException` of loading checkpoint ``path`` means: a `CheckpointError` naming
    the file (from `check_files`) or the checkpoint when a file could not be read; else the first
    failing rank's own exception (e.g. DCP's ValueError for a shape mismatch), for the caller to
    report as a checkpoint that does not fit."""
    failures = _failures(exc)
    unreadable = [e for e in failures if _is_unreadable(e)]
    if unreadable or not failures:
        try:
            check_files(path)
        except CheckpointError as e:
            return e
        why = _first_line(unreadable[0]) if unreadable else str(exc).strip().splitlines()[0]
        return CheckpointError(f"{path}: the checkpoint cannot be read, a file of it is corrupt ({why})")
    return failures[0]


def describe(out: str | os.PathLike, exc: CheckpointException) -> str:
    """The message for a `CheckpointException` that escaped a trainer run writing to ``out``: the
    newest checkpoint in OUT/checkpoints (what --resume loads) and the best weights in OUT/best (what
    the test loads) are checked for missing or truncated files first."""
    candidates = [p for p in (latest(Path(out) / CHECKPOINT_DIR),) if p is not None]
    candidates += [p for _, p in reversed(complete(Path(out) / BEST_DIR))]
    for path in candidates:
        try:
            check_files(path)
        except CheckpointError as e:
            return str(e)
    failures = _failures(exc)
    if any(_is_unreadable(e) for e in failures):
        where = candidates[0] if candidates else Path(out) / CHECKPOINT_DIR
        return f"{where}: the checkpoint cannot be read, a file of it is corrupt ({_first_line(failures[0])})"
    why = _first_line(failures[0]) if failures else str(exc).strip().splitlines()[0]
    return f"{Path(out) / CHECKPOINT_DIR}: a checkpoint does not fit this model/run ({why})"
