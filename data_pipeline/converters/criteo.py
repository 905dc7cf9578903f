"""Criteo Display Advertising -> dataset.

Sources (in --src): ``*.csv`` / ``*.csv.gz`` with a header (the shared sample), else the original
tab-separated files without a header: ``train.txt`` (Kaggle), ``day_0`` .. ``day_23`` (the 1TB
logs, in day order) or ``*.tsv`` (each optionally ``.gz``). Columns: label, I1..I13, C1..C26.

Rows: label ``label``; dense I1..I13 as ``log1p(max(x, 0))`` with missing -> 0 (the DLRM
preprocessing; only I2 has negatives); categorical C1..C26 (hex strings) hashed with a stable
64-bit hash (FNV-1a + splitmix64) into their tables: ``1 + hash % (vocab - 1)``, missing -> 0.

Choices, because Criteo has no user, item or time column:

* item: one categorical column (``--item-column``, default C3, one of the largest, ~10M values
  in Kaggle) hashed into ``--num-items`` buckets (default 100,000; bucket 0 = missing) is the
  pseudo-item ``item_id``; the item table lists the buckets with no side information. The column
  is dropped from the other features so the item-ID embedding is its only path into the model.
* user: none; ``user_id`` is 0 on every row, so GAUC equals AUC.
* time: ``timestamp`` is the global row index (the files are in time order), and the split is by
  row order: the first (1 - valid - test) of the rows are train. Rows are counted in a first pass.

Hashing happens here rather than in the reader (``id_mapping`` is ``mod``, the identity for these
IDs) because the spec's mapping is dataset-wide: ``hash`` would also scramble the dense item IDs.
Table sizes: ``--vocab-sizes C1=..`` per feature, else min(4 x the Kaggle cardinality, --vocab-size).

Feature roles: a C column is ``high_cardinality`` (STORE replaces its table by semantic IDs) by the
size rule of ``common.is_high_cardinality``: min(its Kaggle cardinality, its table rows) >= 10,000,
i.e. at least 10,000 distinct IDs on the full data and a table that holds them (the 4x headroom
alone does not count). The Kaggle counts are used rather than what a file holds, so the roles are
the full dataset's also on a small sample. With the default sizes that is C4, C7, C10, C12, C15,
C16, C21, C24 and C26 (C3, the default item, is ``item_id``); a smaller ``--vocab-size`` /
``--vocab-sizes`` makes a column's table, and so the column, low-cardinality. Every other column is a
low-cardinality static feature.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from data_pipeline.converters.checks import require_rows
from data_pipeline.converters.common import (
    ConvertConfig,
    SplitSink,
    check_out,
    column,
    count_lines,
    csv_batches,
    finish,
    hashed_ids,
    ints,
    is_high_cardinality,
    log,
    make_table,
    numbers,
    prepare_out,
    read_header,
    write_items,
)
from data_pipeline.spec import DataError, DatasetSpec, ItemTable, SparseFeature
from data_pipeline.writer import arrow_schema

DENSE = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
COLUMNS = ["label", *DENSE, *CATEGORICAL]
# Distinct values per column in the Kaggle train set (the DLRM counts): sizes the hash tables.
KAGGLE_CARDINALITY = dict(
    zip(
        CATEGORICAL,
        [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
         5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572],
    )
)  # fmt: skip
# Columns of at most ~30 values: the "low-cardinality" group STORE may cross (their meaning is hidden).
LOW_CARDINALITY = [c for c in CATEGORICAL if KAGGLE_CARDINALITY[c] <= 30]
DEFAULT_ITEM_COLUMN = "C3"
DEFAULT_NUM_ITEMS = 100_000


def find_sources(src: Path) -> tuple[list[Path], bool]:
    """The source files in time order, and whether they have a header row."""
    csvs = sorted([*src.glob("*.csv"), *src.glob("*.csv.gz")])
    if csvs:
        return csvs, True

    def day(p: Path) -> int:
        m = re.fullmatch(r"day_(\d+)(\.gz)?", p.name)
        return int(m.group(1)) if m else -1

    days = sorted((p for p in src.glob("day_*") if day(p) >= 0), key=day)
    tsvs = [*src.glob("train.txt"), *src.glob("train.txt.gz"), *days, *sorted(src.glob("*.tsv*"))]
    if not tsvs:
        raise DataError(
            f"--src {src}: no Criteo file (expected *.csv with a header, or train.txt / day_N / *.tsv "
            "tab-separated without one)"
        )
    return tsvs, False


def convert(cfg: ConvertConfig) -> DatasetSpec:
    files, header = find_sources(cfg.src)
    item_col = cfg.item_column or DEFAULT_ITEM_COLUMN
    if item_col not in CATEGORICAL:
        raise DataError(f"--item-column {item_col!r}: must be one of the categorical columns C1..C26")
    num_items = cfg.num_items or DEFAULT_NUM_ITEMS
    names_of = {f: read_header(f, ",", COLUMNS) if header else COLUMNS for f in files}
    check_out(cfg.out, cfg.overwrite)

    n = sum(tqdm((count_lines(f) - header for f in files), total=len(files), desc="count rows", leave=False))
    require_rows(n, files, cfg.src)
    prepare_out(cfg.out, cfg.overwrite)
    n_train = n - round(n * cfg.valid_frac) - round(n * cfg.test_frac)
    n_valid_end = n - round(n * cfg.test_frac)

    features = [c for c in CATEGORICAL if c != item_col]
    vocab = {c: cfg.table_size(c, max(64, 4 * KAGGLE_CARDINALITY[c])) for c in features}
    spec = DatasetSpec(
        name="criteo",
        label="label",
        dense=list(DENSE),
        sparse=[
            SparseFeature(c, vocab[c], high_cardinality=is_high_cardinality(KAGGLE_CARDINALITY[c], vocab[c]))
            for c in features
        ]
        + [SparseFeature("item_id", num_items, item_ref=True)],
        item_id="item_id",
        user_id="user_id",
        timestamp="timestamp",
        id_mapping="mod",
        item_table=ItemTable(
            num_items=num_items, id_column="item_id", embedding_column=None, embedding_dim=0
        ),
        feature_groups={"low_cardinality": [c for c in LOW_CARDINALITY if c != item_col]},
    )
    schema = arrow_schema(spec)
    types = {
        "label": pa.float64(),
        **{c: pa.float64() for c in DENSE},
        **{c: pa.string() for c in CATEGORICAL},
    }

    row = 0
    with SplitSink(cfg.out, schema, cfg) as sink, tqdm(total=n, desc="write criteo", unit="row") as bar:
        for path in files:
            for b in csv_batches(
                path, names_of[path], delimiter="," if header else "\t", header=header, types=types,
                block_size=cfg.block_size,
            ):  # fmt: skip
                m = b.num_rows
                label = ints(column(b, "label"), path, "label")
                if not np.isin(label, (0, 1)).all():
                    raise DataError(
                        f"{path}: column 'label' must be 0 or 1, got {np.unique(label)[:5].tolist()}"
                    )
                pos = np.arange(row, row + m, dtype=np.int64)
                cols = {
                    "label": label.astype(np.float32),
                    "user_id": np.zeros(m, np.int64),
                    "timestamp": pos,
                    "item_id": hashed_ids(column(b, item_col), num_items),
                }
                for c in DENSE:
                    cols[c] = np.log1p(np.maximum(numbers(column(b, c)), 0.0)).astype(np.float32)
                for c in features:
                    cols[c] = hashed_ids(column(b, c), vocab[c])
                codes = (pos >= n_train).astype(np.int8) + (pos >= n_valid_end).astype(np.int8)
                sink.write(make_table(cols, schema), codes)
                row += m
                bar.update(m)
        rows = sink.close()
    require_rows(row, files, cfg.src)  # lines counted above may all be blank
    if row != n:
        log.warning(
            "counted %d lines but read %d rows (blank lines?): split fractions are approximate", n, row
        )

    write_items(cfg.out, pa.table({"item_id": pa.array(np.arange(num_items, dtype=np.int64))}), cfg)
    return finish(spec, cfg.out, rows)
