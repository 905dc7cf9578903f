"""Any CSV or parquet table -> dataset (``python -m data_pipeline convert table``).

Sources (--src): one ``.csv`` / ``.csv.gz`` / ``.parquet`` file, or a folder of them (one format per
folder; files are read in name order; hidden files are skipped). CSV files are comma-separated with
a header row; every file must hold the columns of the first. Rows are streamed in bounded chunks
(``ConvertConfig.block_size`` bytes of CSV text, 65,536 parquet rows) in two passes: the first checks
the values and collects each categorical column's distinct values, the second writes the shards.

Columns, by flag (each column at most one role):

* ``--label COL`` (required): 0/1 as integers, floats, bool, or the strings ``true`` / ``false``.
  Anything else, or a missing label, is a DataError naming the file, the column and the value.
* ``--time COL``: integer / float seconds (floored), a parquet timestamp or date, or ISO-8601
  strings. Not a feature; it becomes ``spec.timestamp`` (int64 seconds) and the split is by time:
  the oldest ``1 - valid - test`` of the rows are train, the latest ``--test-frac`` test (whole
  timestamps go to one split, as in the other converters). Without --time the split is a seeded
  random one per row (``--seed``; the same seed and source give the same split) and
  ``spec.timestamp`` is ``row_index``, the row's position in the source.
* ``--dense COLS``: float features (nulls, NaN and +-inf become 0). Values are written as they
  are, not normalised.
* ``--sparse COLS``: single-valued categorical features.
* ``--multi COLS``: multi-valued categorical features: parquet list columns, or strings with the
  values separated by ``|`` (``"a|b|c"``; an empty cell is an empty list, empty and null elements
  are dropped).
* ``--user COL``: the user column (``spec.user_id``, for GAUC); also a high-cardinality sparse
  feature. Without it ``spec.user_id`` is "" (no GAUC).
* ``--item COL``: the item column (``spec.item_id``, ``item_ref``): item IDs are dense indices
  ``0..num_items-1`` (0 = missing) and an item table ``items/`` lists them (no side information).
  Without it ``spec.item_id`` is "" (no item tokens, no tail-item metrics).

Columns no flag names are classified by type: floats -> dense; integers, bools and strings ->
sparse; parquet lists -> multi-valued sparse. In CSV, a column whose values all parse as integers
is an integer column, one whose values all parse as numbers (some not integers) a float column,
anything else a string column. All-null columns and parquet types without a meaning here (dates
not named by --time, binary, structs) are skipped with a warning, and so are guessed sparse columns
that are row identifiers (no name, e.g. a CSV's index column, or a distinct value on every row).

Categorical values become dense indices: row 0 of each table is reserved for missing values, the
distinct values seen get rows 1..V in sorted order of their key (integer columns: the value; strings
and other CSV text: a stable 64-bit hash of the text, FNV-1a + splitmix64, so two distinct strings
share a row with probability ~V^2 / 2^65), so ``vocab_size = V + 1`` and ``id_mapping`` is ``mod``
(the identity). Pass 1 saw every value, so pass 2 meets no unknown one. A CSV column whose type
changes after its first chunk (numbers first, text later) is read once more to collect its values.
A sparse feature with at least ``--high-card-threshold`` distinct values (default 1000) is marked
``high_cardinality`` (STORE tokenizes it into semantic IDs); the user and the item column always are.
The CLI prints the inferred spec (``describe``), one line per column.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from data_pipeline import fs
from data_pipeline.converters.checks import require_rows
from data_pipeline.converters.common import (
    ConvertConfig,
    Histogram,
    SplitSink,
    check_out,
    csv_batches,
    finish,
    hash_strings,
    make_table,
    prepare_out,
    read_first_line,
    split_codes,
    time_cutoffs,
    write_items,
)
from data_pipeline.hashing import splitmix64
from data_pipeline.spec import SPEC_FILE, DataError, DatasetSpec, ItemTable, SparseFeature

log = logging.getLogger("data_pipeline.convert.table")

DEFAULT_HIGH_CARD_THRESHOLD = 1000
MULTI_SEPARATOR = "|"
PARQUET_BATCH_ROWS = 65_536
ROW_INDEX = "row_index"
"""``spec.timestamp`` without --time: the row's position in the source (files in name order)."""
_TIME_LIKE = {"time", "timestamp", "ts", "date", "datetime", "event_time"}


