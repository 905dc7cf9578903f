"""A copy of a dataset whose rare high-cardinality IDs share one new row: the ID arm with STORE's admission rule.

    python benchmarks/admit_ids.py --src DIR --out DIR2 [--min-count 50] [--features f1,f2]

The tokenizer gives every learned ID seen fewer than ``--min-count`` times in the train split one
reserved code (``store.tokenizer --min-count``). This writes the raw-ID counterpart: in every split,
each such ID of the chosen features (default: the spec's high-cardinality features other than the
item, i.e. the ones whose SIDs are learned) becomes ID ``vocab_size``, a new row shared by all of
them (the feature's vocab grows by one). Training ``--model id`` on the copy asks whether STORE's
edge comes from the semantic IDs or only from dropping the rare IDs (docs/results_any_table.md).

Local folders only; single-valued features only. Not a converter: the copy's spec keeps the
original's name and fingerprint fields, so a SID table of the original still loads against it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.spec import SPLITS, DataError, DatasetSpec, list_shards, split_dir


def train_counts(src: Path, name: str, vocab: int) -> np.ndarray:
    counts = np.zeros(vocab, dtype=np.int64)
    for shard in list_shards(split_dir(src, "train")):
        values = pq.read_table(shard, columns=[name]).column(0).to_numpy()
        counts += np.bincount(values, minlength=vocab)[:vocab]
    return counts


def admit(src: Path, out: Path, min_count: int, features: list[str]) -> dict[str, int]:
    """Write the copy; returns {feature: IDs kept (seen >= min_count times in train)}."""
    spec = DatasetSpec.load(src)
    for name in features:
        f = spec.feature(name)
        if f.multi:
            raise DataError(f"--features: {name!r} is multi-valued; only single-valued features are admitted")
    counts = {name: train_counts(src, name, spec.feature(name).vocab_size) for name in features}
    if out.exists():
        raise DataError(f"--out {out}: already exists")
    shutil.copytree(src, out, ignore=shutil.ignore_patterns(*SPLITS))
    for split in SPLITS:
        (out / split).mkdir()
        for shard in list_shards(split_dir(src, split)):
            table = pq.read_table(shard)
            for name in features:
                i = table.schema.get_field_index(name)
                values = table.column(i).to_numpy()
                vocab = spec.feature(name).vocab_size
                admitted = np.where(counts[name][np.minimum(values, vocab - 1)] >= min_count, values, vocab)
                table = table.set_column(
                    i, table.schema.field(i), pa.array(admitted, table.schema.field(i).type)
                )
            pq.write_table(table, out / split / Path(shard).name)
    raw = json.loads((src / "spec.json").read_text())
    for f in raw["sparse"]:
        if f["name"] in counts:
            f["vocab_size"] += 1
    (out / "spec.json").write_text(json.dumps(raw, indent=2) + "\n")
    return {name: int((c >= min_count).sum()) for name, c in counts.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/admit_ids.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="dataset folder")
    p.add_argument("--out", required=True, help="new dataset folder (must not exist)")
    p.add_argument("--min-count", type=int, default=50)
    p.add_argument("--features", default="", help="'f1,f2' (default: high-cardinality features but the item)")
    args = p.parse_args(argv)
    if args.min_count < 1:
        p.error(f"--min-count must be >= 1, got {args.min_count}")
    try:
        spec = DatasetSpec.load(args.src)
        features = [f for f in args.features.split(",") if f] or [
            f for f in spec.high_cardinality if not spec.feature(f).item_ref
        ]
        kept = admit(Path(args.src), Path(args.out), args.min_count, features)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, n in kept.items():
        print(f"{name}: {n} of {spec.feature(name).vocab_size} IDs seen >= {args.min_count} times; the rest -> row "
              f"{spec.feature(name).vocab_size}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
