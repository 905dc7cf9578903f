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

from dataclasses import dataclass, field
from typing import Annotated, Literal

import tyro

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


def _names(text: str) -> list[str]:
    """``a,b, c`` -> ["a", "b", "c"]."""
    return [p.strip() for p in text.split(",") if p.strip()]


def convert(name: str, cfg: ConvertConfig, table_options: table.TableOptions | None = None) -> DatasetSpec:
    """Convert with the converter ``name``; returns the written spec. ``table_options``: what the
    columns of a ``table`` source are (its --src may also be a single file, checked there)."""
    if name not in CONVERTERS:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted(CONVERTERS)}")
    if name == "table":
        return table.convert(cfg, table_options)
    cfg.validate()
    return CONVERTERS[name](cfg)


@dataclass
class TableFlags:
    """`convert table`: what the columns of a CSV / parquet table are."""

    label: str = ""
    """table: the 0/1 label column (required)."""
    user: str = ""
    """table: the user column (GAUC; none: no GAUC)."""
    item: str = ""
    """table: the item column (item tokens, tail AUC; none: neither)."""
    time: str = ""
    """table: time column, split by it (none: seeded random split)."""
    dense: str = ""
    """table: comma-separated float feature columns."""
    sparse: str = ""
    """table: comma-separated categorical columns."""
    multi: str = ""
    """table: comma-separated multi-valued columns (lists, or 'a|b|c' text)."""
    high_card_threshold: int = table.DEFAULT_HIGH_CARD_THRESHOLD
    """table: sparse features with at least this many distinct values are high-cardinality."""
    seed: int = 0
    """table: seed of the random split (no --time)."""

    def options(self) -> table.TableOptions:
        return table.TableOptions(
            label=self.label, user=self.user, item=self.item, time=self.time,
            dense=_names(self.dense), sparse=_names(self.sparse), multi=_names(self.multi),
            high_card_threshold=self.high_card_threshold, seed=self.seed,
        )  # fmt: skip


@dataclass
class ConvertArgs:
    """Convert a public dataset (or any CSV / parquet table) to our dataset format."""

    name: tyro.conf.Positional[Literal["avazu", "criteo", "movielens", "open-bandit", "table"]]
    """Which dataset."""
    convert: Annotated[ConvertConfig, tyro.conf.OmitArgPrefixes]
    table: Annotated[TableFlags, tyro.conf.OmitArgPrefixes] = field(default_factory=TableFlags)


def run(args: ConvertArgs) -> None:
    options = None
    if args.name == "table":
        options = args.table.options()
    else:
        given = [f"--{f}" for f in TABLE_FLAGS if getattr(args.table, f)]
        if given:
            raise DataError(f"{', '.join(given)}: only for `convert table`, not `convert {args.name}`")
    spec = convert(args.name, args.convert, options)
    if options is not None:
        print(table.describe(spec))
    print(f"wrote {args.convert.out}: {spec.name}, rows {spec.num_rows}")
