"""STORE with a few hundred tokens: MoBA sparsity sweep, FLOPs and measured training-step time, one run.

    python benchmarks/bench_moba.py [--history-len 50 --num-sids 8 --dim 16 --heads 2 --block 106]
        [--query-block 0 --batch-size 128 --repeats 7 --sparsities 0,0.25,0.5,0.75 --kernel auto]
    python benchmarks/bench_moba.py --num-sids 4 --block 53 --batch-size 256   # T = 212

The configuration (docs/results.md, "MoBA sparsity sweep"): STORE with one token per history item
and per SID (``--model.history_tokens true --model.history_sid_tokens true``) on synthetic data
whose histories are up to --history-len items: T = 2 tokenized features (item, user) x K SIDs + K
rotated blocks + history_len x K history tokens (424 for 50 x 8, the default; key blocks of 106 make
N = 4; 212 for 50 x 4 with blocks of 53).

Generates a small synthetic dataset (--rows) and a random SID table in a temp folder, reads
--batches batches into memory (so no data loading is timed), then times training steps (forward,
BCE loss, backward, Adam step) of the same STORE model with vanilla (dense SDPA) attention and with
MoBA at each sparsity, all from the same initial weights. The settings run in turn, one step each per
round, for --repeats rounds after a warm-up (load from other processes hits every setting alike);
each reports the median step's wall time and CPU time of this thread, samples/s = batch / median wall
time, and the ratio to vanilla. TFLOPs/batch are store.models.flops' forward counts at batch 1024 (the
paper's unit; a training step is about 3x): attention sublayers (projections + gate + QK^T/AV) and
the whole model. Prints the load average before and after. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--history-len", type=int, default=50)
    p.add_argument("--num-sids", type=int, default=8)
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--dim", type=int, default=16, help="--model.embedding_dim")
    p.add_argument("--heads", type=int, default=2, help="--model.num_heads")
    p.add_argument("--layers", type=int, default=2, help="--model.num_layers")
    p.add_argument("--block", type=int, default=106, help="--model.moba_block_size")
    p.add_argument("--query-block", type=int, default=0, help="--model.moba_query_block_size")
    p.add_argument("--kernel", default="auto", help="--model.moba_kernel")
    p.add_argument("--gating", default="block", help="--model.moba_gating")
    p.add_argument("--sparsities", default="0,0.25,0.5,0.75")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.repeats < 1 or args.batches < 1:
        p.error("--repeats and --batches must be >= 1")

    from data_pipeline.reader import ParquetBatchReader
    from data_pipeline.synthetic import generate_dataset
    from store.models.config import ModelConfig
    from store.models.flops import store_model_flops
    from store.models.zoo import batch_transform, build_model
    from store.sid import SidTable

    torch.set_num_threads(args.threads)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    tmp = Path(tempfile.mkdtemp(prefix="bench_moba_"))
    atexit.register(shutil.rmtree, tmp, True)  # the data and SIDs are throwaway
    spec = generate_dataset(
        tmp / "data",
        args.rows,
        items=args.items,
        users=args.items // 2,
        history_len=args.history_len,
        seed=0,
        progress=False,
    )
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, args.codebook_size, (spec.item_table.num_items, args.num_sids), generator=g)
    users = torch.randint(
        0, args.codebook_size, (spec.feature("user_id").vocab_size, args.num_sids), generator=g
    )
    sids = SidTable.from_codes(codes, codebook_size=args.codebook_size, features={"user_id": users})
    reader = ParquetBatchReader(
        tmp / "data",
        "train",
        args.batch_size,
        spec=spec,
        transform=batch_transform("store", spec, sids, ModelConfig()),
    )
    batches = []
    for batch in reader:
        batches.append(batch)
        if len(batches) == args.batches:
            break

    base = dict(
        embedding_dim=args.dim,
        num_heads=args.heads,
        num_layers=args.layers,
        num_rotations=args.num_sids,
        moba_block_size=args.block,
        moba_query_block_size=args.query_block,
        moba_kernel=args.kernel,
        moba_gating=args.gating,
        history_tokens=True,
        history_sid_tokens=True,
    )
    settings = {"vanilla": ModelConfig(**base, vanilla_attention=True)}
    for s in (float(x) for x in args.sparsities.split(",")):
        settings[f"MoBA s={s:g}"] = ModelConfig(**base, moba_sparsity=s)
    torch.manual_seed(0)
    models = {name: build_model("store", spec, cfg, sids) for name, cfg in settings.items()}
    first = next(iter(models.values()))
    for model in models.values():  # same initial weights everywhere
        model.load_state_dict(first.state_dict())
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}

    def step(name: str, batch) -> tuple[float, float]:
        model, opt = models[name], optimizers[name]
        wall, cpu = time.perf_counter(), time.thread_time()
        out = model(batch)
        loss = F.binary_cross_entropy_with_logits(out.logits, batch.labels)
        loss = loss + sum(out.aux_losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - wall, time.thread_time() - cpu

    for name in models:  # warm-up
        for batch in batches[:2]:
            step(name, batch)
    walls: dict[str, list[float]] = {name: [] for name in models}
    cpus: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.repeats):
        batch = batches[r % len(batches)]
        for name in models:
            wall, cpu = step(name, batch)
            walls[name].append(wall)
            cpus[name].append(cpu)

    tokens = store_model_flops(first, 1024).num_tokens
    print(
        f"\nSTORE, T={tokens} tokens (history {args.history_len} x {args.num_sids} SIDs), D={args.dim}, "
        f"{args.heads} heads, {args.layers} layers, MoBA key block {args.block}, query block "
        f"{args.query_block or args.block} ({args.gating} gating, kernel "
        f"{args.kernel}); training step at batch {args.batch_size}, {args.threads} thread(s), median of "
        f"{args.repeats} interleaved rounds; TFLOPs/batch: forward at batch 1024"
    )
    print(
        f"| {'attention':<12} | {'attn TFLOPs':>11} | {'total TFLOPs':>12} | {'step ms':>8} | {'samples/s':>9} "
        f"| {'vs vanilla':>10} | {'CPU ms':>7} | {'vs vanilla':>10} |"
    )
    print(f"|{'-' * 14}|{'-' * 13}|{'-' * 14}|{'-' * 10}|{'-' * 11}|{'-' * 12}|{'-' * 9}|{'-' * 12}|")
    base_wall = base_cpu = None
    for name, model in models.items():
        report = store_model_flops(model, 1024)
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        base_wall, base_cpu = base_wall or wall, base_cpu or cpu
        print(
            f"| {name:<12} | {report.attention_tflops:>11.4f} | {report.total_tflops:>12.4f} | {wall * 1e3:>8.1f} "
            f"| {args.batch_size / wall:>9.0f} | {base_wall / wall:>9.2f}x | {cpu * 1e3:>7.1f} "
            f"| {base_cpu / cpu:>9.2f}x |"
        )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
