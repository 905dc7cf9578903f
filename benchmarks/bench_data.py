"""Data-pipeline throughput: reader vs a bare pyarrow decode of the same files, and the generator.

    python benchmarks/bench_data.py [--rows 2000000] [--batch-size 8192] [--gen-rows 1000000]

Writes a Criteo-shaped dataset (label + 13 dense + 26 single-valued sparse) to a temp dir, then
measures in one run:
  - bare decode: pyarrow reads every row group of the same columns and converts each column to
    numpy (no batching, no ID mapping, no tensors): the ceiling for any reader;
  - the reader: ready `Batch`es (dense tensor + KeyedJaggedTensor + labels) for each ID mapping;
  - the synthetic generator (`python -m data_pipeline generate`), rows/s end to end incl. writing.
Targets (issue 3): reader >= 1,000,000 rows/s per process and >= 40% of the bare decode;
generator >= 300,000 rows/s per process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from data_pipeline.reader import ParquetBatchReader
from data_pipeline.spec import DatasetSpec, SparseFeature, list_shards
from data_pipeline.writer import ShardWriter, arrow_schema


def criteo_spec(id_mapping: str) -> DatasetSpec:
    sparse = [SparseFeature(f"C{i}", 1_000_000) for i in range(1, 27)]
    return DatasetSpec(
        name="criteo-shaped",
        label="label",
        dense=[f"I{i}" for i in range(1, 14)],
        sparse=sparse,
        item_id="C1",
        user_id="user",
        timestamp="ts",
        id_mapping=id_mapping,
    )


def write_criteo_shaped(root: Path, rows: int, seed: int = 0) -> None:
    spec = criteo_spec("hash")
    spec.save(root)
    schema = arrow_schema(spec)
    rng = np.random.default_rng(seed)
    chunk = 1 << 18
    with ShardWriter(root / "train", schema, rows_per_shard=1 << 20, row_group_size=1 << 16) as w:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            cols = {"label": (rng.random(n) < 0.25).astype(np.float32)}
            for c in spec.dense:
                cols[c] = rng.exponential(3.0, n).astype(np.float32)
            for f in spec.sparse:
                cols[f.name] = rng.zipf(1.2, n).astype(np.int64) * 2654435761 % (1 << 40)
            cols["user"] = rng.integers(0, 1 << 30, n)
            cols["ts"] = np.arange(start, start + n)
            w.write(pa.table(cols).select(schema.names))


def bare_decode(root: Path, columns: list[str]) -> int:
    rows = 0
    for path in list_shards(root / "train"):
        f = pq.ParquetFile(path)
        for g in range(f.num_row_groups):
            t = f.read_row_group(g, columns=columns)
            for c in columns:
                t.column(c).to_numpy()
            rows += t.num_rows
    return rows


def timed(fn) -> tuple[int, float]:
    start = time.perf_counter()
    rows = fn()
    return rows, time.perf_counter() - start


def best_of(n: int, fn) -> tuple[int, float]:
    runs = [timed(fn) for _ in range(n)]
    return min(runs, key=lambda r: r[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000, help="rows in the Criteo-shaped dataset")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--gen-rows", type=int, default=1_000_000, help="rows for the generator run (0 skips)")
    p.add_argument("--repeats", type=int, default=3, help="best of N runs for each reader measurement")
    args = p.parse_args()
    torch.set_num_threads(1)

    results: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "criteo"
        write_criteo_shaped(root, args.rows)
        spec = DatasetSpec.load(root)
        columns = spec.columns[:-1]  # everything the reader reads (no timestamp)
        bare_decode(root, columns)  # warm the page cache
        results.append(
            ("bare pyarrow decode -> numpy", *best_of(args.repeats, lambda: bare_decode(root, columns)))
        )
        for mapping in ("hash", "mod"):
            for shuffle in (True, False):
                spec_m = criteo_spec(mapping)

                def run(spec_m=spec_m, shuffle=shuffle) -> int:
                    reader = ParquetBatchReader(root, "train", args.batch_size, spec=spec_m, shuffle=shuffle)
                    return sum(b.batch_size for b in reader)

                label = f"reader -> Batch (ids {mapping}, shuffle {'on' if shuffle else 'off'})"
                results.append((label, *best_of(args.repeats, run)))

        if args.gen_rows:
            from data_pipeline.synthetic import generate_dataset

            out = Path(tmp) / "gen"
            results.append(
                (
                    "synthetic generator (write all splits)",
                    *timed(lambda: (generate_dataset(out, args.gen_rows, progress=False), args.gen_rows)[1]),
                )
            )

    ceiling = results[0][1] / results[0][2]
    print(f"\nCriteo-shaped: 13 dense + 26 sparse, {args.rows:,} rows, batch {args.batch_size}, 1 process\n")
    print(f"| {'what':<46} | {'rows':>10} | {'seconds':>8} | {'rows/s':>11} | {'vs bare':>7} | target |")
    print(f"|{'-' * 48}|{'-' * 12}|{'-' * 10}|{'-' * 13}|{'-' * 9}|--------|")
    for label, rows, secs in results:
        rate = rows / secs
        if label.startswith("reader"):
            ok = rate >= 1e6 and rate >= 0.4 * ceiling
            target, rel = ("ok" if ok else "MISS"), f"{rate / ceiling:.0%}"
        elif label.startswith("synthetic"):
            target, rel = ("ok" if rate >= 3e5 else "MISS"), ""
        else:
            target, rel = "", "100%"
        print(f"| {label:<46} | {rows:>10,} | {secs:>8.2f} | {rate:>11,.0f} | {rel:>7} | {target:>6} |")


if __name__ == "__main__":
    main()
