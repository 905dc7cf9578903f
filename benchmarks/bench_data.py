"""Data-pipeline throughput: reader vs a bare pyarrow decode of the same files, and the generator.

    python benchmarks/bench_data.py [--rows 2000000] [--batch-size 8192] [--gen-rows 1000000]
                                    [--s3-rows 1000000] [--s3-uri s3://BUCKET/PREFIX]
    python benchmarks/bench_data.py --dataset DIR_OR_URI [--split train]   # one reader pass, nothing else

Writes a Criteo-shaped dataset (label + 13 dense + 26 single-valued sparse) to a temp dir, then
measures in one run:
  - bare decode: pyarrow reads every row group of the same columns and converts each column to
    numpy (no batching, no ID mapping, no tensors): the ceiling for any reader;
  - the reader: ready `Batch`es (dense tensor + KeyedJaggedTensor + labels) for each ID mapping;
  - the synthetic generator (`python -m data_pipeline generate`), rows/s end to end incl. writing;
  - object storage: the same reader on a copy of the first --s3-rows rows in S3 vs on local disk.
    Without --s3-uri the store is moto's S3 server started on 127.0.0.1 (pip install 'moto[server]'):
    a single Python process on the same cores, so its figure is a floor, not what S3 or MinIO serve.
    With --s3-uri the copy goes to that prefix (credentials and AWS_ENDPOINT_URL from the environment).
With --dataset: one shuffled reader pass over a split of an existing dataset (a path or a URI), with its
rows/s and this process's peak RSS (the reader's memory must not grow with the split's size).
Targets (issue 3): reader >= 1,000,000 rows/s per process and >= 40% of the bare decode;
generator >= 300,000 rows/s per process.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from data_pipeline import fs
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


def bare_decode(root: str | Path, columns: list[str]) -> int:
    rows = 0
    for path in list_shards(fs.join(root, "train")):
        f = fs.parquet_file(path)
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


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (any credentials) with a bucket; yields the bucket's URI."""
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        boto3.client("s3").create_bucket(Bucket="bench")
        yield "s3://bench"
    finally:
        server.terminate()
        server.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def store_vs_disk(local: Path, uri: str, batch_size: int, repeats: int) -> list[tuple[str, int, float]]:
    """Upload ``local`` to ``uri`` and time the same reads from both."""
    src_fs, src = fs.resolve(local)
    dst_fs, dst = fs.resolve(uri)
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)
    spec = DatasetSpec.load(uri)
    columns = spec.columns[:-1]
    results = []
    for where, root in (("local disk", str(local)), ("S3", uri)):
        results.append(
            (f"bare decode, {where}", *best_of(repeats, lambda root=root: bare_decode(root, columns)))
        )

        def run(root=root) -> int:
            reader = ParquetBatchReader(root, "train", batch_size, spec=spec, shuffle=True)
            return sum(b.batch_size for b in reader)

        results.append((f"reader -> Batch (hash, shuffled), {where}", *best_of(repeats, run)))
    return results


def write_subset(src: Path, dst: Path, rows: int) -> None:
    """The first ``rows`` rows of ``src``'s train split (same row groups) as a dataset of their own."""
    spec = DatasetSpec.load(src)
    spec.save(dst)
    with ShardWriter(dst / "train", arrow_schema(spec), rows_per_shard=1 << 20, row_group_size=1 << 16) as w:
        left = rows
        for path in list_shards(src / "train"):
            for batch in fs.parquet_file(path).iter_batches(batch_size=1 << 16):
                if left <= 0:
                    return
                w.write(batch.slice(0, left))
                left -= batch.num_rows
    spec.save(dst)


def read_pass(root: str, split: str, batch_size: int) -> None:
    """One shuffled pass of the reader over ``root``'s ``split``: rows/s and peak RSS."""
    import resource

    reader = ParquetBatchReader(root, split, batch_size, shuffle=True)
    start, rows = time.perf_counter(), 0
    for batch in reader:
        rows += batch.batch_size
    secs = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"| reader pass | {root} {split} | {rows:,} rows | {secs:.1f} s | {rows / secs:,.0f} rows/s | {peak_mib:,.0f} MiB peak RSS |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000, help="rows in the Criteo-shaped dataset")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--gen-rows", type=int, default=1_000_000, help="rows for the generator run (0 skips)")
    p.add_argument("--repeats", type=int, default=3, help="best of N runs for each reader measurement")
    p.add_argument("--s3-rows", type=int, default=1_000_000, help="rows read from object storage (0 skips)")
    p.add_argument("--s3-uri", default="", help="prefix to copy the data to (default: a local moto server)")
    p.add_argument("--dataset", default="", help="only time one reader pass over this dataset (path or URI)")
    p.add_argument("--split", default="train", help="--dataset: the split to read")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.dataset:
        read_pass(args.dataset, args.split, args.batch_size)
        return

    results: list[tuple[str, int, float]] = []
    store: list[tuple[str, int, float]] = []
    store_bytes = 0
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

        if args.s3_rows:
            subset = Path(tmp) / "subset"
            write_subset(root, subset, min(args.s3_rows, args.rows))
            store_bytes = sum(p.stat().st_size for p in (subset / "train").glob("*.parquet"))
            if args.s3_uri:
                store = store_vs_disk(subset, args.s3_uri, args.batch_size, args.repeats)
            else:
                with moto_s3() as bucket:
                    store = store_vs_disk(subset, f"{bucket}/criteo", args.batch_size, args.repeats)

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
    if store:
        server = args.s3_uri or "moto's S3 server on 127.0.0.1 (one Python process, same 2 cores)"
        print(
            f"\nObject storage vs local disk: the same {store[0][1]:,} rows ({store_bytes / 1e6:.0f} MB), {server}\n"
        )
        print(f"| {'what':<46} | {'rows':>10} | {'seconds':>8} | {'rows/s':>11} | {'MB/s':>7} |")
        print(f"|{'-' * 48}|{'-' * 12}|{'-' * 10}|{'-' * 13}|{'-' * 9}|")
        for label, rows, secs in store:
            mbps = store_bytes / secs / 1e6  # shard bytes per second (every column but the timestamp is read)
            print(f"| {label:<46} | {rows:>10,} | {secs:>8.2f} | {rows / secs:>11,.0f} | {mbps:>7.1f} |")


if __name__ == "__main__":
    main()