@dataclass
class TableOptions:
    """The ``convert table`` flags that say what the columns are."""

    label: str = ""
    user: str = ""
    item: str = ""
    time: str = ""
    dense: list[str] = field(default_factory=list)
    sparse: list[str] = field(default_factory=list)
    multi: list[str] = field(default_factory=list)
    high_card_threshold: int = DEFAULT_HIGH_CARD_THRESHOLD
    seed: int = 0

    def roles(self) -> dict[str, str]:
        """Column -> the flag naming it; a DataError when a column is named twice."""
        out: dict[str, str] = {}
        named = [("--label", [self.label]), ("--time", [self.time]), ("--user", [self.user])]
        named += [("--item", [self.item]), ("--dense", self.dense), ("--sparse", self.sparse)]
        named += [("--multi", self.multi)]
        for flag, cols in named:
            for c in filter(None, cols):
                if c in out and out[c] != flag:
                    raise DataError(f"column {c!r} is named by both {out[c]} and {flag}")
                out[c] = flag
        return out

    def validate(self) -> None:
        if not self.label:
            raise DataError("convert table: --label COL is required")
        if self.high_card_threshold < 1:
            raise DataError(f"--high-card-threshold must be >= 1, got {self.high_card_threshold}")
        self.roles()


# -- sources ----------------------------------------------------------------------------------------
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    return None


def find_sources(src: Path) -> tuple[list[Path], str]:
    """The source files in name order and their format ('csv' or 'parquet')."""
    if src.is_file():
        fmt = _format_of(src)
        if fmt is None:
            raise DataError(f"--src {src}: not a .csv or .parquet file")
        return [src], fmt
    if not src.is_dir():
        raise DataError(f"--src {src}: no such file or folder")
    files = sorted(
        p for p in src.iterdir() if not p.name.startswith((".", "_")) and p.is_file() and _format_of(p)
    )
    formats = {_format_of(p) for p in files}
    if not files:
        raise DataError(f"--src {src}: no .csv or .parquet files in the folder")
    if len(formats) > 1:
        raise DataError(f"--src {src}: holds both .csv and .parquet files; keep one format per folder")
    return files, formats.pop()


class _Source:
    """Streams (path, record batch) over every file; every file must hold the first file's columns."""

    def __init__(self, files: list[Path], fmt: str, block_size: int) -> None:
        self.files, self.fmt, self.block_size = files, fmt, block_size
        self.names: dict[Path, list[str]] = {}
        self.types: dict[str, pa.DataType] = {}  # parquet: the first file's column types
        for path in files:
            self.names[path] = self._csv_header(path) if fmt == "csv" else self._parquet_schema(path)
        self.columns = self.names[files[0]]

    @staticmethod
    def _csv_header(path: Path) -> list[str]:
        try:
            line = read_first_line(path)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path}: unreadable ({e})") from None
        if not line.strip():
            raise DataError(f"{path}: empty file (expected a header row)")
        names = next(csv.reader([line.lstrip("\ufeff")]))
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(f"{path}: duplicate column name(s) {dupes} in the header")
        return names

    def _parquet_schema(self, path: Path) -> list[str]:
        try:
            schema = fs.parquet_file(path).schema_arrow
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
        for f in schema:
            typ = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
            first = self.types.setdefault(f.name, typ)
            if _parquet_kind(first) == "null":  # an all-null column in an earlier file: any type fits
                self.types[f.name] = typ
            elif _parquet_kind(first) != _parquet_kind(typ) and _parquet_kind(typ) != "null":
                raise DataError(f"{path}: column {f.name!r} has type {typ}, but {self.files[0]} has {first}")
        return schema.names

    def check_columns(self, named: dict[str, str]) -> None:
        """Every named column (name -> the flag naming it) and every column of the first file is in
        every file."""
        first = self.files[0]
        needed = {**{c: f"a column of {first.name}" for c in self.columns}, **named}
        for path, names in self.names.items():
            for c, why in needed.items():
                if c not in names:
                    raise DataError(f"{path}: missing column {c!r} ({why}); the file has {names}")

    def batches(self, columns: list[str], desc: str) -> Iterator[tuple[Path, pa.RecordBatch]]:
        for path in tqdm(self.files, desc=desc, unit="file", leave=False, disable=len(self.files) < 2):
            yield from self._file_batches(path, columns)

    def _file_batches(self, path: Path, columns: list[str]) -> Iterator[tuple[Path, pa.RecordBatch]]:
        try:
            if self.fmt == "csv":
                types = {c: pa.string() for c in self.names[path]}
                for b in csv_batches(
                    path, self.names[path], delimiter=",", header=True, types=types, include=columns,
                    block_size=self.block_size,
                ):  # fmt: skip
                    yield path, b
            else:
                pf = fs.parquet_file(path)
                for b in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                    yield path, b
        except DataError:
            raise
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path}: unreadable ({str(e).strip()})") from None


