"""Output folders: every command that writes one goes through `claim`, so none of them deletes a file it
did not write, restarts over a finished output without a word, or serves a result made from other
inputs.

A command's output folder holds a record, ``.store-output.json``::

    {"command": "train", "entries": ["checkpoints", "summary.json", ...], "inputs": {...}}

``entries`` are the top-level names the command wrote there (recorded before it writes each, so a
crash leaves them listed); ``inputs`` say what the output was made from: the data's fingerprint, the
SID table's, the flags that shape the result. `claim` decides what happens to an existing folder:

* absent, or empty: created, recorded as this command's;
* holding this command's earlier output: refused (`OutputExists`, exit 2) unless ``overwrite``, which
  removes only the recorded entries (files the user put beside them stay), or ``resume``/``reuse``,
  which keep it (the caller compares ``inputs`` with `differences`);
* holding files this command did not write (no record, or another command's): refused, unless
  ``overwrite``: then those files are kept and the command writes beside them. A folder written before
  records existed counts as the command's own when it holds the command's ``legacy`` marker files
  (``spec.json`` for a dataset): the names matching its ``owned`` patterns are then its entries (and
  they count as recorded when a run of the command died before recording them).

Outputs that must be local (runs, SID tables, reports: they are written with local-file APIs) refuse
an object-store location by name instead of creating a folder called ``s3:``.

An input's identity in ``inputs`` is a fingerprint: a dataset's is the one its spec.json records (over
its shards' names and sizes, `DatasetSpec.content_hash`), an SID table's or a run's is
`folder_fingerprint` (its record files' bytes and the sizes of the rest).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from data_pipeline import fs
from data_pipeline.cli import ConfigError
from data_pipeline.errors import DataError

RECORD = ".store-output.json"
"""The record of what a command wrote into its output folder."""


class OutputExists(DataError, ConfigError):
    """An output folder that the command must not write into as asked (exit 2). A `DataError` and a
    `ConfigError`, like `fs.StorageError`: every command reports it as a bad --out."""


@dataclass
class Output:
    """A claimed output folder. ``previous``: the record found there (None: fresh or foreign)."""

    location: str
    command: str
    previous: dict | None = None
    kept: list[str] = field(default_factory=list)  # foreign entries left in place
    stale: list[str] = field(default_factory=list)  # the earlier output's entries, until `clear`
    entries: list[str] = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    write: bool = True  # False on ranks other than the main one: they only read

    @property
    def path(self) -> Path:
        return Path(fs.local_path(self.location))

    def clear(self) -> None:
        """Remove the earlier output's entries (only those), its marker file first, and create the
        folder with a fresh record."""
        if self.write:
            for name in self.stale:
                _remove(self.location, name)
            fs.makedirs(self.location)
            self.save()
        self.stale = []

    def add(self, *names: str) -> None:
        """Record top-level names this command writes (call before writing them)."""
        new = [n for n in names if n not in self.entries]
        if new:
            self.entries.extend(new)
            self.save()

    def set_inputs(self, inputs: dict) -> None:
        self.inputs = plain(inputs)
        self.save()

    def save(self) -> None:
        if not self.write:
            return
        record = {"command": self.command, "entries": sorted(self.entries), "inputs": self.inputs}
        fs.write_text(fs.join(self.location, RECORD), json.dumps(record, indent=1, sort_keys=True) + "\n")


def read_record(out: str | os.PathLike) -> dict | None:
    """The record in an output folder (None: none, or unreadable)."""
    loc = fs.join(fs.location(out), RECORD)
    try:
        if not fs.is_file(loc):
            return None
        record = json.loads(fs.read_text(loc))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _names(out: str) -> list[str]:
    return [e.base_name for e in fs.list_dir(out) if e.base_name != RECORD]


def _remove(out: str, name: str) -> None:
    loc = fs.join(out, name)
    if fs.is_local(loc):
        p = Path(fs.local_path(loc))
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        return
    fs.delete_file(loc)
    fs.delete_dir(loc)


def _listing(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def claim(
    out: str | os.PathLike,
    command: str,
    *,
    flag: str = "--out",
    overwrite: bool = False,
    resume: bool = False,
    replace: bool = False,
    local: bool = False,
    legacy: str | Sequence[str] = (),
    owned: Iterable[str] = (),
    hint: str = "",
    write: bool = True,
    clear: bool = True,
    label: str = "",
) -> Output:
    """Take ``out`` as ``command``'s output folder (see the module docstring); `OutputExists` names
    ``flag`` and what is there. ``resume``: an earlier output of this command is kept as it is (the
    caller continues or reuses it). ``replace``: an earlier output of this command is replaced without
    ``overwrite`` (an output derived from others', such as a report). ``hint``: appended to the refusal
    (e.g. "--resume to continue it"). ``write=False``: decide only (ranks other than the main one); nothing is created or removed.
    ``clear=False``: the earlier output stays until the caller's `Output.clear` (when the new one is
    ready to take its place)."""
    loc = fs.location(out)
    label = label or command
    if not loc:
        raise ConfigError(f"{flag} is required (an output folder)")
    if local and not fs.is_local(loc):
        raise OutputExists(
            f"{flag} {loc}: must be a local folder (a path or file:// URI); {label} does not write to "
            "object storage: write locally, then copy the folder to the store"
        )
    if fs.is_file(loc):
        raise OutputExists(f"{flag} {loc}: exists and is a file, not a folder")
    if fs.is_local(loc):
        p = Path(fs.local_path(loc))
        probe = next((a for a in (p, *p.parents) if a.exists()), None)
        if probe is not None and not os.access(probe, os.W_OK | os.X_OK):
            raise OutputExists(f"{flag} {loc}: cannot write there ({probe}: permission denied)")
    names = _names(loc) if fs.is_dir(loc) else []
    markers = (legacy,) if isinstance(legacy, str) else tuple(legacy)
    record = read_record(loc)
    patterns = (*markers, *owned)
    ours: list[str] = []
    if record is not None and record.get("command") == command:  # recorded, or named as its own
        recorded = set(record.get("entries", []))
        ours = [n for n in names if n in recorded or any(fnmatch(n, p) for p in patterns)]
    elif record is None and any(m in names for m in markers):
        ours = [n for n in names if any(fnmatch(n, p) for p in patterns)]
    previous = record if ours and record is not None and record.get("command") == command else None
    if previous is None and ours:  # a legacy output: described by its owned names
        previous = {"command": command, "entries": ours, "inputs": {}}
    foreign = [n for n in names if n not in ours and not n.startswith(".")]
    result = Output(loc, command, previous=previous, kept=foreign, write=write)
    if previous is not None and resume:
        result.entries = list(ours)
        result.inputs = dict(previous.get("inputs", {}))
        if write:
            result.save()
        return result
    if previous is not None and not (overwrite or replace):
        more = f", {hint}" if hint else ""
        raise OutputExists(
            f"{flag} {loc}: holds an earlier {label} output ({_listing(ours)}); pass --overwrite to "
            f"replace it{more}, or choose another {flag}"
        )
    if foreign and not overwrite:
        owner = f" (written by {record['command']})" if record and record.get("command") else ""
        raise OutputExists(
            f"{flag} {loc}: folder holds files {label} did not write{owner}: {_listing(foreign)}; "
            f"choose an empty or new {flag}, or pass --overwrite to write beside them (they are kept)"
        )
    # only what an earlier run of this command wrote; its marker (spec.json) first: a folder that is half
    # replaced must not look like a finished output
    result.stale = sorted(ours, key=lambda n: n not in markers)
    if clear:
        result.clear()
    return result


DATASET = "dataset"
"""The command name of a dataset folder's record: `generate` and every `convert` write the same kind
of output, so either may replace the other's with --overwrite."""


