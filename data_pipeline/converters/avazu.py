"""Avazu click-through -> dataset.

Source (in --src): the Kaggle training file ``train``, ``train.csv`` or any single ``*.csv``
(optionally ``.gz``), comma-separated with the header ``id,click,hour,C1,banner_pos,site_id,
site_domain,site_category,app_id,app_domain,app_category,device_id,device_ip,device_model,
device_type,device_conn_type,C14,...,C21``. (Kaggle's ``test`` has no ``click``: it is refused.)

Rows: label ``click``; ``hour`` (YYMMDDHH, UTC) becomes the sparse ``hour`` (0..23) and
``weekday`` (Monday = 0), the dense ``hour_sin`` / ``hour_cos`` (its cyclic encoding) and
``timestamp`` (Unix seconds of that hour); every other column is categorical, hashed with a stable
64-bit hash into its table (``1 + hash % (vocab - 1)``, missing -> 0; ``id_mapping`` is ``mod``,
the identity on these IDs, see ``criteo.py`` for why).

Choices, because Avazu has no item or user ID:

* item: ``C14`` (believed to identify the ad creative, ~2.6K values) hashed into ``--num-items``
  buckets (default 16,384; 0 = missing) is ``item_id``; ``--item-column`` picks another column.
  It is dropped from the other features. The item table lists the buckets, no side information.
* user: ``user_id`` is a hash of ``device_id``, or of ``device_ip|device_model`` where device_id is
  the placeholder ``a99f214a`` (most rows): the usual Avazu user heuristic, not a real user ID.
* time: a first pass counts rows per hour; whole hours go to one split, train < valid < test,
  with the cut-off hours nearest the requested fractions.

Feature roles: the ID columns ``site_id``, ``site_domain``, ``app_id``, ``app_domain``,
``device_id``, ``device_ip`` and ``device_model`` are ``high_cardinality`` (STORE replaces their
tables by semantic IDs) whatever their table size; any other column is too when the size rule of
``common.is_high_cardinality`` holds (min(its Kaggle cardinality, its table rows) >= 10,000: none
with the published counts; the largest other column, C14, has ~2.6K values). Everything else is a
low-cardinality static feature; the feature groups list only those (``device_model`` is left out of
the ``user`` group). With ``--item-column`` set to an ID column, that column is ``item_id``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from data_pipeline.converters.checks import require_rows
from data_pipeline.converters.common import (
    ConvertConfig,
    Histogram,
    SplitSink,
    check_out,
    column,
    csv_batches,
    finish,
    hashed_ids,
    ints,
    is_high_cardinality,
    make_table,
    positive_hash,
    prepare_out,
    read_header,
    split_codes,
    time_cutoffs,
    write_items,
)
from data_pipeline.spec import DataError, DatasetSpec, ItemTable, SparseFeature
from data_pipeline.writer import arrow_schema

# Distinct values per column in the Kaggle train set: sizes the hash tables.
CARDINALITY = {
    "C1": 7, "banner_pos": 7, "site_id": 4737, "site_domain": 7745, "site_category": 26, "app_id": 8552,
    "app_domain": 559, "app_category": 36, "device_id": 2686408, "device_ip": 6729486, "device_model": 8251,
    "device_type": 5, "device_conn_type": 4, "C14": 2626, "C15": 8, "C16": 9, "C17": 435, "C18": 4,
    "C19": 68, "C20": 172, "C21": 60,
}  # fmt: skip
CATEGORICAL = list(CARDINALITY)
REQUIRED = ["click", "hour", *CATEGORICAL]
DEFAULT_ITEM_COLUMN = "C14"
DEFAULT_NUM_ITEMS = 16_384
NO_DEVICE = "a99f214a"  # Avazu's placeholder device_id
# ID-valued columns: high-cardinality whatever their table size.
ID_COLUMNS = ["site_id", "site_domain", "app_id", "app_domain", "device_id", "device_ip", "device_model"]
GROUPS = {
    "user": ["device_type", "device_conn_type", "device_model"],
    "context": ["hour", "weekday", "banner_pos", "C1"],
    "publisher": ["site_category", "app_category"],
    "ad": ["C15", "C16", "C18"],
}


def find_source(src: Path) -> Path:
    for name in ("train", "train.gz", "train.csv", "train.csv.gz"):
        if (src / name).is_file():
            return src / name
    csvs = sorted([*src.glob("*.csv"), *src.glob("*.csv.gz")])
    if len(csvs) == 1:
        return csvs[0]
    found = f" (found {len(csvs)} *.csv files; keep one)" if csvs else ""
    raise DataError(f"--src {src}: missing the Avazu file (expected train, train.csv or one *.csv){found}")


def hour_to_unix(hour: np.ndarray, path: Path) -> np.ndarray:
    """YYMMDDHH -> Unix seconds (UTC), converting each distinct hour once."""
    values, inverse = np.unique(hour, return_inverse=True)
    out = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        s = f"{int(v):08d}"
        try:
            t = dt.datetime(2000 + int(s[:2]), int(s[2:4]), int(s[4:6]), int(s[6:8]), tzinfo=dt.UTC)
        except ValueError:
            raise DataError(f"{path}: column 'hour': {int(v)} is not a YYMMDDHH hour") from None
        out[i] = int(t.timestamp())
    return out[inverse]


def convert(cfg: ConvertConfig) -> DatasetSpec:
    path = find_source(cfg.src)
    names = read_header(path, ",", REQUIRED)
    item_col = cfg.item_column or DEFAULT_ITEM_COLUMN
    if item_col not in CATEGORICAL:
        raise DataError(f"--item-column {item_col!r}: must be one of {CATEGORICAL}")
    num_items = cfg.num_items or DEFAULT_NUM_ITEMS
    check_out(cfg.out, cfg.overwrite)

    hist = Histogram()
    for b in tqdm(
        csv_batches(
            path, names, delimiter=",", header=True, types={"hour": pa.int64()}, block_size=cfg.block_size
        ),
        desc="scan hours",
        unit="chunk",
        leave=False,
    ):
        hist.add(hour_to_unix(ints(column(b, "hour"), path, "hour"), path))
    require_rows(hist.total, [path], cfg.src)
    prepare_out(cfg.out, cfg.overwrite)
    t_valid, t_test = time_cutoffs(hist, cfg.valid_frac, cfg.test_frac)

    features = [c for c in CATEGORICAL if c != item_col]
    vocab = {c: cfg.table_size(c, max(64, 4 * CARDINALITY[c])) for c in features}
    sparse = [SparseFeature("hour", 24), SparseFeature("weekday", 7)]
    high = {c for c in features if c in ID_COLUMNS or is_high_cardinality(CARDINALITY[c], vocab[c])}
    sparse += [SparseFeature(c, vocab[c], high_cardinality=c in high) for c in features]
    sparse.append(SparseFeature("item_id", num_items, item_ref=True))
    spec = DatasetSpec(
        name="avazu",
        label="click",
        dense=["hour_sin", "hour_cos"],
        sparse=sparse,
        item_id="item_id",
        user_id="user_id",
        timestamp="timestamp",
        id_mapping="mod",
        item_table=ItemTable(
            num_items=num_items, id_column="item_id", embedding_column=None, embedding_dim=0
        ),
        feature_groups={
            g: [c for c in cols if c != item_col and c not in high] for g, cols in GROUPS.items()
        },
    )
    schema = arrow_schema(spec)
    types = {"click": pa.int64(), "hour": pa.int64(), **{c: pa.string() for c in CATEGORICAL}}
    with (
        SplitSink(cfg.out, schema, cfg) as sink,
        tqdm(total=hist.total, desc="write avazu", unit="row") as bar,
    ):
        for b in csv_batches(path, names, delimiter=",", header=True, types=types, block_size=cfg.block_size):
            click = ints(column(b, "click"), path, "click")
            if not np.isin(click, (0, 1)).all():
                raise DataError(f"{path}: column 'click' must be 0 or 1, got {np.unique(click)[:5].tolist()}")
            hour_code = ints(column(b, "hour"), path, "hour")
            ts = hour_to_unix(hour_code, path)
            hour = hour_code % 100
            device_id = column(b, "device_id")
            fallback = pc.binary_join_element_wise(column(b, "device_ip"), column(b, "device_model"), "|")
            no_device = pc.fill_null(pc.equal(device_id, NO_DEVICE), True).to_numpy(zero_copy_only=False)
            cols = {
                "click": click.astype(np.float32),
                "hour_sin": np.sin(2 * np.pi * hour / 24).astype(np.float32),
                "hour_cos": np.cos(2 * np.pi * hour / 24).astype(np.float32),
                "hour": hour,
                "weekday": (ts // 86_400 + 3) % 7,
                "timestamp": ts,
                "user_id": np.where(no_device, positive_hash(fallback), positive_hash(device_id)),
                "item_id": hashed_ids(column(b, item_col), num_items),
            }
            for c in features:
                cols[c] = hashed_ids(column(b, c), vocab[c])
            sink.write(make_table(cols, schema), split_codes(ts, t_valid, t_test))
            bar.update(b.num_rows)
        rows = sink.close()
    write_items(cfg.out, pa.table({"item_id": pa.array(np.arange(num_items, dtype=np.int64))}), cfg)
    return finish(spec, cfg.out, rows)
