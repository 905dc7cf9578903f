"""Throughput scaling over process counts, and a TorchRec-planner projection to large GPU clusters.

    python benchmarks/bench_scaling.py --out runs/scaling                 # tiny built-in data
    python benchmarks/bench_scaling.py --data DIR --sids SIDS --procs 1,2,4,8 --out runs/scaling
    python benchmarks/bench_scaling.py --projection-only --world-sizes 8,64,512 --out runs/scaling

1. Sweep: for every process count n (default 1 .. CPU cores) and both models (ID baseline, STORE)
   a short trainer run under torchrun (``--max-steps``, evaluation on one batch); samples/s in total
   and per process from its summary.json (steady state: the first logging interval is excluded).
   Scaling efficiency = total(n) / (n x total(1)). Writes scaling.md, scaling.json, scaling.png.
   On a CPU machine shared with other work the processes compete for the same cores: read the
   numbers with the load average printed next to them.
2. Projection (estimate (TorchRec planner), not measured): `EmbeddingShardingPlanner` on meta-device
   tables for a cluster of W GPUs (80 GB HBM, 8 per host): a 1-billion-row x D raw item-ID table vs
   K SID tables of C rows. Prints the chosen sharding, HBM per rank and the planner's estimated
   per-step cost (the slowest rank's forward+backward compute and communication, from TorchRec's
   perf estimator). Only the item tables are planned: the other features' tables and the dense
   network are the same for both models. Writes projection.md and projection.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from launch.compare import python_env, trainer_command
from launch.report import human_bytes, md_table

REPO = Path(__file__).resolve().parents[1]

GiB = 1024**3


# -- 1. process-count sweep ------------------------------------------------------------------------
def tiny_inputs(out: Path) -> tuple[Path, Path]:
    """A small synthetic dataset and its SIDs under OUT/inputs (made once)."""
    data, sids = out / "inputs" / "data", out / "inputs" / "sids"
    env = python_env()
    if not (data / "spec.json").is_file():
        # 20k items: the raw-ID table (20k rows) is sharded, not replicated (auto replicates <= 4096 rows)
        cmd = [sys.executable, "-m", "data_pipeline", "generate", "--out", str(data), "--rows", "120000"]
        cmd += ["--items", "20000", "--users", "10000", "--seed", "0", "--no-progress", "--overwrite"]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    if not (sids / "meta.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "store.tokenizer",
            "--data",
            str(data),
            "--out",
            str(sids),
            "--num-sids",
            "4",
        ]
        cmd += ["--codebook-size", "64", "--min-steps", "100", "--no-progress"]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return data, sids


def sweep(args: argparse.Namespace, out: Path) -> list[dict]:
    data, sids = (Path(args.data), Path(args.sids)) if args.data else tiny_inputs(out)
    rows = []
    for n in args.procs:
        for model in ("id", "store"):
            run = out / "runs" / f"{model}_p{n}"
            summary = run / "summary.json"
            if not summary.is_file():
                flags = [
                    "--data", str(data), "--sids", str(sids), "--model", model, "--out", str(run),
                    "--max-steps", str(args.steps), "--epochs", "100", "--batch-size", str(args.batch_size),
                    "--eval.max_batches", "1", "--logging.every_steps", str(max(1, args.steps // 4)),
                    "--logging.progress", "false", "--logging.tensorboard", "false", *args.trainer_args,
                ]  # fmt: skip
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                log = out / "logs" / f"{model}_p{n}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "w") as f:
                    # a fixed share of the machine per process, like one GPU each: --threads cores
                    env = {**python_env(), "OMP_NUM_THREADS": str(args.threads)}
                    rc = subprocess.call(
                        trainer_command(n, flags), stdout=f, stderr=subprocess.STDOUT, env=env
                    )
                if rc != 0:
                    print(f"!! {model} on {n} process(es) failed (exit {rc}), see {log}", flush=True)
                    continue
                s = json.loads(summary.read_text())
                s["load_before"] = load
                summary.write_text(json.dumps(s, indent=2))
                print(
                    f"{model:5} x{n}: {s['samples_per_s']:,.0f} samples/s ({time.perf_counter() - t0:.0f} s, "
                    f"load {load:.1f})",
                    flush=True,
                )
            s = json.loads(summary.read_text())
            rows.append(
                {
                    "model": model,
                    "procs": n,
                    "samples_per_s": s["samples_per_s"],
                    "samples_per_s_per_proc": s["samples_per_s_per_rank"],
                    "load": s.get("load_before"),
                }
            )
    for r in rows:
        base = next((b for b in rows if b["model"] == r["model"] and b["procs"] == min(args.procs)), None)
        ok = base and base["samples_per_s"] and r["samples_per_s"]
        r["efficiency"] = (
            r["samples_per_s"] * base["procs"] / (r["procs"] * base["samples_per_s"]) if ok else math.nan
        )
    return rows


def write_sweep(rows: list[dict], out: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = md_table(
        ["model", "processes", "samples/s (total)", "samples/s per process", "scaling efficiency", "load avg"],
        [
            [r["model"], r["procs"], f"{r['samples_per_s']:,.0f}", f"{r['samples_per_s_per_proc']:,.0f}",
             r["efficiency"], r["load"]]
            for r in rows
        ],
    )  # fmt: skip
    text = (
        f"Measured on this machine ({os.cpu_count()} CPU cores, gloo), {args.steps} steps of {args.batch_size} "
        f"rows per process, {args.threads} torch thread(s) per process; efficiency = total(n) / (n x total({min(args.procs)})). The load average before "
        "each run shows how much other work shared the cores.\n\n" + table
    )
    (out / "scaling.md").write_text(text + "\n")
    (out / "scaling.json").write_text(json.dumps(rows, indent=2) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for model in ("id", "store"):
        rs = [r for r in rows if r["model"] == model]
        axes[0].plot([r["procs"] for r in rs], [r["samples_per_s"] for r in rs], marker="o", label=model)
        axes[1].plot([r["procs"] for r in rs], [r["efficiency"] for r in rs], marker="o", label=model)
    axes[0].set_title("samples/s (total)")
    axes[1].set_title("scaling efficiency")
    axes[1].axhline(1.0, color="grey", ls="--", lw=1)
    for ax in axes:
        ax.set_xlabel("processes")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=100)
    plt.close(fig)
    print(text)


# -- 2. planner projection -------------------------------------------------------------------------
def plan_tables(
    tables: list, world_size: int, hbm_gb: float, batch_size: int, sharding: dict[str, str] | None = None
) -> dict:
    """Plan an EmbeddingCollection of `tables` (EmbeddingConfig) on W GPUs; per-rank HBM and cost.

    sharding: {table: sharding type} constraints (the rest: the planner's choice).
    """
    import torch
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints, Stats
    from torchrec.modules.embedding_modules import EmbeddingCollection

    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType

        fused = {"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": 0.05}
    except ImportError:  # the planner then counts no optimizer state
        fused = None

    class Capture(Stats):
        """Keeps the chosen sharding options (with their estimated storage and perf per shard)."""

        best: list = []

        def log(self, *args, **kwargs) -> None:  # noqa: D401  (TorchRec's Stats interface)
            self.best = kwargs.get("best_plan", args[7] if len(args) > 7 else [])

    capture = Capture()
    module = EmbeddingCollection(tables=tables, device=torch.device("meta"))
    topology = Topology(
        world_size=world_size,
        compute_device="cuda",
        hbm_cap=int(hbm_gb * GiB),
        local_world_size=min(8, world_size),
    )
    constraints = {t: ParameterConstraints(sharding_types=[k]) for t, k in (sharding or {}).items()}
    planner = EmbeddingShardingPlanner(
        topology=topology, batch_size=batch_size, stats=capture, debug=False, constraints=constraints
    )
    t0 = time.perf_counter()
    plan = planner.plan(module, [EmbeddingCollectionSharder(fused_params=fused)])
    seconds = time.perf_counter() - t0
    hbm = [0.0] * world_size
    cost = [0.0] * world_size
    kinds = {}
    for option in capture.best:
        kinds[option.name] = f"{option.sharding_type} ({len(option.shards)} shards)"
        for shard in option.shards:
            hbm[shard.rank] += shard.storage.hbm
            cost[shard.rank] += shard.perf.total
    used = [r for r in range(world_size) if hbm[r] > 0]
    _ = plan  # the plan itself is what DMP would use; the numbers above come from its options
    return {
        "world_size": world_size,
        "sharding": kinds,
        "ranks_used": len(used),
        "hbm_max": max(hbm),
        "hbm_min_used": min(hbm[r] for r in used) if used else 0.0,
        "hbm_total": sum(hbm),
        "cost_ms": max(cost),
        "plan_seconds": seconds,
    }


def projection(args: argparse.Namespace, out: Path) -> list[dict]:
    from torchrec.modules.embedding_configs import EmbeddingConfig

    logging.getLogger("torchrec.distributed.planner").setLevel(logging.ERROR)
    d = args.dim
    id_tables = [
        EmbeddingConfig(name="t_item", embedding_dim=d, num_embeddings=args.id_rows, feature_names=["item"])
    ]
    sid_tables = [
        EmbeddingConfig(
            name=f"t_sid{k}", embedding_dim=d, num_embeddings=args.codebook_size, feature_names=[f"sid{k}"]
        )
        for k in range(args.num_sids)
    ]
    rows = []
    for w in args.world_sizes:
        for model, tables in (("id", id_tables), ("store", sid_tables)):
            try:
                # Small SID tables: the trainer's auto rule (replicate up to --replicate-max-rows rows,
                # else row-wise). Left free, the planner's proposers search table placements over
                # all W ranks (minutes at W=64, far longer at 512) to find the same answer.
                fixed = {
                    t.name: "data_parallel" if t.num_embeddings <= args.replicate_max_rows else "row_wise"
                    for t in tables
                    if model == "store"
                }
                r = plan_tables(tables, w, args.hbm_gb, args.proj_batch_size, fixed)
            except Exception as e:  # the planner raises when nothing fits
                r = {"world_size": w, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            r["model"] = model
            r["table_bytes"] = sum(t.num_embeddings * t.embedding_dim * 4 for t in tables)
            rows.append(r)
            print(f"planned {model} on {w} GPUs: {r.get('sharding', r.get('error'))}", flush=True)
    table = []
    for r in rows:
        if "error" in r:
            table.append(
                [r["model"], r["world_size"], human_bytes(r["table_bytes"]), r["error"], "", "", "", ""]
            )
            continue
        table.append(
            [
                r["model"], r["world_size"], human_bytes(r["table_bytes"]),
                "; ".join(f"{n} x {k}" for k, n in Counter(r["sharding"].values()).items()),
                r["ranks_used"], human_bytes(r["hbm_max"]), human_bytes(r["hbm_total"]), f"{r['cost_ms']:.3f}",
            ]
        )  # fmt: skip
    text = (
        "**Estimate (TorchRec planner), not measured.** "
        f"`EmbeddingShardingPlanner` on meta-device tables, `Topology(world_size=W, compute_device='cuda', "
        f"hbm_cap={args.hbm_gb:g} GB, 8 GPUs per host)`, batch {args.proj_batch_size} per rank, fused "
        f"row-wise Adagrad. id: one {args.id_rows:,} x {d} fp32 raw item-ID table; store: {args.num_sids} SID "
        f"tables of {args.codebook_size:,} x {d} (sharding fixed by the trainer's auto rule: replicated up to "
        f"{args.replicate_max_rows:,} rows, else row-wise; the ID table's sharding is the planner's choice). "
        "Item tables only (the other features and the dense network "
        "are the same for both). HBM = the planner's storage estimate (weights + optimizer state + its "
        "input/output buffers); cost = the slowest rank's estimated forward+backward time of these tables "
        "(compute + communication, TorchRec's perf model, ms per step).\n\n"
        + md_table(
            ["model", "GPUs", "table fp32", "sharding (planner's choice)", "ranks holding shards",
             "HBM on the fullest rank", "HBM all ranks", "est. cost ms/step"],
            table,
        )
    )  # fmt: skip
    (out / "projection.md").write_text(text + "\n")
    (out / "projection.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)
    return rows


def ints(text: str) -> list[int]:
    try:
        values = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/scaling", help="output folder (scaling.*, projection.*)")
    p.add_argument("--data", default="", help="dataset folder (default: a small synthetic set under OUT)")
    p.add_argument("--sids", default="", help="SID table folder of --data")
    p.add_argument("--procs", type=ints, default=list(range(1, (os.cpu_count() or 1) + 1)), help="e.g. 1,2,4")
    p.add_argument("--steps", type=int, default=100, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=1024, help="rows per batch per process")
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch threads per process (OMP_NUM_THREADS): each process gets the same share of cores",
    )  # fmt: skip
    p.add_argument("--projection-only", action="store_true", help="only the planner projection")
    p.add_argument("--sweep-only", action="store_true", help="only the process-count sweep")
    p.add_argument("--world-sizes", type=ints, default=[8, 64, 512], help="GPUs of the projected clusters")
    p.add_argument("--id-rows", type=int, default=1_000_000_000, help="rows of the projected raw-ID table")
    p.add_argument("--dim", type=int, default=64, help="embedding dim of the projected tables")
    p.add_argument("--num-sids", type=int, default=4, help="K of the projected SID tables")
    p.add_argument("--codebook-size", type=int, default=4096, help="C of the projected SID tables")
    p.add_argument(
        "--replicate-max-rows",
        type=int,
        default=4096,
        help="projected SID tables up to this size are replicated",
    )
    p.add_argument("--hbm-gb", type=float, default=80.0, help="HBM per projected GPU, GB")
    p.add_argument("--proj-batch-size", type=int, default=4096, help="batch per rank for the planner")
    args, extra = p.parse_known_args()
    args.trainer_args = extra[1:] if extra[:1] == ["--"] else extra
    if args.data and not args.sids:
        p.error("--data needs --sids (a SID table of that dataset)")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.projection_only:
        write_sweep(sweep(args, out), out, args)
    if not args.sweep_only:
        projection(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