def claim_dataset(out: str | os.PathLike, overwrite: bool, clear: bool = True) -> Output:
    """`claim` for a dataset folder (a path or an object-store URI): its entries are spec.json, the
    split folders and the item table."""
    from data_pipeline.spec import ITEMS_DIR, SPEC_FILE, SPLITS

    return claim(
        out, DATASET, overwrite=overwrite, legacy=SPEC_FILE, owned=(*SPLITS, ITEMS_DIR, "generator.json"),
        clear=clear, label="dataset (generate/convert)",
    )  # fmt: skip


# -- fingerprints ----------------------------------------------------------------------------------
def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:16]


def _sizes(loc: str) -> list[bytes]:
    return [
        f"{e.base_name}:{e.size}".encode()
        for e in fs.list_dir(loc)
        if e.is_file and not e.base_name.startswith(".")
    ]


def folder_fingerprint(folder: str | os.PathLike, files: Sequence[str]) -> str:
    """An output's identity: the bytes of its small record ``files`` (meta.json, summary.json) and the
    names and sizes of everything else in it (top level)."""
    loc = fs.location(folder)
    parts = []
    for name in files:
        f = fs.join(loc, name)
        parts.append(fs.read_bytes(f) if fs.is_file(f) else b"")
    return _digest([*parts, *_sizes(loc)])


def plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so records compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def differences(before: dict, now: dict, prefix: str = "") -> list[str]:
    """What changed between two ``inputs`` dicts, one phrase per changed leaf ("epochs: 2 -> 3")."""
    before, now, out = plain(before), plain(now), []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key, "<unset>"), now.get(key, "<unset>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differences(a, b, f"{name}."))
        elif a != b:
            out.append(f"{name}: {_short(a)} -> {_short(b)}")
    return out


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 60 else s[:57] + "..."
