"""Attention step time on this machine: dense SDPA vs MoBA's kernels, forward + backward.

    python benchmarks/bench_attention.py --batch 16 --tokens 512,1024 --block 64 --repeats 15
    python benchmarks/bench_attention.py                  # B=256 T=56 block 8: a ranking model's size
    python benchmarks/bench_attention.py --device cuda --dtype bfloat16 --tokens 1024,4096 --block 128

Each variant is one attention call, forward then backward of the sum of its output, on (B, H, T, E)
random inputs stored token-major (B, T, H, E), the layout a QKV projection produces (what STORE's
attention passes); MoBA's include its gate (the block choice). The variants run in turn, --repeats rounds
of one call each (the rounds interleave, so load from other processes hits every variant alike), and
each reports the median wall time (first table; benchmarks/gpu_check.py parses it) and, on CPU, the
median CPU time of this thread (second table; less sensitive to a shared machine: time spent waiting
for a core is not in it). "vs dense" divides those medians.
CPU runs use --threads threads (default 1). "GFLOP" is the forward attention count
(store.models.flops: gate + QK^T/AV over the keys each query sees; projections left out).

Variants: dense (F.scaled_dot_product_attention); MoBA with block gating through the block-sparse
kernel (the default on CPU for blocks >= 16 tokens), through FlexAttention (CUDA, for blocks of
multiples of 128 tokens) and through the dense masked SDPA; and MoBA with token gating (the MoBA
paper's per-query gate; masked SDPA, the previous default). --gather adds the per-query gather
kernel (slow: minutes at T=1024).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from store.models.attention import FLEX_BLOCK, flex_available, moba
from store.models.flops import transformer_flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--tokens", default="56", help="comma-separated T values")
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--block", type=int, default=8)
    p.add_argument("--query-block", type=int, default=0, help="block gating's query block size (0: --block)")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gather", action="store_true", help="also time the per-query gather kernel")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args()
    if args.repeats < 1 or args.block < 1 or not 0.0 <= args.sparsity < 1.0:
        p.error("--repeats and --block must be >= 1 and --sparsity in [0, 1)")
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    for t in (int(x) for x in args.tokens.split(",")):
        run_size(args, t, device, dtype)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def run_size(args: argparse.Namespace, t: int, device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    # token-major (B, T, H, E) storage seen as (B, H, T, E), as a QKV projection makes them
    shape = (args.batch, t, args.heads, args.head_dim)
    leaves = [torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
    q, k, v = (x.transpose(1, 2) for x in leaves)

    def moba_call(gating: str, kernel: str):
        pq = args.query_block or None
        return lambda: moba(
            q, k, v, args.block, args.sparsity, gating=gating, kernel=kernel, query_block_size=pq
        )

    # name -> (call, gating for the FLOPs count: None = dense)
    variants = {
        "dense (F.scaled_dot_product_attention)": (lambda: F.scaled_dot_product_attention(q, k, v), None)
    }
    if (
        flex_available(device)
        and args.block % FLEX_BLOCK == 0
        and (args.query_block or args.block) % FLEX_BLOCK == 0
    ):
        variants["MoBA block gating, FlexAttention"] = (moba_call("block", "flex"), "block")
    variants["MoBA block gating, block-sparse kernel"] = (moba_call("block", "block_sparse"), "block")
    variants["MoBA block gating, masked SDPA"] = (moba_call("block", "masked_sdpa"), "block")
    variants["MoBA token gating, masked SDPA"] = (moba_call("token", "masked_sdpa"), "token")
    if args.gather:
        variants["MoBA token gating, gather"] = (moba_call("token", "gather"), "token")

    def step(fn) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.thread_time()
        fn().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - wall, time.thread_time() - cpu

    for fn, _ in variants.values():  # warm-up (and, for FlexAttention, compilation)
        for _ in range(2):
            step(fn)
    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (fn, _) in variants.items():
            wall, cpu = step(fn)
            walls[name].append(wall)
            cpus[name].append(cpu)
        for x in leaves:
            x.grad = None

    d = args.heads * args.head_dim
    print(
        f"\nB={args.batch} H={args.heads} T={t} E={args.head_dim} block={args.block} "
        f"query block={args.query_block or args.block} sparsity={args.sparsity} "
        f"on {device} {args.dtype}, {args.threads} thread(s), median of {args.repeats} interleaved rounds"
    )
    rows = []  # name, forward GFLOP, wall ms, CPU ms
    for name, (_, gating) in variants.items():
        report = transformer_flops(
            args.batch, t, d, 1, 1, args.block, args.sparsity,
            vanilla=gating is None, gating=gating or "block", query_block_size=args.query_block,
        )  # fmt: skip
        gflop = (report.gating + report.attention_core) / 1e9
        rows.append((name, gflop, statistics.median(walls[name]) * 1e3, statistics.median(cpus[name]) * 1e3))
    base_wall, base_cpu = rows[0][2], rows[0][3]
    print(f"| {'attention':<42} | {'fwd+bwd ms':>10} | {'vs dense':>8} |")
    print(f"|{'-' * 44}|{'-' * 12}|{'-' * 10}|")
    for name, _, wall, _ in rows:
        print(f"| {name:<42} | {wall:>10.1f} | {wall / base_wall:>7.2f}x |")
    print(f"\n| {'attention':<42} | {'fwd GFLOP':>9} | {'CPU ms':>8} | {'vs dense':>8} |")
    print(f"|{'-' * 44}|{'-' * 11}|{'-' * 10}|{'-' * 10}|")
    for name, gflop, _, cpu in rows:
        cells = f"{cpu:>8.1f} | {cpu / base_cpu:>7.2f}x" if device.type == "cpu" else f"{'-':>8} | {'-':>8}"
        print(f"| {name:<42} | {gflop:>9.2f} | {cells} |")


if __name__ == "__main__":
    main()
