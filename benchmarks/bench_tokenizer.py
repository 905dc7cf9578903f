"""Tokenizer throughput: training, SID assignment in memory, and the streaming catalog path.

    python benchmarks/bench_tokenizer.py                      # 1M-item catalog, D=64, K=32, C=300
    python benchmarks/bench_tokenizer.py --items 200000 --methods opmq --threads 1

Writes a synthetic catalog (DIR/spec.json + DIR/items/*.parquet, clustered embeddings) to a temp
folder, then per method: trains a tokenizer on a sample (k-means init + Adam steps), encodes items
in memory, and runs ``tokenize_catalog`` over the whole parquet catalog (read, encode, write the SID
table, statistics) in bounded memory. Throughputs are wall-clock items/s of this process, with the
CPU-time rate next to them: on a shared machine the wall figure drops with other load, the CPU one
much less. Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from data_pipeline.spec import DatasetSpec, ItemTable, SparseFeature
from data_pipeline.writer import ShardWriter
from store.tokenizer.embeddings import content_embeddings
from store.tokenizer.pipeline import FitConfig, sample_embeddings, tokenize_catalog, train_tokenizer
from store.tokenizer.quantizers import TokenizerConfig, build_quantizer


def write_catalog(root: Path, n: int, dim: int, clusters: int = 1000, chunk: int = 100_000) -> DatasetSpec:
    """n items with clustered embeddings, written in chunks (bounded memory)."""
    spec = DatasetSpec(
        name="bench-catalog",
        label="label",
        dense=[],
        sparse=[SparseFeature("item_id", n)],
        item_id="item_id",
        user_id="user_id",
        timestamp="ts",
        item_table=ItemTable(num_items=n, embedding_dim=dim),
    )
    spec.save(root)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    schema = pa.schema([("item_id", pa.int64()), ("embedding", pa.list_(pa.float32()))])
    with ShardWriter(root / "items", schema, rows_per_shard=250_000) as w:
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            emb = centers[rng.integers(0, clusters, m)] + 0.3 * rng.normal(size=(m, dim)).astype(np.float32)
            offsets = pa.array(np.arange(0, m * dim + 1, dim, dtype=np.int32))
            lists = pa.ListArray.from_arrays(offsets, pa.array(emb.reshape(-1)))
            w.write(
                pa.table({"item_id": np.arange(s, s + m, dtype=np.int64), "embedding": lists}, schema=schema)
            )
    return spec


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000, help="catalog size")
    p.add_argument("--dim", type=int, default=64, help="embedding dim D")
    p.add_argument("--num-sids", type=int, default=32)
    p.add_argument("--codebook-size", type=int, default=300)
    p.add_argument("--methods", default="opmq,rqvae,opq")
    p.add_argument("--train-items", type=int, default=100_000, help="training sample")
    p.add_argument("--train-steps", type=int, default=100, help="Adam steps timed for training throughput")
    p.add_argument("--train-batch", type=int, default=1024)
    p.add_argument("--encode-items", type=int, default=200_000, help="in-memory encode timing")
    p.add_argument("--repeats", type=int, default=5, help="encode timings; the median is reported")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--dir", default=None, help="catalog folder (default: a temp folder, removed)")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    K, C = args.num_sids, args.codebook_size

    tmp = tempfile.TemporaryDirectory(prefix="bench_tokenizer_") if args.dir is None else None
    root = Path(args.dir or tmp.name)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")  # fmt: skip
    _, w, _ = timed(lambda: write_catalog(root / "data", args.items, args.dim))
    print(f"wrote a {args.items:,}-item catalog (D={args.dim}) in {w:.1f}s to {root / 'data'}")
    spec = DatasetSpec.load(root / "data")
    emb = content_embeddings(root / "data", spec)
    x = sample_embeddings(emb, args.train_items)
    x_enc = x[: args.encode_items]

    rows = []
    for method in args.methods.split(","):
        cfg = TokenizerConfig(method=method, num_sids=K, codebook_size=C)
        # k-means init alone: 20 Lloyd iterations on 20k standardised items
        q = build_quantizer(TokenizerConfig(method=method, num_sids=K, codebook_size=C, input_dim=args.dim))
        x_std = (x[:20_000] - x.mean(0)) / x.std(0)
        _, w_init, _ = timed(lambda q=q, x_std=x_std: q.init_codebooks(x_std, 20))
        # training: one epoch of Adam steps (k-means init kept minimal here; timed above)
        train = FitConfig(
            epochs=1, min_steps=0, batch_size=args.train_batch, kmeans_sample=4096, kmeans_iters=1
        )
        n_train = min(len(x), args.train_steps * args.train_batch)
        tok, w_train, c_train = timed(
            lambda cfg=cfg, n=n_train, train=train: train_tokenizer(x[:n], cfg, train, progress=False)
        )
        tok.encode(x_enc[:4096])  # warm-up
        # in-memory encode: median of --repeats timings
        # (other jobs on a shared machine make single runs jumpy)
        runs = sorted(timed(lambda tok=tok: tok.encode(x_enc))[1:] for _ in range(args.repeats))
        w_enc, c_enc = runs[len(runs) // 2]
        out = root / f"sids_{method}"
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stats, w_cat, c_cat = timed(lambda tok=tok, out=out: tokenize_catalog(emb, tok, out, progress=False))
        peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows.append(
            (
                method, w_init, n_train / w_train, n_train / c_train, len(x_enc) / w_enc, len(x_enc) / c_enc,
                args.items / w_cat, args.items / c_cat, stats["collision_rate"],
                float(np.mean(stats["perplexity"])), peak_after / 1024, (peak_after - peak_before) / 1024,
            )
        )  # fmt: skip

    print(f"\nK={K}, C={C}, D={args.dim}, catalog {args.items:,} items, training sample {len(x):,}; "
          f"load average {os.getloadavg()[0]:.1f} at end")  # fmt: skip
    head = (
        "method", "kmeans init s", "train it/s", "(cpu)", "encode it/s", "(cpu)", "catalog it/s", "(cpu)",
        "collisions", "mean ppl", "peak RSS MB", "RSS growth MB",
    )  # fmt: skip
    print(" | ".join(f"{h:>13}" for h in head))
    for r in rows:
        print(" | ".join([f"{r[0]:>13}", f"{r[1]:>13.1f}"] + [f"{v:>13,.0f}" for v in r[2:8]]
                         + [f"{r[8]:>13.4f}", f"{r[9]:>13.1f}", f"{r[10]:>13.0f}", f"{r[11]:>13.0f}"]))  # fmt: skip
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
