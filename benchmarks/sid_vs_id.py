"""Does STORE keep what the raw IDs carry? ID vs STORE vs a model without the item, over seeds.

    python benchmarks/sid_vs_id.py --data ml=DIR --data syn=DIR2 --seeds 0,1,2 --out runs/sid_vs_id \\
        [--epochs 3] [--batch-size 1024] [--num-sids 4] [--codebook-size 64] [--min-count 50]
        [-- TRAINER FLAGS (python -m trainer's, for every run)]

Per dataset and seed (every run resumable: one whose summary.json exists is skipped):

- ``id`` and ``store``: ``launch.compare`` with its defaults (the learned order when some feature's
  embeddings are learned: ID run, tokenizer from its tables, STORE);
- ``store_<source>`` for each other source the item has (``content``, ``learned``, ``text``; not
  ``sasrec``, which trains a model of its own): STORE on SIDs whose item embeddings come from there
  (the other features still learned from the ID run), to see which source should lead;
- ``no_item``: the ID model without the item (``--drop <item>``): the floor. Where STORE sits
  between it and the ID arm says how much of the item's signal the SIDs keep:
  ``kept = (AUC_store - AUC_no_item) / (AUC_id - AUC_no_item)``.

Prints one markdown table per dataset (mean +- standard deviation over the seeds) and writes it with
the raw numbers to OUT/sid_vs_id.md and OUT/sid_vs_id.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from data_pipeline import cli
from data_pipeline.cli import write_config
from data_pipeline.spec import DatasetSpec, atomic_write_text
from launch.compare import (
    CompareConfig,
    run_comparison,
    run_logged,
    split_trainer_args,
    tokenize_command,
    tokenize_config,
    train_command,
    train_config,
)
from store.tokenizer.config import FitConfig, TokenizerConfig, TokenizerOptions
from store.tokenizer.embeddings import item_sources
from trainer.config import TrainOptions, write_toml


def summary(run: Path) -> dict | None:
    path = run / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_seed(name: str, data: str, seed: int, args: argparse.Namespace, extra: list[str]) -> dict:
    """Every arm of one dataset and seed; {arm: summary}."""
    out = Path(args.out) / name / f"seed{seed}"
    tokenizer = TokenizerOptions(
        model=TokenizerConfig(num_sids=args.num_sids, codebook_size=args.codebook_size),
        fit=FitConfig(min_steps=args.tokenizer_min_steps), min_count=args.min_count,
    )  # fmt: skip
    cfg = CompareConfig(
        data=data, out=str(out), epochs=args.epochs, batch_size=args.batch_size, seed=seed,
        tokenizer=tokenizer, trainer=cli.parse(TrainOptions, extra, prog="benchmarks/sid_vs_id.py ... --"),
    )  # fmt: skip
    print(f"# {name} seed {seed}: ID vs STORE", flush=True)
    run_comparison(cfg)
    spec = DatasetSpec.load(data)
    for source in alternatives(spec):
        sids, arm = out / f"sids_{source}", f"store_{source}"
        if not (sids / "meta.json").is_file():
            print(f"# {name} seed {seed}: tokenize with the item from {source}", flush=True)
            alt = replace(cfg, tokenizer=replace(tokenizer, embedding=source))
            config = write_config(
                tokenize_config(alt, sids, out / "id"), out / "logs" / f"tokenize_{source}.json"
            )
            run_logged(
                tokenize_command(config), out / "logs" / f"tokenize_{source}.log", f"tokenizer ({source})"
            )
        if summary(out / arm) is None:
            print(f"# {name} seed {seed}: STORE with the item from {source}", flush=True)
            config = write_toml(
                train_config(cfg, "store", sids, out / arm), out / "logs" / f"train_{arm}.toml"
            )
            run_logged(train_command(1, config), out / "logs" / f"train_{arm}.log", arm)
    if spec.item_id and summary(out / "no_item") is None:
        print(f"# {name} seed {seed}: ID model without the item", flush=True)
        run = replace(train_config(cfg, "id", out / "sids", out / "no_item"), drop=spec.item_id)
        config = write_toml(run, out / "logs" / "train_no_item.toml")
        run_logged(train_command(1, config), out / "logs" / "train_no_item.log", "no_item")
    arms = ["id", "store", *(f"store_{src}" for src in alternatives(spec)), "no_item"]
    return {arm: s for arm in arms if (s := summary(out / arm)) is not None}


def alternatives(spec: DatasetSpec) -> list[str]:
    """The item's sources other than its default (sasrec left out: it trains a model of its own)."""
    if not spec.item_id:
        return []
    return [s for s in item_sources(spec)[1:] if s != "sasrec"]


