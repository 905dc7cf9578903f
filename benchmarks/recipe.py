"""How the trainer's recipe defaults were chosen: one grid of recipe variants x models x seeds.

    python benchmarks/recipe.py --data ml=DIR --data syn=DIR2 --models dnn,deepfm,dcn --seeds 0,1 \\
        --variant "old=--model.embedding_init_std 0.0289" \\
        --variant "small=--model.embedding_init_std 1e-4" --out runs/recipe [--epochs 3] [-- TRAINER FLAGS]

Every (dataset, model, variant, seed) is one trainer run under OUT/<data>/<model>/<variant>/seed<k>
(resumable: a run whose summary.json exists is skipped). A variant is ``NAME=FLAGS``: trainer flags
added after the common ones (``-- TRAINER FLAGS``, then ``--epochs``, ``--batch-size``, ``--seed``).
Runs train every epoch (no early stopping unless a variant asks for it), so the table shows both
the test AUC of the best validation epoch's weights ("best", what the trainer reports) and of the
last epoch's ("last"), next to the mean validation AUC per epoch: the overfitting after epoch 1 is
visible, and so is what a recipe change does to it.

Prints one markdown table (mean +- standard deviation over seeds) and writes it with the raw numbers
to OUT/recipe.md and OUT/recipe.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from data_pipeline.spec import atomic_write_text
from store.records import RunSummary


def parse_pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name:
            sys.exit(f"{flag}: expected NAME=VALUE, got {v!r}")
        out[name] = rest
    return out


def run_one(data: str, model: str, flags: list[str], out: Path, log: Path) -> RunSummary:
    summary = out / "summary.json"
    if not summary.is_file():
        cmd = [sys.executable, "-m", "trainer", "--data", data, "--model", model, "--out", str(out), *flags]
        print("$", shlex.join(cmd), flush=True)
        t0 = time.perf_counter()
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            sys.exit(f"run failed (exit {rc}); see {log}")
        print(f"  done in {time.perf_counter() - t0:.0f}s", flush=True)
    return RunSummary.from_dict(json.loads(summary.read_text()))


def mean_sd(xs: list[float], digits: int = 4) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} +- {statistics.stdev(xs):.{digits}f}"


def row(data: str, model: str, variant: str, runs: list[RunSummary]) -> dict:
    epochs = max(len(r.valid) for r in runs)
    valid = [
        statistics.mean(r.valid[e].value("auc") for r in runs if len(r.valid) > e) for e in range(epochs)
    ]
    return {
        "data": data,
        "model": model,
        "variant": variant,
        "seeds": len(runs),
        "valid_auc_per_epoch": valid,
        "best_epochs": [r.best.epoch for r in runs],
        "test_auc_best": [r.scores["auc"] for r in runs],
        "test_auc_last": [r.test_last.value("auc") for r in runs],
        "test_logloss_best": [r.scores["logloss"] for r in runs],
        "test_logloss_last": [r.test_last.value("logloss") for r in runs],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| data | model | variant | valid AUC per epoch | best epoch | test AUC (best) | test AUC (last) "
        "| logloss (best) | logloss (last) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['model']} | {r['variant']} | {' / '.join(f'{v:.4f}' for v in r['valid_auc_per_epoch'])} "
            f"| {','.join(str(e) for e in r['best_epochs'])} | {mean_sd(r['test_auc_best'])} "
            f"| {mean_sd(r['test_auc_last'])} | {mean_sd(r['test_logloss_best'])} | {mean_sd(r['test_logloss_last'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", required=True, help="NAME=DATASET_DIR (repeatable)")
    p.add_argument("--models", default="dnn,deepfm,dcn")
    p.add_argument("--variant", action="append", required=True, help="NAME=TRAINER FLAGS (repeatable)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--out", default="runs/recipe")
    args = p.parse_args(argv)
    datasets = parse_pairs(args.data, "--data")
    variants = {k: shlex.split(v) for k, v in parse_pairs(args.variant, "--variant").items()}
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out)
    rows = []
    for name, data in datasets.items():
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            for variant, vflags in variants.items():
                runs = []
                for seed in seeds:
                    run_dir = out / name / model / variant / f"seed{seed}"
                    flags = [*extra, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                             "--seed", str(seed), "--logging.progress", "false", "--logging.tensorboard", "false",
                             *vflags]  # fmt: skip
                    runs.append(run_one(data, model, flags, run_dir, run_dir.with_suffix(".log")))
                rows.append(row(name, model, variant, runs))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    atomic_write_text(out / "recipe.md", text + "\n")
    atomic_write_text(out / "recipe.json", json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
