"""Pieces every converter shares: the config, chunked CSV reading with clear errors, stable string
hashing, exact vocabularies for small columns, time-split cut-offs and the split writers.

Memory is bounded by the CSV block size (``ConvertConfig.block_size``: Arrow queues up to 32 blocks
of raw text) and the parquet row-group size (rows are buffered per split up to one row group); no converter reads a whole source file at once, except MovieLens, which
keeps four numbers per rating in memory to sort by time (see ``movielens.py``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from data_pipeline import fs, outdir
from data_pipeline.hashing import splitmix64
from data_pipeline.spec import ITEMS_DIR, SPEC_FILE, SPLITS, DataError, DatasetSpec
from data_pipeline.writer import ShardWriter

log = logging.getLogger("data_pipeline.convert")


@dataclass
class ConvertConfig:
    """Options of ``python -m data_pipeline convert``."""

    src: Path
    """Folder with the original source files."""
    out: str
    """Dataset folder to write (spec.json, train/valid/test/, items/): a path or an object-store URI
    (s3://bucket/prefix, gs://, hdfs://; credentials from the environment, see data_pipeline/fs.py)."""
    rows_per_shard: int = 1_000_000
    """Rows per parquet shard."""
    valid_frac: float = 0.1
    """Fraction of rows (by time) in the valid split."""
    test_frac: float = 0.1
    """Fraction of rows (by time) in the test split: the latest ones."""
    overwrite: bool = False
    """Replace the dataset in a non-empty --out folder."""
    hist_len: int = 20
    """MovieLens: keep the user's last hist_len previously rated movies as ``hist_items``."""
    vocab_size: int = 1_000_000
    """Criteo/Avazu: upper bound on the rows of a hashed feature's table."""
    vocab_sizes: dict[str, int] = field(default_factory=dict)
    """Criteo/Avazu: per-feature table sizes that override the defaults (feature name -> rows)."""
    num_items: int | None = None
    """Criteo/Avazu: hash buckets of the pseudo-item column (None: the dataset's default)."""
    item_column: str | None = None
    """Criteo/Avazu: source column used as the pseudo-item (None: the dataset's default)."""
    block_size: int = 4 << 20
    """Bytes of CSV text per parsed chunk. Arrow reads up to 32 blocks ahead, so this bounds memory."""
    row_group_size: int = 65_536
    """Parquet row-group size of the shards."""

    def validate(self) -> None:
        for flag, v in (("--valid-frac", self.valid_frac), ("--test-frac", self.test_frac)):
            if not 0.0 <= v < 1.0:
                raise DataError(f"{flag} must be in [0, 1), got {v}")
        if self.valid_frac + self.test_frac >= 1.0:
            raise DataError(
                f"--valid-frac + --test-frac must be < 1 (train needs rows), got "
                f"{self.valid_frac} + {self.test_frac}"
            )
        if self.rows_per_shard <= 0:
            raise DataError(f"--rows-per-shard must be > 0, got {self.rows_per_shard}")
        if self.hist_len < 0:
            raise DataError(f"--hist-len must be >= 0, got {self.hist_len}")
        if self.vocab_size < 2:
            raise DataError(
                f"--vocab-size must be >= 2 (row 0 is reserved for missing), got {self.vocab_size}"
            )
        for name, v in self.vocab_sizes.items():
            if v < 2:
                raise DataError(f"--vocab-sizes {name}={v}: must be >= 2 (row 0 is reserved for missing)")
        if self.num_items is not None and self.num_items < 2:
            raise DataError(
                f"--num-items must be >= 2 (item 0 is reserved for missing), got {self.num_items}"
            )
        if not self.src.is_dir():
            raise DataError(f"--src {self.src}: folder does not exist")

    def table_size(self, name: str, default: int) -> int:
        """Rows of hashed feature ``name``'s table: --vocab-sizes, else min(default, --vocab-size)."""
        return self.vocab_sizes.get(name, min(default, self.vocab_size))


# -- source files ------------------------------------------------------------------------------------
def find_file(src: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of ``names`` that exists in ``src``; a DataError listing them if none does."""
    for n in names:
        if (src / n).is_file():
            return src / n
    raise DataError(f"--src {src}: missing {what} (expected one of: {', '.join(names)})")


def read_first_line(path: Path, limit: int = 1 << 20) -> str:
    """The first line of a (possibly compressed) text file, without reading the rest."""
    with pa.input_stream(str(path)) as f:
        buf = b""
        while b"\n" not in buf and len(buf) < limit:
            chunk = f.read(65_536)
            if not chunk:
                break
            buf += chunk
    line = buf.split(b"\n", 1)[0].rstrip(b"\r")
    return line.decode("utf-8", errors="replace")


def read_header(path: Path, delimiter: str, required: list[str]) -> list[str]:
    """Column names of a CSV with a header row; DataError naming the missing required columns."""
    names = read_first_line(path).split(delimiter)
    if not names or names == [""]:
        raise DataError(f"{path}: empty file (expected a header row)")
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} in the header (found {names})")
    return names


def count_lines(path: Path) -> int:
    """Lines of a (possibly compressed) text file, counted in 16 MB blocks."""
    n, last = 0, b"\n"
    with pa.input_stream(str(path)) as f:
        while True:
            block = f.read(16 << 20)
            if not block:
                break
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


_COLUMN_NO = re.compile(r"In CSV column #(\d+): ")


def csv_batches(
    path: Path,
    names: list[str],
    *,
    delimiter: str,
    header: bool,
    types: dict[str, pa.DataType],
    include: list[str] | None = None,
    block_size: int = 4 << 20,
) -> Iterator[pa.RecordBatch]:
    """Stream ``path`` (plain or compressed) as record batches of ~block_size bytes of text.

    Memory: Arrow's background reader keeps at most 32 blocks of raw text queued, plus the
    batches being decoded (one per thread).

    Parse errors become a DataError naming the file and the column, without pyarrow's traceback.
    """
    read = pacsv.ReadOptions(column_names=names, skip_rows=1 if header else 0, block_size=block_size)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    convert = pacsv.ConvertOptions(
        column_types=types, include_columns=include or list(types), strings_can_be_null=True
    )
    try:
        with pa.input_stream(str(path)) as stream:
            yield from pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError) as e:
        msg = str(e).strip()
        m = _COLUMN_NO.search(msg)
        if m and int(m.group(1)) < len(names):
            msg = f"column {names[int(m.group(1))]!r}: {msg[m.end() :]}"
        raise DataError(f"{path}: {msg}") from None


def column(batch: pa.RecordBatch, name: str) -> pa.Array:
    return batch.column(batch.schema.get_field_index(name))


def numbers(arr: pa.Array, fill: float = 0.0) -> np.ndarray:
    """A numeric arrow column as float64 numpy, nulls replaced by ``fill``."""
    return pc.fill_null(arr.cast(pa.float64()), fill).to_numpy(zero_copy_only=False)


def ints(arr: pa.Array, path: Path, name: str) -> np.ndarray:
    """An integer column as int64 numpy; a null is a DataError naming the file and column."""
    if arr.null_count:
        raise DataError(f"{path}: column {name!r} has {arr.null_count} missing value(s)")
    return arr.cast(pa.int64()).to_numpy(zero_copy_only=False)


# -- hashing and vocabularies --------------------------------------------------------------------------
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def hash_strings(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Stable 64-bit hash (FNV-1a + splitmix64) of each string, and a mask of missing values.

    Null and empty strings are missing. Same bytes -> same hash on every machine and run, unlike
    Python's ``hash``. Vectorised over rows, one pass per byte position.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    arr = arr.cast(pa.large_binary())
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts, lens = offsets[:-1], np.diff(offsets)
    missing = lens == 0
    if arr.null_count:
        missing |= arr.is_null().to_numpy(zero_copy_only=False)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(int(lens.max()) if n else 0):
            idx = np.nonzero(lens > k)[0]
            h[idx] = (h[idx] ^ data[starts[idx] + k].astype(np.uint64)) * _FNV_PRIME
        h = splitmix64(h)
    return h, missing


def hashed_ids(arr: pa.Array, vocab: int) -> np.ndarray:
    """Table rows of a categorical string column: 0 for missing, else 1 + hash % (vocab - 1)."""
    h, missing = hash_strings(arr)
    ids = (np.uint64(1) + h % np.uint64(vocab - 1)).astype(np.int64)
    ids[missing] = 0
    return ids


def positive_hash(arr: pa.Array) -> np.ndarray:
    """A non-negative int64 hash of each string (for raw user IDs); missing -> 0."""
    h, missing = hash_strings(arr)
    out = (h >> np.uint64(1)).astype(np.int64)
    out[missing] = 0
    return out


class Vocab:
    """Exact string -> ID map built while streaming (IDs 1, 2, ... in order of appearance; 0 = missing).

    For low-cardinality columns only: it holds every distinct value.
    """

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self._keys = pa.array([], pa.string())

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> int:
        """Embedding rows needed: the values plus the missing row 0."""
        return len(self.ids) + 1

    def add(self, values: list[str]) -> None:
        new = [v for v in values if v and v not in self.ids]
        for v in new:
            self.ids[v] = len(self.ids) + 1
        if new:
            self._keys = pa.array(list(self.ids), pa.string())

    def encode(self, arr: pa.Array) -> np.ndarray:
        arr = arr.cast(pa.string())
        self.add(pc.unique(arr.drop_null()).to_pylist())
        idx = pc.index_in(arr, value_set=self._keys)
        return pc.fill_null(pc.add(idx.cast(pa.int64()), 1), 0).to_numpy(zero_copy_only=False)


# -- time ---------------------------------------------------------------------------------------------
def hour_and_weekday(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hour of day (0..23) and weekday (Monday = 0) of Unix seconds, in UTC."""
    ts = ts.astype(np.int64)
    # 1970-01-01 was a Thursday (weekday 3).
    return (ts // 3600) % 24, (ts // 86_400 + 3) % 7


class Histogram:
    """Counts of each distinct int64 value seen, merged chunk by chunk (memory: the distinct values)."""

    def __init__(self) -> None:
        self.values = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)

    def add(self, x: np.ndarray) -> None:
        v, c = np.unique(x.astype(np.int64), return_counts=True)
        allv = np.concatenate([self.values, v])
        allc = np.concatenate([self.counts, c])
        self.values, inv = np.unique(allv, return_inverse=True)
        self.counts = np.bincount(inv, weights=allc, minlength=len(self.values)).astype(np.int64)

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def time_cutoffs(hist: Histogram, valid_frac: float, test_frac: float) -> tuple[int, int]:
    """Timestamps (t_valid, t_test): train = ts < t_valid <= valid < t_test <= test.

    Whole timestamps go to one split, so the split is strictly monotone in time; each cut-off is
    the distinct timestamp whose preceding row count is closest to the target fraction.
    """
    values, counts = hist.values, hist.counts
    n = int(counts.sum())
    before = np.concatenate([[0], np.cumsum(counts)])  # rows before values[i]; before[-1] = n
    bounds = np.concatenate([values, [values[-1] + 1 if len(values) else 0]])

    i_test = int(np.argmin(np.abs(before - n * (1 - test_frac))))
    i_valid = min(int(np.argmin(np.abs(before - n * (1 - test_frac - valid_frac)))), i_test)
    return int(bounds[i_valid]), int(bounds[i_test])


def split_codes(ts: np.ndarray, t_valid: int, t_test: int) -> np.ndarray:
    """0 = train, 1 = valid, 2 = test for each timestamp."""
    return (ts >= t_valid).astype(np.int8) + (ts >= t_test).astype(np.int8)


# -- output ------------------------------------------------------------------------------------------
def check_out(out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an --out that is a file, or one holding an earlier dataset (without --overwrite) or files
    no converter wrote (see `data_pipeline.outdir.claim_dataset`); nothing is changed."""
    outdir.claim_dataset(out, overwrite, clear=False)


def prepare_out(out: str | os.PathLike, overwrite: bool) -> outdir.Output:
    """`check_out`, then remove the earlier dataset (only its files, spec.json first) and record the
    new one's entries. Called only after the sources were checked, so a bad --src never destroys an
    existing dataset."""
    claimed = outdir.claim_dataset(out, overwrite)
    claimed.add(SPEC_FILE, *SPLITS, ITEMS_DIR)
    return claimed


def _write_empty_shard(folder: str, schema: pa.Schema) -> None:
    fs.write_parquet(fs.join(folder, "part-00000.parquet"), schema.empty_table())


class SplitSink:
    """One ShardWriter per split; rows are routed by a split code (0 train, 1 valid, 2 test).

    Rows are buffered per split up to one row group, so row groups stay full-size whatever the
    CSV chunk size. A split that gets no rows still gets one empty shard, so readers find every
    split. On an error the shards completed so far stay (``ShardWriter.abort``) and no spec.json
    is written.
    """

    def __init__(self, out: str | os.PathLike, schema: pa.Schema, cfg: ConvertConfig) -> None:
        self.schema = schema
        self.flush_rows = min(cfg.row_group_size, cfg.rows_per_shard)
        self.writers = [
            ShardWriter(fs.join(out, s), schema, cfg.rows_per_shard, row_group_size=cfg.row_group_size)
            for s in SPLITS
        ]
        self.pending: list[list[pa.Table]] = [[] for _ in SPLITS]
        self.pending_rows = [0 for _ in SPLITS]

    def _add(self, code: int, table: pa.Table) -> None:
        self.pending[code].append(table)
        self.pending_rows[code] += table.num_rows
        if self.pending_rows[code] >= self.flush_rows:
            self._flush(code)

    def _flush(self, code: int) -> None:
        if self.pending[code]:
            self.writers[code].write(pa.concat_tables(self.pending[code]).combine_chunks())
        self.pending[code], self.pending_rows[code] = [], 0

    def write(self, table: pa.Table, codes: np.ndarray) -> None:
        for code in range(len(SPLITS)):
            mask = codes == code
            if mask.all():
                self._add(code, table)
            elif mask.any():
                self._add(code, table.filter(pa.array(mask)))

    def close(self) -> dict[str, int]:
        rows = {}
        for code, (s, w) in enumerate(zip(SPLITS, self.writers)):
            self._flush(code)
            w.close()
            if w.rows_written == 0:
                _write_empty_shard(w.folder, self.schema)
            rows[s] = w.rows_written
        return rows

    def __enter__(self) -> SplitSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for w in self.writers:
                w.abort()


def write_items(out: str | os.PathLike, table: pa.Table, cfg: ConvertConfig) -> None:
    """The item table, as shards of DIR/items/."""
    with ShardWriter(fs.join(out, ITEMS_DIR), table.schema, cfg.rows_per_shard, cfg.row_group_size) as w:
        w.write(table)


def make_table(columns: dict[str, np.ndarray | pa.Array], schema: pa.Schema) -> pa.Table:
    """A table in ``schema``'s column order from named numpy / arrow columns."""
    arrays = []
    for f in schema:
        c = columns[f.name]
        arrays.append(c.cast(f.type) if isinstance(c, pa.Array) else pa.array(c, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def finish(spec: DatasetSpec, out: str | os.PathLike, rows: dict[str, int]) -> DatasetSpec:
    """Record the row counts and write spec.json: last, so it marks a complete dataset."""
    if not sum(rows.values()):
        raise DataError(f"{fs.location(out)}: the sources held no data rows; no spec.json written")
    spec.num_rows = dict(rows)
    spec.save(out)
    log.info("wrote %s: %s rows, %s", out, sum(rows.values()), rows)
    return spec


# -- feature roles ------------------------------------------------------------------------------------
HIGH_CARDINALITY_ROWS = 10_000
"""The size rule of the converters: a categorical column is high-cardinality (STORE replaces its table
by semantic IDs) when it can take at least this many distinct IDs on the full dataset."""


def is_high_cardinality(cardinality: int, table_rows: int) -> bool:
    """The size rule: the distinct IDs the column's table can hold on the full data, min(its full-data
    cardinality, its table rows), is at least ``HIGH_CARDINALITY_ROWS``. The cardinality is the full
    dataset's (a published count for Criteo / Avazu), not a sample's, and the 4x headroom a hashed
    table gets against collisions does not make a column high-cardinality."""
    return min(cardinality, table_rows) >= HIGH_CARDINALITY_ROWS