def mean_sd(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} +- {sd:.{digits}f}"


def table(name: str, per_seed: list[dict]) -> str:
    rows = [
        "| arm | test AUC | GAUC | logloss | embedding MiB (rank 0) | runs |",
        "|---|---|---|---|---|---|",
    ]
    for arm in dict.fromkeys(a for s in per_seed for a in s):
        runs = [s[arm] for s in per_seed if arm in s]
        if not runs:
            continue

        def col(key: str, runs: list[dict] = runs) -> list[float]:
            return [r[key] for r in runs if key in r]

        mib = [r["embedding_bytes_per_rank"][0] / 2**20 for r in runs]
        rows.append(
            f"| {arm} | {mean_sd(col('auc'))} | {mean_sd(col('gauc'))} | {mean_sd(col('logloss'))} "
            f"| {mean_sd(mib, 2)} | {len(runs)} |"
        )
    kept = [
        (s["store"]["auc"] - s["no_item"]["auc"]) / (s["id"]["auc"] - s["no_item"]["auc"])
        for s in per_seed
        if {"id", "store", "no_item"} <= set(s) and s["id"]["auc"] != s["no_item"]["auc"]
    ]
    diff = [s["store"]["auc"] - s["id"]["auc"] for s in per_seed if {"id", "store"} <= set(s)]
    text = f"### {name}\n\n" + "\n".join(rows) + "\n\n"
    text += f"STORE - ID test AUC per seed: {', '.join(f'{d:+.4f}' for d in diff)} (mean {mean_sd(diff)})."
    if kept:
        text += (
            f" Share of the item's AUC lift over the no-item model that STORE keeps: "
            f"{', '.join(f'{k:.2f}' for k in kept)} (mean {statistics.mean(kept):.2f})."
        )
    return text + "\n"


def main(argv: list[str] | None = None) -> int:
    argv, extra = split_trainer_args(argv)
    p = argparse.ArgumentParser(prog="benchmarks/sid_vs_id.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, metavar="NAME=DIR", help="a dataset (repeat)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--out", default="runs/sid_vs_id", help="output folder")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--num-sids", type=int, default=TokenizerConfig.num_sids)
    p.add_argument("--codebook-size", type=int, default=TokenizerConfig.codebook_size)
    p.add_argument("--tokenizer-min-steps", type=int, default=FitConfig.min_steps)
    p.add_argument(
        "--min-count",
        type=int,
        default=TokenizerOptions.min_count,
        help="learned embeddings: IDs seen fewer times get the reserved code (0: the tokenizer chooses by validation)",
    )
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    datasets = {}
    for item in args.data:
        name, sep, path = item.partition("=")
        if not sep or not Path(path, "spec.json").is_file():
            p.error(f"--data {item!r}: expected NAME=DIR with DIR/spec.json")
        datasets[name] = path
    results: dict[str, list[dict]] = {}
    sections = []
    for name, path in datasets.items():
        results[name] = [run_seed(name, path, seed, args, extra) for seed in seeds]
        sections.append(table(name, results[name]))
        print(sections[-1], flush=True)
    out = Path(args.out)
    atomic_write_text(out / "sid_vs_id.md", "\n".join(sections))
    raw = {
        name: [{arm: {k: s[k] for k in ("auc", "gauc", "logloss", "embedding_bytes_per_rank") if k in s}
                for arm, s in per.items()} for per in per_seed]
        for name, per_seed in results.items()
    }  # fmt: skip
    atomic_write_text(out / "sid_vs_id.json", json.dumps(raw, indent=2) + "\n")
    print(f"wrote {out / 'sid_vs_id.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
