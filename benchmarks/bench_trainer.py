"""Trainer throughput: ID baseline vs STORE, 1 vs 2 processes, TorchRec pipeline on vs off, in one run.

    python benchmarks/bench_trainer.py [--rows 120000] [--batch-size 1024] [--steps 100] [--repeats 2]

Generates a synthetic dataset and a random SID table in a temp folder, then runs `python -m trainer`
(1 process) and `torchrun --nproc-per-node 2 -m trainer` for each model and pipeline setting, and
prints the steady-state samples/s from each run's summary.json (the first logging interval, which
holds start-up, is left out) and the two ratios the project targets: STORE / ID at equal batch size
(>= 1.0) and 2 processes / 1 process (>= 1.6). `pipeline` in the table says whether TorchRec's
pipeline actually ran (the trainer falls back to the plain loop for a model it cannot trace).
Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], out: Path, timeout: int) -> dict | None:
    # One thread per process (torchrun's default): 1 vs 2 processes then means 1 vs 2 cores, and
    # OpenMP threads do not spin against each other on a busy machine.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if r.returncode != 0:
        print(f"  FAILED ({r.returncode}): {' '.join(cmd[-6:])}\n{r.stderr[-1500:]}", file=sys.stderr)
        return None
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=120_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--num-sids", type=int, default=4)
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="id,store,dnn")
    p.add_argument("--procs", default="1,2")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument(
        "--repeats", type=int, default=2,
        help="run the whole grid this many times (interleaved) and report each setting's median",
    )  # fmt: skip
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")

    import torch

    from data_pipeline.synthetic import generate_dataset
    from launch.compare import trainer_command
    from store.sid import SidTable

    tmp = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    data, sids = tmp / "data", tmp / "sids"
    spec = generate_dataset(data, args.rows, items=args.items, users=args.items // 2, seed=0, progress=False)
    n_items = spec.item_table.num_items
    codes = torch.randint(
        0, args.codebook_size, (n_items, args.num_sids), generator=torch.Generator().manual_seed(0)
    )
    # random codes for every tokenized feature (the item and the user): the step time does not
    # depend on which codes, only on how many
    users = spec.feature("user_id").vocab_size
    SidTable.from_codes(codes, codebook_size=args.codebook_size, features={"user_id": codes[:users]}).save(
        sids
    )

    models, procs_list = args.models.split(","), [int(x) for x in args.procs.split(",")]
    runs: dict[tuple, list[dict]] = {}
    # repeats outermost: each setting's runs are spread over the whole benchmark, not back to back
    for rep, model, procs, pipeline in itertools.product(
        range(args.repeats), models, procs_list, (True, False)
    ):
        out = tmp / f"{model}_{procs}_{pipeline}_r{rep}"
        flags = [
            "--data", str(data), "--model", model, "--out", str(out), "--device", args.device,
            "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
            "--eval.max_batches", "2", "--logging.every_steps", "10", "--logging.progress", "false",
            "--logging.tensorboard", "false", "--model.num_rotations", str(args.num_sids),
            "--pipeline" if pipeline else "--no-pipeline",
        ]  # fmt: skip
        if model == "store":
            flags += ["--sids", str(sids)]
        if model == "id":  # same token count as STORE (the ID item embedding split into K tokens)
            flags += ["--model.id_item_tokens", str(args.num_sids)]
        print(
            f"running {model} procs={procs} pipeline={pipeline} (repeat {rep + 1}) ...",
            file=sys.stderr,
            flush=True,
        )
        s = run(trainer_command(procs, flags), out, args.timeout)
        if s is not None:
            runs.setdefault((model, procs, pipeline), []).append(s)
    median: dict[tuple, dict | None] = {}  # setting -> its median run's summary (None: every run failed)
    for setting in itertools.product(models, procs_list, (True, False)):
        got = sorted(runs.get(setting, []), key=lambda s: s["samples_per_s"])
        median[setting] = got[(len(got) - 1) // 2] if got else None

    def sps(model: str, procs: int, pipeline: bool) -> float:
        s = median.get((model, procs, pipeline))
        return float(s["samples_per_s"]) if s else float("nan")

    print(
        f"\nbatch size {args.batch_size} per rank, {args.steps} steps, device {args.device}, data {args.rows} rows, "
        f"median of {args.repeats} run(s) per setting, load average {os.getloadavg()[0]:.1f} at end"
    )
    head = (
        f"{'model':<8} {'procs':>5} {'pipeline':>9} {'used':>5} {'samples/s':>11} {'per rank':>10} {'auc':>7}"
    )
    print(head + f" {'data ms':>8} {'fwd+bwd ms':>11} {'opt ms':>7}")
    for (model, procs, pipeline), s in median.items():
        if s is None:
            print(f"{model:<8} {procs:>5} {str(pipeline):>9} {'-':>5} {'failed':>11}")
            continue
        print(
            f"{model:<8} {procs:>5} {str(pipeline):>9} {str(s['pipeline']):>5} {s['samples_per_s']:>11.0f} "
            f"{s['samples_per_s_per_rank']:>10.0f} {s['auc']:>7.4f} {s['step_time_ms_rank0']['data_wait']:>8.1f} "
            f"{s['step_time_ms_rank0']['forward_backward']:>11.1f} {s['step_time_ms_rank0']['optimizer']:>7.1f}"
        )
    print()
    for procs in procs_list:
        for pipeline in (True, False):
            ratio = sps("store", procs, pipeline) / sps("id", procs, pipeline)
            print(f"STORE / ID samples/s, {procs} proc, pipeline={pipeline}: {ratio:.2f}x (target >= 1.0x)")
    for model in models:
        for pipeline in (True, False):
            ratio = sps(model, 2, pipeline) / sps(model, 1, pipeline)
            print(f"{model}: 2 procs / 1 proc, pipeline={pipeline}: {ratio:.2f}x (target >= 1.6x)")
    for model in models:
        for procs in procs_list:
            ratio = sps(model, procs, True) / sps(model, procs, False)
            print(f"{model}: pipeline on / off, {procs} proc: {ratio:.2f}x")
    print(f"\noutputs in {tmp}")


if __name__ == "__main__":
    main()
