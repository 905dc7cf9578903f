"""Attention step time on this machine: dense SDPA vs MoBA (fused masked SDPA, and the gather kernel).

    python benchmarks/bench_attention.py [--batch 256 --heads 2 --tokens 56 --head-dim 32 --block 8]
    python benchmarks/bench_attention.py --device cuda --dtype bfloat16 --tokens 1024 --block 64

Forward + backward of one attention call, median of --repeats (one CPU thread; on CUDA the time
is taken after a device synchronize). FLOPs for the same shapes come from store.models.flops (the gather
kernel executes only the kept blocks' FLOPs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from store.models.attention import (
    moba_attention,
    moba_masked_sdpa,
    moba_select_blocks,
    num_blocks,
    num_kept_blocks,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=56)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--block", type=int, default=8)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = (args.batch, args.heads, args.tokens, args.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    kept = num_kept_blocks(num_blocks(args.tokens, args.block), args.sparsity)

    def moba(kernel):
        return lambda: kernel(q, k, v, args.block, moba_select_blocks(q, k, args.block, kept))

    variants = {
        "dense (F.scaled_dot_product_attention)": lambda: F.scaled_dot_product_attention(q, k, v),
        "MoBA, fused SDPA + block mask (default)": moba(moba_masked_sdpa),
        "MoBA, gather of kept blocks": moba(moba_attention),
    }
    print(
        f"\nB={args.batch} H={args.heads} T={args.tokens} E={args.head_dim} block={args.block} kept={kept} "
        f"on {device} {args.dtype}"
    )
    print(f"| {'attention':<42} | {'fwd+bwd ms':>10} | {'vs dense':>8} |")
    print(f"|{'-' * 44}|{'-' * 12}|{'-' * 10}|")
    base = None
    for name, fn in variants.items():
        for _ in range(2):
            fn().sum().backward()
        times = []
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            fn().sum().backward()
            sync()
            times.append(time.perf_counter() - start)
        ms = statistics.median(times) * 1000
        base = base or ms
        print(f"| {name:<42} | {ms:>10.1f} | {ms / base:>7.2f}x |")


if __name__ == "__main__":
    main()
