"""Open Bandit Dataset (ZOZOTOWN) -> dataset.

Sources (in --src): ``item_context.csv`` (``item_id``, ``item_feature_0`` float, ``item_feature_1..3``
hashed strings) and one log ``all.csv`` (else ``men.csv`` / ``women.csv``): a row index, then
``timestamp`` (ISO time with zone), ``item_id``, ``position``, ``click``, ``propensity_score``,
``user_feature_0..3`` (hashed strings), ``user-item_affinity_0..79`` (floats).

Rows (one per impression): label ``click``; sparse ``item_id`` (the item table's dense order),
``position``, ``user_feature_0..3`` and the shown item's categorical ``item_feature_*`` (exact
vocabularies, 0 = missing), ``hour`` / ``weekday`` (UTC); dense: the shown item's numeric item
features and ``affinity`` (the row's ``user-item_affinity_<item>``; omitted when the log has no
affinity columns). ``propensity_score`` is the logging policy's, not a click probability: dropped.

Choices: the log has no user ID, so ``user_id`` is a hash of the four user features (a user
segment, not a person: GAUC then groups by segment). ``timestamp`` is Unix seconds. Split by
time: a first pass counts rows per second; whole seconds go to one split, train < valid < test.

Feature roles: only the item is high-cardinality (``item_id``, item-valued); a user feature becomes
``high_cardinality`` too only by the size rule of ``common.is_high_cardinality`` (at least 10,000
distinct values in the log; then it leaves the ``user`` group). The real user features have a
handful of values each, so they stay low-cardinality static features, as do position, the item's
categories, hour and weekday.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from data_pipeline.converters.checks import require_rows
from data_pipeline.converters.common import (
    ConvertConfig,
    Histogram,
    SplitSink,
    Vocab,
    check_out,
    column,
    csv_batches,
    find_file,
    finish,
    hour_and_weekday,
    ints,
    is_high_cardinality,
    make_table,
    numbers,
    positive_hash,
    prepare_out,
    read_header,
    split_codes,
    time_cutoffs,
    write_items,
)
from data_pipeline.spec import DataError, DatasetSpec, ItemTable, SparseFeature
from data_pipeline.writer import arrow_schema

USER_FEATURES = [f"user_feature_{i}" for i in range(4)]
REQUIRED = ["timestamp", "item_id", "position", "click", *USER_FEATURES]
AFFINITY = "user-item_affinity_{}"


def _seconds(arr: pa.Array, path: Path) -> np.ndarray:
    if arr.null_count:
        raise DataError(f"{path}: column 'timestamp' has {arr.null_count} missing value(s)")
    return arr.cast(pa.int64()).to_numpy(zero_copy_only=False) // 1_000_000  # microseconds -> seconds


class Items:
    """item_context.csv: raw item IDs (sorted; row i = item i), numeric and encoded categorical features."""

    def __init__(self, path: Path) -> None:
        header = read_header(path, ",", ["item_id"])
        try:
            table = pacsv.read_csv(path)  # ~80 rows: small enough to read whole
        except pa.ArrowInvalid as e:
            raise DataError(f"{path}: {e}") from None
        table = table.sort_by("item_id")
        self.raw_ids = ints(table["item_id"].combine_chunks(), path, "item_id")
        if len(self.raw_ids) == 0:
            raise DataError(f"{path}: no items")
        if (np.diff(self.raw_ids) == 0).any():
            raise DataError(f"{path}: column 'item_id' has duplicate IDs")
        self.numeric: dict[str, np.ndarray] = {}
        self.categorical: dict[str, np.ndarray] = {}
        self.vocab: dict[str, int] = {}
        for name in (h for h in header if h.startswith("item_feature_")):
            col = table[name].combine_chunks()
            if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
                self.numeric[name] = numbers(col).astype(np.float32)
            else:
                values = sorted(set(col.drop_null().cast(pa.string()).to_pylist()) - {""})
                ids = {v: i + 1 for i, v in enumerate(values)}
                self.categorical[name] = np.array([ids.get(v, 0) for v in col.to_pylist()], np.int64)
                self.vocab[name] = len(values) + 1

    def dense_ids(self, raw: np.ndarray, path: Path) -> np.ndarray:
        j = np.searchsorted(self.raw_ids, raw)
        known = self.raw_ids[np.minimum(j, len(self.raw_ids) - 1)] == raw
        if not known.all():
            raise DataError(f"{path}: column 'item_id': item(s) {np.unique(raw[~known])[:5].tolist()} "
                            "are not in item_context.csv")  # fmt: skip
        return j


def convert(cfg: ConvertConfig) -> DatasetSpec:
    items = Items(find_file(cfg.src, ("item_context.csv",), "the item file"))
    path = find_file(cfg.src, ("all.csv", "men.csv", "women.csv"), "the Open Bandit log")
    names = read_header(path, ",", REQUIRED)
    names = [n or "_row" for n in names]  # the first column (row index) has no name
    affinity = {int(r): AFFINITY.format(r) for r in items.raw_ids}
    has_affinity = any(n.startswith("user-item_affinity_") for n in names)
    if has_affinity:
        missing = [c for c in affinity.values() if c not in names]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing[:5]} (one affinity column per item)")
    check_out(cfg.out, cfg.overwrite)

    ts_type = {"timestamp": pa.timestamp("us", tz="UTC")}
    hist = Histogram()
    for b in csv_batches(path, names, delimiter=",", header=True, types=ts_type, block_size=cfg.block_size):
        hist.add(_seconds(column(b, "timestamp"), path))
    require_rows(hist.total, [path], cfg.src)
    prepare_out(cfg.out, cfg.overwrite)
    t_valid, t_test = time_cutoffs(hist, cfg.valid_frac, cfg.test_frac)

    user_vocab = {c: Vocab() for c in USER_FEATURES}
    dense = [*items.numeric, *(["affinity"] if has_affinity else [])]
    cat_item = list(items.categorical)

    def make_spec(position_vocab: int) -> DatasetSpec:
        sparse = [
            SparseFeature("item_id", len(items.raw_ids), item_ref=True),
            SparseFeature("position", position_vocab),
        ]
        high = [c for c in USER_FEATURES if is_high_cardinality(len(user_vocab[c]), user_vocab[c].size)]
        sparse += [SparseFeature(c, user_vocab[c].size, high_cardinality=c in high) for c in USER_FEATURES]
        sparse += [SparseFeature(c, items.vocab[c]) for c in cat_item]
        sparse += [SparseFeature("hour", 24), SparseFeature("weekday", 7)]
        return DatasetSpec(
            name=f"open-bandit-{path.stem}",
            label="click",
            dense=dense,
            sparse=sparse,
            item_id="item_id",
            user_id="user_id",
            timestamp="timestamp",
            id_mapping="mod",
            item_table=ItemTable(
                num_items=len(items.raw_ids),
                id_column="item_id",
                embedding_column=None,
                embedding_dim=0,
                category_columns=tuple(cat_item),
            ),
            feature_groups={
                "user": [c for c in USER_FEATURES if c not in high],
                "item": cat_item,
                "context": ["position", "hour", "weekday"],
            },
        )

    schema = arrow_schema(
        make_spec(1)
    )  # vocab sizes are known only at the end; the schema does not need them
    types = {
        **ts_type,
        "item_id": pa.int64(),
        "position": pa.int64(),
        "click": pa.int64(),
        **{c: pa.string() for c in USER_FEATURES},
        **({c: pa.float64() for c in affinity.values()} if has_affinity else {}),
    }
    max_position = 0
    with (
        SplitSink(cfg.out, schema, cfg) as sink,
        tqdm(total=hist.total, desc="write open-bandit", unit="row") as bar,
    ):
        for b in csv_batches(path, names, delimiter=",", header=True, types=types, block_size=cfg.block_size):
            ts = _seconds(column(b, "timestamp"), path)
            click = ints(column(b, "click"), path, "click")
            if not np.isin(click, (0, 1)).all():
                raise DataError(f"{path}: column 'click' must be 0 or 1, got {np.unique(click)[:5].tolist()}")
            position = ints(column(b, "position"), path, "position")
            if (position < 0).any():
                raise DataError(f"{path}: column 'position' must be >= 0")
            max_position = max(max_position, int(position.max()))
            raw_item = ints(column(b, "item_id"), path, "item_id")
            item = items.dense_ids(raw_item, path)
            hour, weekday = hour_and_weekday(ts)
            user_cols = [column(b, c) for c in USER_FEATURES]
            cols = {
                "click": click.astype(np.float32),
                "item_id": item.astype(np.int64),
                "position": position,
                "hour": hour,
                "weekday": weekday,
                "timestamp": ts,
                "user_id": positive_hash(pc.binary_join_element_wise(*user_cols, "|")),
            }
            for c, arr in zip(USER_FEATURES, user_cols):
                cols[c] = user_vocab[c].encode(arr)
            for c, values in items.categorical.items():
                cols[c] = values[item]
            for c, values in items.numeric.items():
                cols[c] = values[item]
            if has_affinity:
                aff = np.zeros(b.num_rows, np.float32)
                for r in np.unique(raw_item):
                    rows = raw_item == r
                    aff[rows] = numbers(column(b, affinity[int(r)]))[rows]
                cols["affinity"] = aff
            sink.write(make_table(cols, schema), split_codes(ts, t_valid, t_test))
            bar.update(b.num_rows)
        rows = sink.close()

    spec = make_spec(max_position + 1)
    table = {
        "item_id": pa.array(np.arange(len(items.raw_ids), dtype=np.int64)),
        "original_item_id": pa.array(items.raw_ids),
    }
    table.update({c: pa.array(v) for c, v in items.numeric.items()})
    table.update({c: pa.array(v) for c, v in items.categorical.items()})
    write_items(cfg.out, pa.table(table), cfg)
    return finish(spec, cfg.out, rows)
