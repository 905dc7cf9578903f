"""Why a checkpoint cannot be loaded, in words that name its folder and file (the trainer exits 4).

DCP (`torch.distributed.checkpoint`) reports every failure of a load as a `CheckpointException`, a
*BaseException* (so ``except Exception`` does not catch it) whose text is a traceback per rank; a
truncated ``__0_0.distcp`` shows up as ``RuntimeError: PytorchStreamReader failed reading zip
archive`` without the file's name. Here:

* `check_files` compares every data file a checkpoint's ``.metadata`` lists with what is on disk
  (exists, holds at least the bytes the metadata points into): a cheap ``stat`` per file, before
  anything is read, that names the missing or truncated file;
* `unwrap` turns a `CheckpointException` into a `CheckpointError` naming the checkpoint when a file
  could not be read, or into the first rank's own exception otherwise (a missing key, a shape
  mismatch: the caller says the checkpoint does not fit the model);
* `describe` is the last resort of ``python -m trainer``: a `CheckpointException` that escaped the
  trainer, explained from the run folder's checkpoints.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

from torch.distributed.checkpoint.api import CheckpointException

from trainer.checkpoint import (
    BEST_DIR,
    CHECKPOINT_DIR,
    CheckpointError,
    CheckpointManager,
    SafeFileSystemReader,
)

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
    candidates = [p for p in (CheckpointManager(out, keep=1).latest(),) if p is not None]
    candidates += [p for _, p in reversed(CheckpointManager(out, keep=1, subdir=BEST_DIR).complete())]
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
