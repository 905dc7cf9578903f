"""The accuracy-memory frontier: ``python -m launch.frontier --data DIR --out OUT [--arms id,store,id-hash,...]
[--budgets 1,0.1,0.01] [--seeds N] [--epochs E] [--batch-size B] [--tokenizer.* ...] [--trainer.* ...]``.

Trains every arm at every embedding budget and seed with launch.compare's stages (`tokenize_stage`,
`train_stage`: the tokenizer once per seed, after the ID run when a tokenized feature's embeddings are
learned; a stage finished from the same inputs is reused, a partial one continued, one whose inputs
changed refused unless --overwrite), then writes OUT/frontier.md, frontier.json and frontier.png
(``launch.report.frontier``, the code ``python -m launch.report --frontier`` runs).

Arms come from the model registry: a budgeted arm (``ModelSpec.budget``: id-hash) is trained once per
budget, the others (id, store) once; an arm that ``needs_sids`` gets the seed's SID table. ``id`` is the
baseline and must be an arm. A budget (``--budgets``, comma-separated; launch/budget.py) is B rows per
tokenized feature, the same B for every tokenized feature: a fraction b of the largest tokenized
feature's rows V (B = max(2, round(b x V))), ``<n>r`` rows, or ``<x>MiB`` of float32 rows of
--trainer.model.embedding-dim per tokenized feature.

Layout: OUT/sids/seed<k>, OUT/<arm>/seed<k>, OUT/<arm>/<budget>/seed<k> for budgeted arms (the budget as
given), OUT/logs/seed<k>/. Exit codes as launch.compare's.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from data_pipeline import fs
from data_pipeline.cli import ConfigError
from launch.budget import Budget, parse_budgets
from launch.compare import (
    RunsConfig,
    reads_id_run,
    run_cli,
    tokenize_stage,
    train_config,
    train_stage,
)
from launch.report.significance import BASELINE, RESAMPLES
from store.models import registry


@dataclass
class FrontierConfig(RunsConfig):
    """Every arm at every embedding budget and seed, and the frontier of test AUC against bytes."""

    arms: str = "id,store,id-hash,id-zch,sid-prefix,hybrid"
    """Models to train, comma-separated (names of the model registry; id, the baseline, among them). The
    default: every embedding arm (the raw IDs, the SIDs, and each budgeted arm of the registry)."""
    budgets: str = "1,0.1,0.01"
    """Row budgets of the budgeted arms, comma-separated: a fraction of the largest tokenized feature's rows,
    <n>r rows or <x>MiB per tokenized feature."""
    resamples: int = RESAMPLES
    """Bootstrap resamples of the paired intervals."""

    def arm_list(self) -> list[str]:
        return [a.strip() for a in self.arms.split(",") if a.strip()]

    def validate(self) -> None:
        """ConfigError naming the flag, the value and the rule."""
        super().validate()
        arms = self.arm_list()
        for arm in arms:
            if arm not in registry.names():
                raise ConfigError(f"--arms {arm!r}: not a model; choose among {', '.join(registry.names())}")
        if BASELINE not in arms or len(set(arms)) < len(arms):
            raise ConfigError(f"--arms {self.arms}: must name {BASELINE!r} (the baseline), each arm once")
        parse_budgets(self.budgets)
        if self.resamples < 1:
            raise ConfigError(f"--resamples must be >= 1, got {self.resamples}")


@dataclass
class FrontierRun:
    """One trainer run of the frontier."""

    arm: str
    budget: Budget | None
    seed: int
    out: Path

    @property
    def name(self) -> str:
        """Its config and log files' name in OUT/logs/seed<k>/."""
        return self.arm if self.budget is None else f"{self.arm}_{self.budget.text}"


def frontier_runs(cfg: FrontierConfig, seed: int) -> list[FrontierRun]:
    """The runs of one seed: every arm, a budgeted one at every budget, in --arms order (id first)."""
    out = Path(fs.local_path(cfg.out))
    runs = []
    for arm in sorted(cfg.arm_list(), key=lambda a: a != BASELINE):
        budgets = parse_budgets(cfg.budgets) if registry.get(arm).budget is not None else [None]
        for b in budgets:
            folder = out / arm / (b.text if b else "") / f"seed{seed}"
            runs.append(FrontierRun(arm, b, seed, folder))
    return runs


def largest_vocab(cfg: FrontierConfig) -> int:
    """Rows of the largest tokenized feature's raw-ID table (what a fraction budget is a fraction of)."""
    from data_pipeline.spec import DatasetSpec, apply_high_card

    spec = apply_high_card(DatasetSpec.load(cfg.data), cfg.high_card)
    return max(spec.table_rows(f) for f in spec.high_cardinality)


def run_frontier(cfg: FrontierConfig) -> Path:
    """Every run of every seed, then the frontier; returns frontier.md."""
    from data_pipeline import outdir
    from launch.report.frontier import FRONTIER_FILES, frontier_points, write_frontier

    cfg.validate()
    out = Path(fs.local_path(cfg.out))
    entries = ("sids", "logs", *FRONTIER_FILES, *cfg.arm_list())
    outdir.claim(  # an earlier frontier is kept: each stage below is reused only if its inputs match
        out, "frontier", overwrite=cfg.overwrite, resume=True, local=True, label="launch.frontier"
    ).add(*entries)
    vocab, dim = largest_vocab(cfg), cfg.trainer.model_config.embedding_dim
    seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    tokenize = not cfg.sids and any(registry.get(a).needs_sids for a in cfg.arm_list())
    first = tokenize and reads_id_run(cfg)
    n_stages = sum(len(frontier_runs(cfg, s)) + tokenize for s in seeds) + 1
    stage, finished = 0, []
    for seed in seeds:
        seed_cfg = replace(cfg, seed=seed)
        logs, sids = out / "logs" / f"seed{seed}", cfg.sids or str(out / "sids" / f"seed{seed}")
        runs = frontier_runs(cfg, seed)
        order: list[FrontierRun | None] = [*runs[:1], None, *runs[1:]] if first else [None, *runs]
        for run in order if tokenize else runs:
            stage += 1
            at = f"== {stage}/{n_stages}"
            if run is None:
                tokenize_stage(seed_cfg, sids, logs, runs[0].out if first else None, at, f" (seed {seed})")
                continue
            config = train_config(seed_cfg, run.arm, sids, run.out)
            what = f"{run.arm} (seed {seed})"
            if run.budget is not None:
                spec = registry.get(run.arm)
                rows = run.budget.rows(vocab, dim)
                setattr(getattr(config.model_config, spec.group), spec.budget, rows)
                what = f"{run.arm} at {run.budget.text} = {rows} rows/feature (seed {seed})"
            train_stage(seed_cfg, config, logs, run.name, at, what)
            finished.append(run.out)
    print(f"== {n_stages}/{n_stages} frontier", flush=True)
    return write_frontier(out, frontier_points(finished), cfg.resamples)


DESCRIPTION = (
    "Accuracy-memory frontier: train every arm at every embedding budget and seed, then plot test AUC "
    "against embedding bytes. The trainer's options are --trainer.FLAG, the tokenizer's --tokenizer.FLAG."
)


def main(argv: list[str] | None = None) -> int:
    code, md = run_cli(FrontierConfig, argv, "python -m launch.frontier", DESCRIPTION, run_frontier)
    if code:
        return code
    print(f"frontier: {md}")
    for line in json.loads(md.with_suffix(".json").read_text())["slices"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
