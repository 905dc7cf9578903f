"""Streaming parquet reader: shards -> ready `Batch`es, deterministic across ranks and workers.

How an epoch is laid out
------------------------
All row groups of the split are put in one order (shuffled per epoch from ``seed``; rows inside a
row group are permuted too, in runs of ``ROW_RUN`` consecutive rows), which defines a *global row order* 0..N-1. Each rank takes one
contiguous slice of it (sizes differ by at most one row), cut into batches of ``batch_size``;
DataLoader workers take the rank's batches strided (batch j -> worker j % num_workers), so the
DataLoader's round-robin hands them back in order 0, 1, 2, ... and a rank's progress is one number.

Every rank gets the same number of batches, so no rank waits on a collective that others skip:

- ``drop_remainder=True`` (training): ``floor(N / world_size / batch_size)`` full batches each. The
  rows left over (fewer than ``world_size * batch_size``) are skipped this epoch; as the order is
  reshuffled every epoch, a different tail is skipped each time.
- ``drop_remainder=False`` (evaluation): every row exactly once. The last batch may be smaller, and
  a rank whose slice is one row shorter repeats its last row (``valid_rows`` tells how many rows
  are real, so callers drop the padding before computing metrics).

Only the row groups a rank needs are read, one at a time (bounded memory, whatever N is). Shards may
live in object storage (``root`` a ``s3://`` / ``gs://`` / ``hdfs://`` URI, see ``data_pipeline.fs``):
a row group is then a few ranged reads of its column chunks, nothing is copied to local disk.

Position and resume
-------------------
``state_dict()`` is identical on all ranks: the epoch and, per layout the epoch was read with,
``(world_size, batch_size, drop_remainder, batches_done)``. Replaying those gives exactly the rows
already consumed; ``load_state_dict`` re-splits the remaining rows over the current ranks, so a
run resumes without re-reading or skipping rows, also on a different number of ranks.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_pipeline import fs
from data_pipeline.batch import Batch
from data_pipeline.hashing import splitmix64
from data_pipeline.spec import DataError, DatasetSpec, SparseFeature, list_shards, open_shard, split_dir

log = logging.getLogger(__name__)

MAX_SEGMENTS = 64  # layouts (resumes on a different world size) per epoch that a state can record


# --------------------------------------------------------------------------------------------------
# ID mapping
# --------------------------------------------------------------------------------------------------
FIBONACCI = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio


def map_ids(ids: np.ndarray, vocab_size: int, mode: str, max_id: int | None = None) -> np.ndarray:
    """Raw non-negative int64 IDs -> rows of a table of ``vocab_size`` rows.

    ``hash``: Fibonacci hashing (multiply by 2^64/phi, keep the high 32 bits), then multiply-shift
    range reduction into [0, vocab_size): two multiplies and two shifts, ~4x cheaper than
    SplitMix64 + modulo, and it spreads strided IDs (e.g. multiples of the table size) evenly.
    ``mod``: ``id % vocab_size``.
    """
    if mode == "hash":
        if vocab_size >= 1 << 32:
            return (splitmix64(ids) % np.uint64(vocab_size)).astype(np.int64)
        h = ids.astype(np.uint64)  # a fresh copy, updated in place
        with np.errstate(over="ignore"):
            h *= FIBONACCI
        h >>= np.uint64(32)
        h *= np.uint64(vocab_size)
        h >>= np.uint64(32)
        return h.view(np.int64)
    if max_id is not None and max_id < vocab_size:
        return ids  # already in range: modulo is the identity
    return np.remainder(ids, vocab_size)


# --------------------------------------------------------------------------------------------------
# Shard index: footers of every shard, checked against the spec
# --------------------------------------------------------------------------------------------------
def _check_type(path: str, col: str, typ: pa.DataType, want: str) -> None:
    ok = {
        "float": pa.types.is_floating(typ) or pa.types.is_integer(typ),
        "int": pa.types.is_integer(typ),
        "list<int>": (pa.types.is_list(typ) or pa.types.is_large_list(typ))
        and pa.types.is_integer(typ.value_type),
    }[want]
    if not ok:
        raise DataError(f"{path}: column {col!r} has type {typ}, expected {want}")


@dataclass(frozen=True)
class ShardIndex:
    """Row groups of one split, from the parquet footers (no data read)."""

    shards: tuple[str, ...]  # locations: paths or URIs
    rg_shard: np.ndarray  # (G,) shard index of each row group
    rg_index: np.ndarray  # (G,) row-group index inside its shard
    rg_rows: np.ndarray  # (G,) rows in each row group

    @property
    def num_rows(self) -> int:
        return int(self.rg_rows.sum())

    @classmethod
    def build(cls, folder: str, spec: DatasetSpec) -> ShardIndex:
        shards = list_shards(folder)
        kinds = {spec.label: "float", **{c: "float" for c in spec.dense}}
        kinds.update({f.name: "list<int>" if f.multi else "int" for f in spec.sparse})
        for col in (spec.user_id, spec.item_id):  # "" when the dataset has no such column
            if col:
                kinds.setdefault(col, "int")
        rg_shard, rg_index, rg_rows = [], [], []
        for s, path in enumerate(shards):
            meta = open_shard(path)
            schema = meta.schema_arrow
            for col, want in kinds.items():
                idx = schema.get_field_index(col)
                if idx < 0:
                    raise DataError(f"{path}: missing column {col!r} (the spec's {want} column)")
                _check_type(path, col, schema.field(idx).type, want)
            for g in range(meta.num_row_groups):
                n = meta.metadata.row_group(g).num_rows
                if n:
                    rg_shard.append(s)
                    rg_index.append(g)
                    rg_rows.append(n)
        if not rg_rows:
            raise DataError(f"{folder}: the shards hold no rows")
        return cls(tuple(shards), np.array(rg_shard), np.array(rg_index), np.array(rg_rows, dtype=np.int64))


# --------------------------------------------------------------------------------------------------
# Interval arithmetic over the global row order
# --------------------------------------------------------------------------------------------------
def _take_range(intervals: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Positions [lo, hi) of the concatenation of ``intervals`` (M x 2, [start, end)), as intervals."""
    sizes = intervals[:, 1] - intervals[:, 0]
    cum = np.concatenate([[0], np.cumsum(sizes)])
    out = []
    i = int(np.searchsorted(cum, lo, side="right")) - 1
    while lo < hi and i < len(intervals):
        start = intervals[i, 0] + (lo - cum[i])
        take = min(hi - lo, cum[i + 1] - lo)
        out.append((start, start + take))
        lo += take
        i += 1
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def _subtract(intervals: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """``intervals`` minus ``remove`` (both sorted, disjoint), order kept."""
    out = []
    rem = sorted(map(tuple, remove.tolist()))
    for a, b in intervals.tolist():
        cur = a
        for c, d in rem:
            if d <= cur or c >= b:
                continue
            if c > cur:
                out.append((cur, c))
            cur = max(cur, d)
        if cur < b:
            out.append((cur, b))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


@dataclass(frozen=True)
class Layout:
    """How one epoch's remaining rows are split over ranks, and each rank's batch count."""

    world_size: int
    batch_size: int
    drop_remainder: bool

    def rank_slices(self, remaining: int) -> list[tuple[int, int]]:
        base, extra = divmod(remaining, self.world_size)
        bounds, lo = [], 0
        for r in range(self.world_size):
            hi = lo + base + (r < extra)
            bounds.append((lo, hi))
            lo = hi
        return bounds

    def num_batches(self, remaining: int) -> int:
        base, extra = divmod(remaining, self.world_size)
        if self.drop_remainder:
            return base // self.batch_size
        return math.ceil((base + (extra > 0)) / self.batch_size)

    def consumed(self, remaining: np.ndarray, batches_done: int) -> np.ndarray:
        """Global intervals consumed by all ranks after ``batches_done`` batches each."""
        total = int((remaining[:, 1] - remaining[:, 0]).sum())
        parts = [
            _take_range(remaining, lo, min(hi, lo + batches_done * self.batch_size))
            for lo, hi in self.rank_slices(total)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# Shuffling rows inside a row group
# --------------------------------------------------------------------------------------------------
ROW_RUN = 32
"""Rows inside a row group are shuffled as runs of this many consecutive rows: moving runs costs a
few memcpys per column where a row-level gather costs a random access per value (the reader's
shuffled throughput rises ~1.5x); a batch of 8192 rows still mixes 256 random runs."""


@dataclass(frozen=True)
class RunPermutation:
    """A permutation of ``n`` rows that reorders runs of ROW_RUN rows (a last partial run stays last)."""

    runs: np.ndarray  # (n // ROW_RUN,) new order of the full runs
    n: int

    def apply(self, arr: np.ndarray, axis: int = 0) -> np.ndarray:
        """``arr`` (1-D or 2-D) with its rows along ``axis`` (length n) in permuted order. Permuting
        a 2-D block of columns at once is much cheaper than permuting each column."""
        m = len(self.runs)
        head = m * ROW_RUN
        if axis == 0:
            moved = np.take(arr[:head].reshape(m, ROW_RUN, *arr.shape[1:]), self.runs, axis=0)
            moved = moved.reshape(head, *arr.shape[1:])
            return moved if head == self.n else np.concatenate([moved, arr[head:]])
        c = arr.shape[0]
        # np.take returns C-order (c, m, RUN), so the reshape is free (fancy indexing would not be)
        moved = np.take(arr[:, :head].reshape(c, m, ROW_RUN), self.runs, axis=1).reshape(c, head)
        return moved if head == self.n else np.concatenate([moved, arr[:, head:]], axis=1)

    def source_row(self, i: int) -> int:
        """File row of permuted position i."""
        run, offset = divmod(i, ROW_RUN)
        return i if run >= len(self.runs) else int(self.runs[run]) * ROW_RUN + offset


# --------------------------------------------------------------------------------------------------
# Decoded row groups and batch assembly
# --------------------------------------------------------------------------------------------------
@dataclass
class _Columns:
    """One decoded row group, IDs already mapped, rows in this epoch's order for the row group."""

    labels: np.ndarray  # (n,) float32
    dense: np.ndarray  # (n, F) float32
    singles: np.ndarray  # (S, n) int64, single-valued features in spec order
    multi_offsets: list[np.ndarray]  # per multi-valued feature: (n + 1,) int64
    multi_values: list[np.ndarray]  # per multi-valued feature: (nnz,) int64
    user_ids: np.ndarray
    item_ids: np.ndarray


def _gather_ranges(
    starts: np.ndarray, lengths: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """values[starts[i] : starts[i] + lengths[i]] for each i, concatenated -> (offsets, values)."""
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    idx = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
    return offsets, values[idx]


class _RowGroupDecoder:
    """Reads row groups with pyarrow and turns them into mapped numpy columns, with validation."""

    def __init__(self, spec: DatasetSpec, index: ShardIndex) -> None:
        self.spec = spec
        self.index = index
        self.singles = [f for f in spec.sparse if not f.multi]
        self.multis = [f for f in spec.sparse if f.multi]
        wanted = [spec.label, *spec.dense, *spec.sparse_names, spec.user_id, spec.item_id]
        self.columns = [c for c in dict.fromkeys(wanted) if c]  # no "" user / item column
        self._file: pq.ParquetFile | None = None
        self._file_idx = -1
        self.nan_repaired = 0

    def _read(self, g: int) -> tuple[str, pa.Table]:
        s = int(self.index.rg_shard[g])
        path = self.index.shards[s]
        if s != self._file_idx:
            self._file = open_shard(path)
            self._file_idx = s
        try:
            return path, self._file.read_row_group(int(self.index.rg_index[g]), columns=self.columns)
        except (pa.ArrowException, OSError) as e:
            if isinstance(e, OSError) and (err := fs.explain(path, e)) is not None:
                raise err from None  # the store, not the file: credentials, connection
            raise DataError(f"{path}: row group {self.index.rg_index[g]} is unreadable ({e})") from None

    def _ids(self, path: str, f: SparseFeature | str, arr: np.ndarray, vocab: int | None) -> np.ndarray:
        name = f if isinstance(f, str) else f.name
        if arr.size and int(arr.min()) < 0:
            raise DataError(f"{path}: column {name!r} has negative IDs (min {int(arr.min())})")
        if vocab is None:
            return arr
        return map_ids(arr, vocab, self.spec.id_mapping, int(arr.max()) if arr.size else 0)

    def decode(self, g: int, perm: RunPermutation | None) -> _Columns:
        """Row group ``g``, validated and mapped, rows reordered by ``perm`` (None: file order)."""
        path, t = self._read(g)
        n = t.num_rows

        def numpy_col(name: str, dtype) -> np.ndarray:
            col = t.column(name)
            if col.null_count:
                raise DataError(f"{path}: column {name!r} has {col.null_count} null values")
            return col.to_numpy().astype(dtype, copy=False)

        labels = numpy_col(self.spec.label, np.float32)
        if n and (labels.min() < 0 or labels.max() > 1 or np.isnan(labels).any()):
            raise DataError(f"{path}: column {self.spec.label!r} (label) must be in [0, 1]")
        dense = np.empty((n, len(self.spec.dense)), dtype=np.float32)
        for j, c in enumerate(self.spec.dense):
            dense[:, j] = numpy_col(c, np.float32)
        nan = np.isnan(dense)
        if nan.any():  # documented repair: NaN -> 0, counted and logged
            count = int(nan.sum())
            self.nan_repaired += count
            dense[nan] = 0.0
            log.warning("%s: replaced %d NaN dense values with 0", path, count)
        singles = np.empty((len(self.singles), n), dtype=np.int64)
        for j, f in enumerate(self.singles):
            singles[j] = self._ids(path, f, numpy_col(f.name, np.int64), f.vocab_size)
        offsets, values = [], []
        for f in self.multis:
            col = t.column(f.name).combine_chunks()
            if col.null_count:
                raise DataError(f"{path}: column {f.name!r} has {col.null_count} null lists")
            off = col.offsets.to_numpy().astype(np.int64)
            vals = col.values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            starts, lengths = off[:-1], np.diff(off)
            if f.max_len:  # keep the last max_len values of each list
                lengths = np.minimum(lengths, f.max_len)
                starts = off[1:] - lengths
            if perm is not None:
                starts, lengths = perm.apply(np.stack([starts, lengths]), axis=1)
            off, vals = _gather_ranges(starts, lengths, vals)
            offsets.append(off)
            values.append(self._ids(path, f, vals, f.vocab_size))
        # Without a user / item column (spec.user_id / item_id ""), zeros of the batch's length.
        user_ids, item_ids = (
            self._ids(path, c, numpy_col(c, np.int64), None) if c else np.zeros(n, np.int64)
            for c in (self.spec.user_id, self.spec.item_id)
        )
        if perm is not None:  # a few 2-D moves instead of one gather per column
            labels, dense, singles = perm.apply(labels), perm.apply(dense), perm.apply(singles, axis=1)
            user_ids, item_ids = perm.apply(np.stack([user_ids, item_ids]), axis=1)
        return _Columns(labels, dense, singles, offsets, values, user_ids, item_ids)

    def assemble(self, pieces: list[tuple[_Columns, int, int]]) -> Batch:
        """Rows [a, b) of each decoded row group -> one Batch (KJT values in key-major order)."""
        spec = self.spec
        cat = np.concatenate if len(pieces) > 1 else (lambda xs: xs[0])
        labels = cat([c.labels[a:b] for c, a, b in pieces])
        size = len(labels)
        per_key_values, per_key_lengths = {}, {}
        ones = np.ones(size, dtype=np.int32)
        for j, f in enumerate(self.singles):
            per_key_values[f.name] = cat([c.singles[j, a:b] for c, a, b in pieces])
            per_key_lengths[f.name] = ones
        for j, f in enumerate(self.multis):
            per_key_values[f.name] = cat(
                [c.multi_values[j][c.multi_offsets[j][a] : c.multi_offsets[j][b]] for c, a, b in pieces]
            )
            per_key_lengths[f.name] = cat([np.diff(c.multi_offsets[j][a : b + 1]) for c, a, b in pieces])
        keys = spec.sparse_names
        values = np.concatenate([per_key_values[k] for k in keys])
        lengths = np.concatenate([per_key_lengths[k] for k in keys]).astype(np.int32, copy=False)
        kjt = KeyedJaggedTensor(
            keys=keys, values=torch.from_numpy(values), lengths=torch.from_numpy(lengths), stride=size
        )
        return Batch(
            dense=torch.from_numpy(np.ascontiguousarray(cat([c.dense[a:b] for c, a, b in pieces]))),
            sparse=kjt,
            # np.array copies: unshuffled columns may be read-only views of Arrow buffers
            labels=torch.from_numpy(np.array(labels)),
            user_ids=torch.from_numpy(np.array(cat([c.user_ids[a:b] for c, a, b in pieces]))),
            item_ids=torch.from_numpy(np.array(cat([c.item_ids[a:b] for c, a, b in pieces]))),
        )


# --------------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------------
class ParquetBatchReader:
    """Iterates one epoch of a split as `Batch`es for one rank. See the module docstring.

    Args:
        root: dataset folder (with spec.json).
        split: "train", "valid" or "test".
        batch_size: rows per batch (the last one may be smaller when drop_remainder=False).
        rank, world_size: this process's place in the job.
        seed: shuffling seed; the order of epoch e depends only on (seed, e).
        shuffle: shuffle row-group order and rows inside row groups each epoch.
        drop_remainder: see the module docstring (True for training, False for evaluation).
        num_workers: DataLoader worker processes decoding in parallel (0: decode in this process).
        transform: applied to every Batch where it is built (e.g. the semantic-ID lookup).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        batch_size: int,
        *,
        spec: DatasetSpec | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = True,
        num_workers: int = 0,
        transform: Callable[[Batch], Batch] | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.root = fs.location(root)
        self.spec = spec or DatasetSpec.load(self.root)
        self.split = split
        self.index = ShardIndex.build(split_dir(self.root, split), self.spec)
        self.layout = Layout(world_size, batch_size, drop_remainder)
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.transform = transform
        self.epoch = 0
        # Layouts this epoch was read with before the current one: (world, batch, drop, batches_done).
        self._segments: list[tuple[int, int, bool, int]] = []
        self._skip = 0  # batches of the current layout already consumed before this process started
        self._batches_done = 0
        self._plan_cache: tuple | None = None

    # -- epoch plan -------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning (a new shuffle)."""
        self.epoch = epoch
        self._segments = []
        self._skip = 0
        self._batches_done = 0

    def _order(self) -> np.ndarray:
        """Row-group order of this epoch."""
        g = len(self.index.rg_rows)
        if not self.shuffle:
            return np.arange(g)
        return np.random.default_rng([self.seed, self.epoch]).permutation(g)

    def _row_perm(self, g: int, n: int) -> RunPermutation | None:
        """Order of the rows of row group g this epoch (None: file order)."""
        if not self.shuffle:
            return None
        runs = np.random.default_rng([self.seed, self.epoch, g]).permutation(n // ROW_RUN)
        return RunPermutation(runs, n)

    def _remaining(self) -> np.ndarray:
        """Global intervals not yet consumed this epoch by earlier layouts."""
        remaining = np.array([[0, self.index.num_rows]], dtype=np.int64)
        for world, bs, drop, done in self._segments:
            remaining = _subtract(remaining, Layout(world, bs, drop).consumed(remaining, done))
        return remaining

    def _plan(self) -> tuple[np.ndarray, int, int, int]:
        """(remaining intervals, this rank's slice lo, hi, batches) for the current layout."""
        key = (self.epoch, tuple(self._segments))
        if self._plan_cache is None or self._plan_cache[0] != key:
            remaining = self._remaining()
            total = int((remaining[:, 1] - remaining[:, 0]).sum())
            lo, hi = self.layout.rank_slices(total)[self.rank]
            self._plan_cache = (key, (remaining, lo, hi, self.layout.num_batches(total)))
        return self._plan_cache[1]

    def __len__(self) -> int:
        """Batches left in this epoch for this rank (the same on every rank)."""
        return self._plan()[3] - self._skip

    @property
    def valid_rows(self) -> int:
        """Real (non-padding) rows this rank yields in the rest of this epoch."""
        _, lo, hi, n = self._plan()
        start = lo + self._skip * self.layout.batch_size
        if self.layout.drop_remainder:
            return max(0, n * self.layout.batch_size - self._skip * self.layout.batch_size)
        return max(0, hi - start)

    # -- iteration --------------------------------------------------------------------------------
    def _batch_rows(self, j: int) -> list[tuple[int, int, int]]:
        """Batch j of this rank -> [(row group id, first row, end row)], rows in the row group's
        order this epoch (its file order permuted by ``_row_perm``)."""
        remaining, lo, hi, n = self._plan()
        bs = self.layout.batch_size
        a, b = lo + j * bs, min(lo + (j + 1) * bs, hi)
        pad = 0
        if not self.layout.drop_remainder and j == n - 1:
            # Every rank's last batch has the same size; a shorter slice repeats its last row.
            total = int((remaining[:, 1] - remaining[:, 0]).sum())
            full = math.ceil(total / self.layout.world_size) - (n - 1) * bs
            pad = full - (b - a)
        intervals = _take_range(remaining, a, b)
        if pad:
            last = intervals[-1, 1] - 1 if len(intervals) else int(remaining[0, 0])
            intervals = np.concatenate([intervals, np.full((pad, 2), [last, last + 1])])
        order = self._order()
        cum = np.concatenate([[0], np.cumsum(self.index.rg_rows[order])])
        pieces: list[tuple[int, int, int]] = []  # (row group, first, end) in the row group's epoch order
        for start, end in intervals.tolist():
            while start < end:
                k = int(np.searchsorted(cum, start, side="right")) - 1
                stop = min(end, int(cum[k + 1]))
                a, b = start - int(cum[k]), stop - int(cum[k])
                g = int(order[k])
                if pieces and pieces[-1][0] == g and pieces[-1][2] == a:
                    pieces[-1] = (g, pieces[-1][1], b)
                else:
                    pieces.append((g, a, b))
                start = stop
        return pieces

    def _iter_batches(self, worker: int, num_workers: int) -> Iterator[Batch]:
        decoder = _RowGroupDecoder(self.spec, self.index)
        cache: dict[int, _Columns] = {}
        n = self._plan()[3]
        for j in range(self._skip + worker, n, num_workers):
            pieces = self._batch_rows(j)
            needed = {g for g, _, _ in pieces}
            for g in list(cache):
                if g not in needed:
                    del cache[g]  # row groups are visited in order: keep at most those of this batch
            for g in needed:
                if g not in cache:
                    cache[g] = decoder.decode(g, self._row_perm(g, int(self.index.rg_rows[g])))
            batch = decoder.assemble([(cache[g], a, b) for g, a, b in pieces])
            yield self.transform(batch) if self.transform else batch

    def __iter__(self) -> Iterator[Batch]:
        if self.num_workers == 0:
            source: Iterator[Batch] = self._iter_batches(0, 1)
        else:
            source = iter(
                DataLoader(
                    _WorkerView(self),
                    batch_size=None,
                    num_workers=self.num_workers,
                    prefetch_factor=2,
                    persistent_workers=False,
                )
            )
        for batch in source:
            self._batches_done += 1
            yield batch

    # -- position ---------------------------------------------------------------------------------
    def state_dict(self, batches_done: int | None = None) -> dict[str, int | torch.Tensor]:
        """The position after ``batches_done`` batches of the current layout this epoch (default:
        as many as this reader yielded). Identical on every rank; plain ints and one int64 tensor."""
        done = self._skip + (self._batches_done if batches_done is None else batches_done)
        segments = [*self._segments, (*self._layout_key(), done)]
        if len(segments) > MAX_SEGMENTS:
            raise RuntimeError(f"more than {MAX_SEGMENTS} layout changes in one epoch")
        table = torch.full((MAX_SEGMENTS, 4), -1, dtype=torch.int64)
        table[: len(segments)] = torch.tensor([[w, b, int(d), k] for w, b, d, k in segments])
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "num_rows": self.index.num_rows,
            "num_segments": len(segments),
            "segments": table,
        }

    def _layout_key(self) -> tuple[int, int, bool]:
        return self.layout.world_size, self.layout.batch_size, self.layout.drop_remainder

    def load_state_dict(self, state: dict) -> None:
        """Resume at a saved position (see ``state_dict``); the next iteration continues there."""
        num_rows = int(state["num_rows"])
        if num_rows != self.index.num_rows:
            raise DataError(
                f"{fs.join(self.root, self.split)}: reader state was saved for {num_rows} rows, split has "
                f"{self.index.num_rows}; the data changed since the checkpoint"
            )
        if int(state["seed"]) != self.seed:
            raise ValueError(f"reader state was saved with seed {int(state['seed'])}, reader has {self.seed}")
        table = torch.as_tensor(state["segments"])[: int(state["num_segments"])].tolist()
        segments = [(int(w), int(b), bool(d), int(k)) for w, b, d, k in table]
        self.epoch = int(state["epoch"])
        self._batches_done = 0
        if segments and segments[-1][:3] == self._layout_key():
            # Same layout as when saved: keep its split and skip the batches already read.
            self._segments, self._skip = segments[:-1], segments[-1][3]
        else:
            # Different ranks or batch size: the rows left are re-split over the current layout.
            self._segments, self._skip = segments, 0

    def position(self) -> dict[str, int | str]:
        """Where this rank's next row lives: epoch, shard, row group, offset (for logs and humans)."""
        j = self._skip + self._batches_done
        if j >= self._plan()[3]:
            return {"epoch": self.epoch, "shard": "", "row_group": -1, "offset": -1}
        g, a, _ = self._batch_rows(j)[0]
        perm = self._row_perm(g, int(self.index.rg_rows[g]))
        return {
            "epoch": self.epoch,
            "shard": fs.basename(self.index.shards[int(self.index.rg_shard[g])]),
            "row_group": int(self.index.rg_index[g]),
            "offset": a if perm is None else perm.source_row(a),
        }


class _WorkerView(IterableDataset):
    """What each DataLoader worker iterates: batches j with j % num_workers == worker id."""

    def __init__(self, reader: ParquetBatchReader) -> None:
        self.reader = reader

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, num = (info.id, info.num_workers) if info else (0, 1)
        return self.reader._iter_batches(worker, num)
