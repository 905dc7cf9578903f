"""Checks of the splits before training, so that what the reader would only meet mid-run (or at the
final test) is refused up front (exit 2), naming the split, the shard and the column.

`check_splits` reads the parquet footers of the shards the readers index (the column statistics:
min, max and null count per row group), and data only where a footer cannot answer:

* a split whose labels are all the same value (one class): AUC, the metric of every evaluation, is
  undefined (NaN) on it, and a train split of one class teaches nothing; refused for every split;
* labels outside [0, 1] and null values in the label, dense, single-valued ID, user and item
  columns: the reader's own errors, with the same messages, raised before the first step instead
  of at the first evaluation or the test;
* null lists in the multi-valued columns of the valid and test splits (a footer counts empty lists
  as nulls too, so a row group whose footer counts any is read; in the train split the reader
  finds them at its first pass).

Reading is the label column only, one row group at a time, where a footer has no statistics for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from data_pipeline import fs
from data_pipeline.reader import ShardIndex
from data_pipeline.spec import DataError, DatasetSpec, open_shard

EVAL_SPLITS = ("valid", "test")


def _stats(pf: pq.ParquetFile, group: int, column: int) -> Any:
    """The column chunk's statistics, or None when the writer left them out."""
    stats = pf.metadata.row_group(group).column(column).statistics
    return stats if stats is not None and stats.has_null_count else None


def _leaves(pf: pq.ParquetFile) -> dict[str, int]:
    """Column name -> index of its parquet leaf column (whose statistics the footer holds)."""
    names = pf.schema_arrow.names
    if pf.metadata.num_columns == len(names):  # one leaf per column (no structs): the same order
        return {n: i for i, n in enumerate(names)}
    return {pf.schema.column(i).path.split(".")[0]: i for i in range(pf.metadata.num_columns)}


def _fmt(v: float) -> str:
    return f"{v + 0.0:g}"  # + 0.0: -0.0 -> 0


def check_splits(spec: DatasetSpec, readers: Mapping[str, Any]) -> None:
    """DataError for a split the trainer cannot train on or evaluate (see the module docstring).

    ``readers``: split name -> a `ParquetBatchReader` (or its `ShardIndex`), e.g. the trainer's
    train and evaluation readers; only the row groups they index are looked at. Every rank may call
    it (footers only, in the usual case), so that all ranks stop together."""
    label = spec.label
    must_have = [label, *spec.dense, *(f.name for f in spec.sparse if not f.multi)]
    must_have += [c for c in (spec.user_id, spec.item_id) if c]
    must_have = list(dict.fromkeys(must_have))
    multi = [f.name for f in spec.sparse if f.multi]
    for split, reader in readers.items():
        index: ShardIndex = getattr(reader, "index", reader)
        lo, hi, rows = math.inf, -math.inf, 0
        folder = ""
        for s, path in enumerate(index.shards):
            groups = [int(g) for g in index.rg_index[index.rg_shard == s]]
            if not groups:
                continue
            pf = open_shard(path)
            folder = folder or fs.parent(path)
            leaf = _leaves(pf)
            for g in groups:
                rows += pf.metadata.row_group(g).num_rows
                for col in must_have:
                    st = _stats(pf, g, leaf[col])
                    if st is not None and st.null_count:
                        raise DataError(f"{path}: column {col!r} has {st.null_count} null values")
                st = _stats(pf, g, leaf[label])
                if st is not None and st.has_min_max:
                    g_lo, g_hi = float(st.min), float(st.max)
                else:  # no statistics: read the label column of this row group
                    values = pf.read_row_group(g, columns=[label]).column(0)
                    if values.null_count:
                        raise DataError(f"{path}: column {label!r} has {values.null_count} null values")
                    x = values.to_numpy().astype(np.float64)
                    x = x[~np.isnan(x)]  # NaN: the reader's error, at read time
                    g_lo, g_hi = (float(x.min()), float(x.max())) if len(x) else (lo, hi)
                if g_lo < 0 or g_hi > 1:
                    raise DataError(f"{path}: column {label!r} (label) must be in [0, 1]")
                lo, hi = min(lo, g_lo), max(hi, g_hi)
                if split in EVAL_SPLITS:
                    for col in multi:
                        st = _stats(pf, g, leaf[col])
                        if st is None or st.null_count:  # empty lists count too: read the lists
                            nulls = pf.read_row_group(g, columns=[col]).column(0).null_count
                            if nulls:
                                raise DataError(f"{path}: column {col!r} has {nulls} null lists")
        if rows and lo == hi:
            why = "the model has nothing to learn" if split == "train" else "AUC is undefined"
            raise DataError(
                f"{folder or split}: the {split} split has only label {_fmt(lo)} ({rows:,} rows): {why}"
            )