def _parquet_kind(typ: pa.DataType) -> str:
    """int / float / string / list / time (temporal) / null / other."""
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if pa.types.is_boolean(typ) or pa.types.is_integer(typ):
        return "int"
    if pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return "float"
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return "string"
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        inner = _parquet_kind(typ.value_type)
        return "list" if inner in ("int", "float", "string") else "other"
    if pa.types.is_temporal(typ):
        return "time"
    if pa.types.is_null(typ):
        return "null"
    return "other"


def _plain(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr


def _col(batch: pa.RecordBatch, name: str) -> pa.Array:
    return _plain(batch.column(batch.schema.get_field_index(name)))


def _first_failing(arr: pa.Array, typ: pa.DataType) -> object:
    """The first value of ``arr`` that does not cast to ``typ`` (for error messages)."""
    for v in arr.drop_null().to_pylist():
        try:
            pc.cast(pa.array([v]), typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return v
    return None


# -- values -----------------------------------------------------------------------------------------
def labels(arr: pa.Array, path: Path, name: str) -> np.ndarray:
    """A 0/1 label column (ints, floats, bools or 'true'/'false') as float32; DataError otherwise."""
    arr = _plain(arr)
    if arr.null_count:
        raise DataError(f"{path}: column {name!r} (label) has {arr.null_count} missing value(s)")
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        low = pc.utf8_lower(pc.utf8_trim_whitespace(arr))
        words = pc.if_else(pc.equal(low, "true"), "1", pc.if_else(pc.equal(low, "false"), "0", low))
        try:
            values = pc.cast(words, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            bad = _first_failing(words, pa.float64())
            raise DataError(
                f"{path}: column {name!r} (label) must be 0 or 1 (or true/false), got {bad!r}"
            ) from None
    elif pa.types.is_boolean(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        values = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    else:
        raise DataError(f"{path}: column {name!r} (label) has type {arr.type}, expected 0/1 numbers or bool")
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        value = arr[int(np.argmax(bad))].as_py()
        raise DataError(f"{path}: column {name!r} (label) must be 0 or 1 (or true/false), got {value!r}")
    return values.astype(np.float32)


def times(arr: pa.Array, path: Path, name: str) -> np.ndarray:
    """A time column as int64 seconds: integers, floats (floored), timestamps, dates, ISO strings."""
    arr = _plain(arr)
    if arr.null_count:
        raise DataError(f"{path}: column {name!r} (--time) has {arr.null_count} missing value(s)")
    typ = arr.type
    if pa.types.is_integer(typ):
        return arr.cast(pa.int64()).to_numpy(zero_copy_only=False)
    if pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        v = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
        if not np.isfinite(v).all():
            raise DataError(f"{path}: column {name!r} (--time) has non-finite values")
        return np.floor(v).astype(np.int64)
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        return pc.cast(arr, pa.timestamp("s"), safe=False).cast(pa.int64()).to_numpy(zero_copy_only=False)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        for target in (pa.int64(), pa.float64(), pa.timestamp("ns"), pa.timestamp("ns", tz="UTC")):
            try:
                return times(pc.cast(arr, target), path, name)
            except pa.ArrowInvalid:
                continue
        bad = next((v for v in arr.to_pylist() if _unparseable_time(v)), arr[0].as_py())
        raise DataError(f"{path}: column {name!r} (--time): cannot read {bad!r} as a number or an ISO date")
    raise DataError(f"{path}: column {name!r} (--time) has type {typ}, expected numbers, dates or timestamps")


def _unparseable_time(v: str) -> bool:
    for target in (pa.float64(), pa.timestamp("ns"), pa.timestamp("ns", tz="UTC")):
        try:
            pc.cast(pa.array([v]), target)
            return False
        except pa.ArrowInvalid:
            continue
    return True


def dense_values(arr: pa.Array) -> tuple[np.ndarray, int]:
    """A numeric column as float32 with nulls / NaN / inf -> 0, and how many were replaced."""
    v = pc.fill_null(_plain(arr).cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False).copy()
    bad = ~np.isfinite(v)
    v[bad] = 0.0
    return v.astype(np.float32), int(bad.sum())


@dataclass(frozen=True)
class _Keying:
    """How a categorical column's values become keys: 'int' values, 'float' values or 'str' hashes;
    ``split``: a string cell of '|'-separated values; ``lists``: a parquet list column."""

    key: str
    split: bool = False
    lists: bool = False

    @property
    def multi(self) -> bool:
        return self.split or self.lists


def keys(arr: pa.Array, how: _Keying) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(keys, missing, parents) of a column's values: one per row, or for multi-valued columns one
    per list element with ``parents`` its row (null lists contribute nothing)."""
    arr = _plain(arr)
    parents = None
    if how.split:
        arr = pc.split_pattern(arr.cast(pa.string()), MULTI_SEPARATOR)
    if how.multi:
        parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        arr = _plain(pc.list_flatten(arr))
    if how.key == "str":
        k, missing = hash_strings(arr)
    elif how.key == "int":
        missing = arr.is_null().to_numpy(zero_copy_only=False)
        k = pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    else:
        k = pc.fill_null(arr.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        missing = np.isnan(k)
        k = np.where(missing, 0.0, k) + 0.0  # -0.0 -> 0.0
    return k, np.asarray(missing, dtype=bool), parents


class KeySet:
    """The distinct keys of a column, merged chunk by chunk (memory: the distinct keys)."""

    def __init__(self) -> None:
        self.values: np.ndarray | None = None
        self.pending: list[np.ndarray] = []
        self.pending_n = 0

    def add(self, k: np.ndarray) -> None:
        if not len(k):
            return
        u = np.unique(k)
        self.pending.append(u)
        self.pending_n += len(u)
        if self.pending_n > max(1 << 20, 0 if self.values is None else len(self.values)):
            self._merge()

    def _merge(self) -> None:
        parts = ([] if self.values is None else [self.values]) + self.pending
        if parts:
            self.values = np.unique(np.concatenate(parts))
        self.pending, self.pending_n = [], 0

    def final(self) -> np.ndarray:
        self._merge()
        return np.zeros(0, np.int64) if self.values is None else self.values


def encode(vocab: np.ndarray, k: np.ndarray, missing: np.ndarray, path: Path, name: str) -> np.ndarray:
    """Keys -> table rows: 1 + the key's position in the sorted vocabulary; missing -> 0."""
    if not len(vocab):
        if not missing.all():
            raise DataError(f"{path}: column {name!r}: values not seen in the first pass (file changed?)")
        return np.zeros(len(k), np.int64)
    idx = np.minimum(np.searchsorted(vocab, k), len(vocab) - 1)
    unseen = (vocab[idx] != k) & ~missing
    if unseen.any():
        raise DataError(f"{path}: column {name!r}: values not seen in the first pass (file changed?)")
    out = idx.astype(np.int64) + 1
    out[missing] = 0
    return out


# -- pass 1: what each column is ----------------------------------------------------------------------
_CATEGORICAL_FLAGS = ("--sparse", "--multi", "--user", "--item")


@dataclass
class _Column:
    name: str
    flag: str | None
    """The flag naming it; None when it is classified from its type and values."""
    kind: str
    """int / float / string / list / time / null / other; for CSV widened from the text seen so far."""
    arrow_type: pa.DataType | None = None
    """Parquet: its type in the first file."""
    role: str = ""
    """label / time / dense / sparse / multi / skip ('' while a CSV column is undecided)."""
    keyset: KeySet | None = None
    lost: bool = False
    """Its keys were dropped (a CSV column that looked like floats) and must be collected again."""
    text: tuple[Path, object] | None = None
    """CSV: the first value that is not a number, and its file."""
    keying: _Keying | None = None
    vocab: np.ndarray | None = None

    @property
    def type_name(self) -> str:
        return str(self.arrow_type) if self.arrow_type is not None else self.kind


def _csv_kind(col: _Column, arr: pa.Array, path: Path) -> None:
    """Widen a CSV column's kind (null -> int -> float -> string) from one chunk of its text."""
    if col.kind == "string":
        return
    a = arr.drop_null()
    if not len(a):
        return
    if col.kind in ("null", "int"):
        try:
            pc.cast(a, pa.int64())
            col.kind = "int"
            return
        except pa.ArrowInvalid:
            pass
    try:
        pc.cast(a, pa.float64())
        col.kind = "float"
    except pa.ArrowInvalid:
        col.kind = "string"
        col.text = (path, _first_failing(a, pa.float64()))


def _keying(col: _Column, fmt: str) -> _Keying:
    """CSV: integer columns by value, the others by the hash of each cell's text ('|'-split for
    --multi). Parquet: by type."""
    if fmt == "csv":
        if col.role == "multi":
            return _Keying("str", split=True)
        return _Keying("int" if col.kind == "int" else "str")
    if col.kind == "list":
        inner = _parquet_kind(col.arrow_type.value_type)
        return _Keying(inner if inner in ("int", "float") else "str", lists=True)
    if col.role == "multi":  # a parquet string column named by --multi: '|'-separated values
        return _Keying("str", split=True)
    return _Keying(col.kind if col.kind in ("int", "float") else "str")


def _classify(c: _Column, fmt: str) -> None:
    """The column's role from its flag or its kind (parquet: before pass 1, from the schema; CSV:
    after it, from the text); DataErrors for columns that cannot be what their flag says."""
    if c.flag in ("--label", "--time"):
        c.role = c.flag[2:]
        return
    where = f"{c.text[0]}: " if c.text else ""
    if c.flag == "--dense":
        if c.kind in ("string", "list", "time", "other"):
            what = f"value {c.text[1]!r}" if c.text else f"type {c.type_name}"
            raise DataError(f"{where}column {c.name!r} (--dense) is not numeric ({what})")
        c.role = "dense"
    elif c.flag in ("--sparse", "--user", "--item"):
        if c.kind in ("list", "time", "other"):
            hint = " (name list columns with --multi)" if c.kind == "list" else ""
            raise DataError(
                f"column {c.name!r} ({c.flag}) has type {c.type_name}, expected single values{hint}"
            )
        c.role = "sparse"
    elif c.flag == "--multi":
        if fmt == "parquet" and c.kind not in ("list", "string", "null"):
            raise DataError(
                f"column {c.name!r} (--multi) has type {c.type_name}, expected a list or "
                f"'{MULTI_SEPARATOR}'-separated strings"
            )
        c.role = "multi"
    elif c.kind == "float":
        c.role = "dense"
    elif c.kind in ("int", "string"):
        c.role = "sparse"
    elif c.kind == "list":
        c.role = "multi"
    else:
        why = "every value is missing" if c.kind == "null" else f"type {c.type_name} is not a feature"
        log.warning("column %r skipped: %s", c.name, why)
        c.role = "skip"
    if c.role in ("sparse", "multi"):
        c.keying = _keying(c, fmt)
        if c.keyset is None:
            c.keyset = KeySet()
    else:
        c.keyset = None


def _scan(source: _Source, cols: list[_Column], time: str, recollect: bool = False) -> tuple[int, Histogram]:
    """Pass 1: check labels and times, widen CSV kinds, collect the keys of categorical columns.
    With ``recollect``, only collect the keys of the columns whose keys were dropped. Returns (rows,
    histogram of the time column)."""
    skip = ("skip",) if source.fmt == "csv" else ("skip", "dense")  # CSV: dense text is checked
    again = [c for c in cols if c.lost and c.role in ("sparse", "multi")]
    targets = again if recollect else [c for c in cols if c.role not in skip]
    for c in targets if recollect else []:
        c.keyset, c.lost = KeySet(), False
    hist = Histogram()
    rows = 0
    for path, b in source.batches([c.name for c in targets], "collect" if recollect else "scan"):
        rows += b.num_rows
        for c in targets:
            arr = _col(b, c.name)
            if c.role == "label":
                labels(arr, path, c.name)
                continue
            if c.role == "time":
                hist.add(times(arr, path, c.name))
                continue
            if source.fmt == "csv" and not recollect and c.role != "multi":
                before = c.kind
                _csv_kind(c, arr, path)
                widened = c.kind != before and before != "null"  # keys so far were of the old kind
                if c.keyset is not None and (widened or (c.kind == "float" and c.flag is None)):
                    # Collected again after pass 1 if it ends up categorical (a float column is dense).
                    c.keyset, c.lost = None, True
            if c.keyset is not None:
                k, missing, _ = keys(arr, c.keying if source.fmt == "parquet" else _keying(c, "csv"))
                c.keyset.add(k[~missing])
    return rows, hist


# -- the converter ----------------------------------------------------------------------------------
def _check_src_and_out(cfg: ConvertConfig) -> None:
    """ConvertConfig.validate (where --src may also be one file), then refuse a non-empty --out
    without --overwrite before anything is read."""
    if not cfg.src.exists():
        raise DataError(f"--src {cfg.src}: no such file or folder")
    (replace(cfg, src=cfg.src.parent) if cfg.src.is_file() else cfg).validate()
    out = cfg.out
    if fs.is_local(out) and Path(fs.local_path(out)).resolve() == cfg.src.resolve():
        raise DataError(f"--out {out}: must not be the --src folder")
    check_out(out, cfg.overwrite)


def _unique_name(base: str, taken: set[str]) -> str:
    name = base
    while name in taken:
        name = "_" + name
    return name


def _columns(source: _Source, opts: TableOptions) -> list[_Column]:
    roles = opts.roles()
    source.check_columns(roles)
    cols = []
    for name in source.columns:
        flag = roles.get(name)
        if source.fmt == "parquet":
            typ = source.types[name]
            c = _Column(name, flag, _parquet_kind(typ), arrow_type=typ)
            _classify(c, "parquet")
        else:
            c = _Column(name, flag, "null")
            if flag in ("--label", "--time", "--dense"):
                c.role = flag[2:]
            else:
                c.keyset = KeySet()
                if flag in _CATEGORICAL_FLAGS:
                    c.role = "multi" if flag == "--multi" else "sparse"
        cols.append(c)
    if not opts.time:
        guesses = [c for c in source.columns if c.lower() in _TIME_LIKE and c not in roles]
        if guesses:
            log.warning("column(s) %s look like time; pass --time COL to split by time", guesses)
    return cols


def convert(cfg: ConvertConfig, opts: TableOptions | None = None) -> DatasetSpec:
    """Convert the table at cfg.src; returns the written spec (see the module docstring)."""
    opts = opts or TableOptions()
    opts.validate()
    _check_src_and_out(cfg)
    files, fmt = find_sources(cfg.src)
    source = _Source(files, fmt, cfg.block_size)
    cols = _columns(source, opts)

    rows, hist = _scan(source, cols, opts.time)
    require_rows(rows, files, cfg.src)
    if fmt == "csv":
        for c in cols:
            _classify(c, fmt)
    again = [c.name for c in cols if c.lost and c.role in ("sparse", "multi")]
    if again:
        log.info("reading %s again: their type changed mid-file", again)
        _scan(source, cols, opts.time, recollect=True)
    feats = [c for c in cols if c.role in ("sparse", "multi")]
    for c in feats:
        c.vocab, c.keyset = c.keyset.final(), None
    for c in feats:  # guessed sparse columns that are row identifiers, e.g. a CSV's unnamed index
        if c.flag is None and c.role == "sparse" and (not c.name or (rows >= 100 and len(c.vocab) >= rows)):
            log.warning(
                "column %r skipped: %s (name it with --sparse to keep it)",
                c.name,
                "an unnamed column (a row index?)" if not c.name else "every row has its own value, a row ID",
            )
            c.role = "skip"
    feats = [c for c in feats if c.role != "skip"]

    # -- the spec --
    sparse = [
        SparseFeature(
            c.name,
            len(c.vocab) + 1,
            multi=c.role == "multi",
            item_ref=c.flag == "--item",
            high_cardinality=c.flag in ("--user", "--item") or len(c.vocab) >= opts.high_card_threshold,
        )
        for c in feats
    ]
    dense = [c.name for c in cols if c.role == "dense"]
    timestamp = opts.time or _unique_name(ROW_INDEX, set(source.columns))
    num_items = next((len(c.vocab) + 1 for c in feats if c.flag == "--item"), 0)
    spec = DatasetSpec(
        name=(cfg.src.name.split(".")[0] if cfg.src.is_file() else cfg.src.resolve().name) or "table",
        label=opts.label,
        dense=dense,
        sparse=sparse,
        item_id=opts.item,
        user_id=opts.user,
        timestamp=timestamp,
        id_mapping="mod",
        item_table=ItemTable(num_items, id_column=opts.item, embedding_column=None) if opts.item else None,
    )
    spec.validate(fs.join(cfg.out, SPEC_FILE))
    fields = [pa.field(spec.label, pa.float32()), *(pa.field(c, pa.float32()) for c in dense)]
    fields += [pa.field(f.name, pa.list_(pa.int64()) if f.multi else pa.int64()) for f in sparse]
    schema = pa.schema([*fields, pa.field(timestamp, pa.int64())])

    if opts.time:
        t_valid, t_test = time_cutoffs(hist, cfg.valid_frac, cfg.test_frac)
        log.info("split by %r: valid from %d, test from %d", opts.time, t_valid, t_test)
    else:
        log.info(
            "no --time: random split per row (seed %d), %.0f%% train / %.0f%% valid / %.0f%% test",
            opts.seed, 100 * (1 - cfg.valid_frac - cfg.test_frac), 100 * cfg.valid_frac, 100 * cfg.test_frac,
        )  # fmt: skip

    # -- pass 2: write --
    prepare_out(cfg.out, cfg.overwrite)
    read = [opts.label, *dense, *(c.name for c in feats), *([opts.time] if opts.time else [])]
    row, repaired = 0, 0
    with SplitSink(cfg.out, schema, cfg) as sink, tqdm(total=rows, desc="write table", unit="row") as bar:
        for path, b in source.batches(read, "write"):
            m = b.num_rows
            out: dict[str, np.ndarray | pa.Array] = {
                opts.label: labels(_col(b, opts.label), path, opts.label)
            }
            for c in dense:
                out[c], n_bad = dense_values(_col(b, c))
                repaired += n_bad
            for c in feats:
                k, missing, parents = keys(_col(b, c.name), c.keying)
                ids = encode(c.vocab, k, missing, path, c.name)
                if parents is None:
                    out[c.name] = ids
                else:
                    keep = ~missing
                    lengths = np.bincount(parents[keep], minlength=m)
                    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
                    out[c.name] = pa.ListArray.from_arrays(offsets, pa.array(ids[keep], pa.int64()))
            if opts.time:
                out[timestamp] = times(_col(b, opts.time), path, opts.time)
                codes = split_codes(out[timestamp], t_valid, t_test)
            else:
                out[timestamp] = np.arange(row, row + m, dtype=np.int64)
                codes = random_split(out[timestamp], opts.seed, cfg.valid_frac, cfg.test_frac)
            sink.write(make_table(out, schema), codes)
            row += m
            bar.update(m)
        split_rows = sink.close()
    if repaired:
        log.warning("replaced %d missing / NaN / inf dense values with 0", repaired)
    for s, n in split_rows.items():
        if n == 0:
            log.warning("split %r got no rows (%d rows in all)", s, row)
    if opts.item:
        write_items(cfg.out, pa.table({opts.item: pa.array(np.arange(num_items, dtype=np.int64))}), cfg)
    return finish(spec, cfg.out, split_rows)


def random_split(rows: np.ndarray, seed: int, valid_frac: float, test_frac: float) -> np.ndarray:
    """0 train / 1 valid / 2 test per global row index, from a hash of (seed, row): reproducible and
    independent of how the source is chunked."""
    salt = splitmix64(np.array([seed], dtype=np.int64).astype(np.uint64))[0]
    u = (splitmix64(rows.astype(np.uint64) ^ salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return (u >= 1 - valid_frac - test_frac).astype(np.int8) + (u >= 1 - test_frac).astype(np.int8)


def describe(spec: DatasetSpec) -> str:
    """The inferred spec, one line per column: name, kind, vocab, high-cardinality or not."""
    rows = [(spec.label, "label", "", "")]
    rows += [(c, "dense", "", "") for c in spec.dense]
    for f in spec.sparse:
        kind = "multi" if f.multi else "sparse"
        if f.name == spec.item_id:
            kind += " (item)"
        elif f.name == spec.user_id:
            kind += " (user)"
        rows.append((f.name, kind, str(f.vocab_size), "high-card" if f.high_cardinality else "static"))
    is_row = spec.timestamp.lstrip("_") == ROW_INDEX
    rows.append((spec.timestamp, "row order (random split)" if is_row else "time (split)", "", ""))
    width = max(len(r[0]) for r in rows)
    head = f"{'column':<{width}}  {'kind':<24}  {'vocab':>10}  cardinality"
    lines = [head] + [f"{n:<{width}}  {k:<24}  {v:>10}  {h}".rstrip() for n, k, v, h in rows]
    if not spec.user_id:
        lines.append("(no --user: no GAUC)")
    if not spec.item_id:
        lines.append("(no --item: no item tokens, no tail-item metrics)")
    return "\n".join(lines)
