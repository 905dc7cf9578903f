"""`python -m data_pipeline convert NAME --src DIR --out DIR`: public datasets -> our dataset format.

NAME is one of ``movielens``, ``criteo``, ``avazu``, ``open-bandit``; each converter's module
docstring (``data_pipeline/converters/``) says which source layouts it reads and what it writes.
Every converter streams its source in bounded chunks, splits by time, writes shards with
``ShardWriter`` and spec.json last. A non-empty --out is refused without --overwrite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_pipeline.converters import avazu, criteo, movielens, open_bandit
from data_pipeline.converters.common import ConvertConfig
from data_pipeline.spec import DataError, DatasetSpec

CONVERTERS = {
    "movielens": movielens.convert,
    "criteo": criteo.convert,
    "avazu": avazu.convert,
    "open-bandit": open_bandit.convert,
}


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


def convert(name: str, cfg: ConvertConfig) -> DatasetSpec:
    """Convert with the converter ``name``; returns the written spec."""
    if name not in CONVERTERS:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted(CONVERTERS)}")
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
    spec = convert(args.name, cfg)
    print(f"wrote {cfg.out}: {spec.name}, rows {spec.num_rows}")


def add_cli(sub: argparse._SubParsersAction) -> None:
    d = ConvertConfig(src=Path("."), out=Path("."))
    p = sub.add_parser("convert", help="convert a public dataset", description=__doc__)
    p.add_argument("name", choices=sorted(CONVERTERS), help="which dataset")
    p.add_argument("--src", required=True, help="folder with the original files")
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
    p.set_defaults(func=run)
