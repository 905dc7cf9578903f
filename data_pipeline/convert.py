"""`python -m data_pipeline convert NAME --src DIR --out DIR`: public datasets -> our dataset format.

NAME is one of ``movielens``, ``criteo``, ``avazu``, ``open-bandit``, or ``table`` (any CSV / parquet
table: ``--src FILE_OR_DIR --label COL [--user COL] [--item COL] [--time COL] [--dense COLS]
[--sparse COLS] [--multi COLS] [--high-card-threshold N] [--seed S]``; unnamed columns are classified
by type, a CSV --multi cell holds ``|``-separated values); each converter's module docstring
(``data_pipeline/converters/``) says which source layouts it reads and what it writes.
Every converter streams its source in bounded chunks, splits by time (``table`` without --time:
a seeded random split), writes shards with ``ShardWriter`` and spec.json last. A non-empty --out is
refused without --overwrite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_pipeline.converters import avazu, criteo, movielens, open_bandit, table
from data_pipeline.converters.common import ConvertConfig
from data_pipeline.spec import DataError, DatasetSpec

CONVERTERS = {
    "movielens": movielens.convert,
    "criteo": criteo.convert,
    "avazu": avazu.convert,
    "open-bandit": open_bandit.convert,
    "table": table.convert,
}
TABLE_FLAGS = ("label", "user", "item", "time", "dense", "sparse", "multi")
"""Flags of ``convert table`` only (``--high-card-threshold`` and ``--seed`` too)."""


def _vocab_sizes(text: str) -> dict[str, int]:
    """``C3=100000,C12=50000`` -> {"C3": 100000, "C12": 50000}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            raise DataError(
                f"--vocab-sizes: expected NAME=INT pairs separated by commas, got {part!r}"
            ) from None
    return out


def _names(text: str | None) -> list[str]:
    """``a,b, c`` -> ["a", "b", "c"]."""
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def convert(name: str, cfg: ConvertConfig, table_options: table.TableOptions | None = None) -> DatasetSpec:
    """Convert with the converter ``name``; returns the written spec. ``table_options``: what the
    columns of a ``table`` source are (its --src may also be a single file, checked there)."""
    if name not in CONVERTERS:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted(CONVERTERS)}")
    if name == "table":
        return table.convert(cfg, table_options)
    cfg.validate()
    return CONVERTERS[name](cfg)


def run(args: argparse.Namespace) -> None:
    cfg = ConvertConfig(
        src=Path(args.src),
        out=Path(args.out),
        rows_per_shard=args.rows_per_shard,
        valid_frac=args.valid_frac,
        test_frac=args.test_frac,
        overwrite=args.overwrite,
        hist_len=args.hist_len,
        vocab_size=args.vocab_size,
        vocab_sizes=_vocab_sizes(args.vocab_sizes),
        num_items=args.num_items,
        item_column=args.item_column,
    )
    options = None
    if args.name == "table":
        options = table.TableOptions(
            label=args.label or "",
            user=args.user or "",
            item=args.item or "",
            time=args.time or "",
            dense=_names(args.dense),
            sparse=_names(args.sparse),
            multi=_names(args.multi),
            high_card_threshold=args.high_card_threshold,
            seed=args.seed,
        )
    else:
        given = [f"--{f}" for f in TABLE_FLAGS if getattr(args, f) is not None]
        if given:
            raise DataError(f"{', '.join(given)}: only for `convert table`, not `convert {args.name}`")
    spec = convert(args.name, cfg, options)
    if options is not None:
        print(table.describe(spec))
    print(f"wrote {cfg.out}: {spec.name}, rows {spec.num_rows}")


def add_cli(sub: argparse._SubParsersAction) -> None:
    d = ConvertConfig(src=Path("."), out=Path("."))
    p = sub.add_parser("convert", help="convert a public dataset", description=__doc__)
    p.add_argument("name", choices=sorted(CONVERTERS), help="which dataset")
    p.add_argument("--src", required=True, help="folder with the original files (table: also one file)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--rows-per-shard", type=int, default=d.rows_per_shard, help="rows per parquet shard")
    p.add_argument(
        "--valid-frac", type=float, default=d.valid_frac, help="fraction of rows (by time) in valid"
    )
    p.add_argument("--test-frac", type=float, default=d.test_frac, help="fraction of rows (latest) in test")
    p.add_argument("--overwrite", action="store_true", help="replace the dataset in a non-empty --out")
    p.add_argument("--hist-len", type=int, default=d.hist_len, help="movielens: history length (0: none)")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=d.vocab_size,
        help="criteo/avazu: max rows of a hashed feature's table",
    )
    p.add_argument(
        "--vocab-sizes", default="", help="criteo/avazu: per-feature table rows, e.g. C3=100000,C12=50000"
    )
    p.add_argument("--num-items", type=int, default=None, help="criteo/avazu: pseudo-item hash buckets")
    p.add_argument("--item-column", default=None, help="criteo/avazu: source column used as the item")
    t = p.add_argument_group("table", "`convert table`: what the columns of a CSV / parquet table are")
    t.add_argument("--label", default=None, help="table: the 0/1 label column (required)")
    t.add_argument("--user", default=None, help="table: the user column (GAUC; none: no GAUC)")
    t.add_argument(
        "--item", default=None, help="table: the item column (item tokens, tail AUC; none: neither)"
    )
    t.add_argument("--time", default=None, help="table: time column, split by it (none: seeded random split)")
    t.add_argument("--dense", default=None, help="table: comma-separated float feature columns")
    t.add_argument("--sparse", default=None, help="table: comma-separated categorical columns")
    t.add_argument(
        "--multi", default=None, help="table: comma-separated multi-valued columns (lists, or 'a|b|c' text)"
    )
    t.add_argument(
        "--high-card-threshold",
        type=int,
        default=table.DEFAULT_HIGH_CARD_THRESHOLD,
        help="table: sparse features with at least this many distinct values are high-cardinality",
    )
    t.add_argument("--seed", type=int, default=0, help="table: seed of the random split (no --time)")
    p.set_defaults(func=run)
