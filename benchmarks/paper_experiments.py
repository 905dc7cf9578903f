"""The runs behind docs/results.md: the paper's Table 1, Table 2 and Figure 2 at small scale.

    python benchmarks/paper_experiments.py --out runs/paper            # run (resumable), then tables
    python benchmarks/paper_experiments.py --out runs/paper --tables-only --write-doc docs/results.md
    python benchmarks/paper_experiments.py --out runs/t1 --seeds 2 --section table1 --only dnn,fm,gdcn \
        --write-doc docs/results.md                                   # Table 1 alone, mean +- std of 2 seeds

Datasets: MovieLens-100K (../shared/data/ml-100k, converted) and a synthetic set (``--syn-rows``),
whose true click probability gives the Bayes-optimal AUC as the ceiling. Runs go one after another
in priority order (main ID-vs-STORE comparison first, then ablations, baselines, sweeps); a run
whose summary.json exists is skipped, an interrupted one resumes from its checkpoint, so the script
can be stopped (``--time-budget``) and restarted. Tables are built only from the runs' outputs;
missing runs show as "not run".

``--seeds N`` trains every run with seeds 0 .. N-1 (folder OUT/<dataset>/runs/<name>/seed<k>/; one seed:
OUT/<dataset>/runs/<name>/, as before) and every table cell is the mean +- sample standard deviation
over the seeds that finished (the value alone for one seed; "k/N seeds" marks a row some seeds of
which are missing). The SID tables are tokenized once per dataset, with seed 0; where a tokenized
feature's embeddings are learned (no content, text or history for it: MovieLens' users and items),
the ID run of seed 0 trains first and the tokenizer quantizes its rows (``--from-run``), the order of
``launch.compare``. ``--section table1``
builds and writes Table 1 alone, into its own block of the document (``<!-- BEGIN GENERATED TABLE 1
-->`` ... ``<!-- END GENERATED TABLE 1 -->``).

Table 1: models x test AUC / GAUC / logloss with the best validation epoch's weights (+ tail AUC, samples/s,
embedding parameters, forward FLOPs per batch: analytical from store.models.flops for STORE / ID and the
linear-layer baselines, torch's FlopCounterMode on one batch of the test split for the others).
Table 2: tokenizer ablations (OPMQ, RQ-VAE, OPQ), no rotation, vanilla attention; forward TFLOPs per batch.
Figure 2: validation AUC per epoch (ID vs STORE), and test AUC vs number of SIDs, layers, MoBA sparsity.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from launch.compare import learned_embeddings, run_logged, trainer_command
from launch.report import (
    PREDICTIONS,
    bayes_optimal,
    ceiling_row,
    count,
    fmt,
    load_runs,
    md_table,
    per_epoch,
    signed,
    significance,
    spread,
)
from store.models import registry
from store.records import RunConfig, RunSummary
from store.tokenizer.config import FitConfig, TokenizerConfig

REPO = Path(__file__).resolve().parents[1]

SHARED = REPO.parent / "shared" / "data"
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"
SECTIONS = {
    "all": (BEGIN, END),
    "table1": ("<!-- BEGIN GENERATED TABLE 1 -->", "<!-- END GENERATED TABLE 1 -->"),
}
"""--section -> the markers of the document block it fills."""


@dataclass
class Run:
    """One trainer run of the experiment grid."""

    dataset: str
    """Dataset key (ml100k, syn)."""
    name: str
    """Run name (folder OUT/<dataset>/runs/<name>)."""
    model: str
    """Model of the zoo."""
    tok: str = "opmq_k4"
    """Tokenization key (folder OUT/<dataset>/sids/<tok>); the ID model takes its K as token count."""
    flags: list[str] = field(default_factory=list)
    """Extra trainer flags."""
    sweep: bool = False
    """Uses --sweep-epochs instead of --epochs."""


TOKENIZATIONS = {
    "opmq_k4": ("opmq", 4),
    "rqvae_k4": ("rqvae", 4),
    "opq_k4": ("opq", 4),
    "opmq_k2": ("opmq", 2),
    "opmq_k8": ("opmq", 8),
}
"""Tokenization key -> (method, K); the codebook size is --codebook-size for all."""


FIRST_BASELINES = 3
"""The first models of the registry after STORE and ID (DNN, DeepFM, DCN-v2) train before the sweeps,
the other baselines after them."""


def grid(datasets: list[str]) -> list[Run]:
    """Every run, in the order they are trained (most important first)."""
    main, ablations, baselines, sweeps, more = [], [], [], [], []
    for ds in datasets:
        main += [Run(ds, "id", "id"), Run(ds, "store", "store")]
        ablations += [
            Run(ds, "store_rqvae", "store", "rqvae_k4"),
            Run(ds, "store_opq", "store", "opq_k4"),
            Run(ds, "store_no_rotation", "store", flags=["--model.rotation", "false"]),
            Run(ds, "store_vanilla", "store", flags=["--model.vanilla_attention", "true"]),
        ]
        others = [m for m in registry.names() if m not in ("store", "id")]
        baselines += [Run(ds, m, m) for m in others[:FIRST_BASELINES]]
        more += [Run(ds, m, m) for m in others[FIRST_BASELINES:]]
        sweeps += [
            Run(ds, "store_k2", "store", "opmq_k2", sweep=True),
            Run(ds, "store_k8", "store", "opmq_k8", sweep=True),
            Run(ds, "store_l1", "store", flags=["--model.num_layers", "1"], sweep=True),
            Run(ds, "store_l3", "store", flags=["--model.num_layers", "3"], sweep=True),
            Run(ds, "store_s0.25", "store", flags=["--model.moba_sparsity", "0.25"], sweep=True),
            Run(ds, "store_s0.75", "store", flags=["--model.moba_sparsity", "0.75"], sweep=True),
        ]
    # Ablations and sweeps first on the synthetic data (it has the Bayes ceiling).
    key = {"syn": 0, "ml100k": 1}
    return (
        main
        + sorted(ablations, key=lambda r: key.get(r.dataset, 2))
        + sorted(baselines, key=lambda r: key.get(r.dataset, 2))
        + sorted(sweeps, key=lambda r: key.get(r.dataset, 2))
        + sorted(more, key=lambda r: key.get(r.dataset, 2))
    )


# -- preparation -------------------------------------------------------------------------------------
def python() -> list[str]:
    return [sys.executable]


def prepare_data(args: argparse.Namespace, ds: str) -> Path:
    out = Path(args.out) / ds / "data"
    if (out / "spec.json").is_file():
        return out
    print(f"== prepare {ds} -> {out}", flush=True)
    if ds == "ml100k":
        src = SHARED / "ml-100k"
        if not src.is_dir():
            raise SystemExit(f"error: {src} missing (MovieLens-100K); drop ml100k from --datasets")
        cmd = python() + ["-m", "data_pipeline", "convert", "movielens", "--src", str(src), "--out", str(out)]
    else:
        cmd = python() + [
            "-m", "data_pipeline", "generate", "--out", str(out), "--rows", str(args.syn_rows),
            "--items", str(args.syn_items), "--users", str(args.syn_users), "--seed", "0", "--no-progress",
        ]  # fmt: skip
    run_logged(cmd, Path(args.out) / ds / "logs" / "data.log", f"preparing {ds}")
    return out


def prepare_sids(args: argparse.Namespace, ds: str, tok: str) -> Path:
    out = Path(args.out) / ds / "sids" / tok
    if (out / "meta.json").is_file():
        return out
    method, k = TOKENIZATIONS[tok]
    cmd = python() + [
        "-m", "store.tokenizer", "--data", str(Path(args.out) / ds / "data"), "--out", str(out),
        "--method", method, "--num-sids", str(k), "--codebook-size", str(args.codebook_size),
        "--min-steps", str(args.tokenizer_min_steps), "--seed", "0", "--no-progress",
    ]  # fmt: skip
    source = "default sources"
    if learned_embeddings(Path(args.out) / ds / "data"):
        # launch.compare's order: the ID model (seed 0) trains first, the tokenizer quantizes the rows
        # it learned; every seed's STORE runs read that one table (tokenized once per dataset).
        id_run = Run(ds, "id", "id")
        execute(args, id_run, 0)
        id_dir = run_dir(args, id_run, 0)
        cmd += ["--from-run", str(id_dir)]
        source = f"learned from {id_dir}"
    print(f"== tokenize {ds} {tok} ({source}) -> {out}", flush=True)
    run_logged(cmd, Path(args.out) / ds / "logs" / f"tokenize_{tok}.log", f"tokenizing {ds} {tok}")
    return out


def seed_dir(args: argparse.Namespace, ds: str, name: str, seed: int) -> Path:
    """OUT/<ds>/runs/<name>/ with one seed (--seeds 1), else OUT/<ds>/runs/<name>/seed<k>/."""
    base = Path(args.out) / ds / "runs" / name
    return base if args.seeds == 1 else base / f"seed{seed}"


def run_dir(args: argparse.Namespace, run: Run, seed: int = 0) -> Path:
    return seed_dir(args, run.dataset, run.name, seed)


def execute(args: argparse.Namespace, run: Run, seed: int = 0) -> None:
    out = run_dir(args, run, seed)
    if (out / "summary.json").is_file():
        return
    data = prepare_data(args, run.dataset)
    # STORE reads a SID table; the ID model only takes its token count, K (the baselines read raw IDs)
    sids = prepare_sids(args, run.dataset, run.tok) if run.model == "store" else None
    epochs = args.sweep_epochs if run.sweep else args.epochs
    flags = [
        "--data", str(data), "--model", run.model, "--out", str(out), "--epochs", str(epochs),
        "--batch-size", str(args.batch_size), "--seed", str(seed), "--resume", "--logging.progress", "false",
    ]  # fmt: skip
    if sids is not None:
        flags += ["--sids", str(sids)]
    elif run.model == "id":
        flags += ["--model.id_item_tokens", str(TOKENIZATIONS[run.tok][1])]
    tag = run.name if args.seeds == 1 else f"{run.name}_seed{seed}"
    if args.max_steps:
        flags += ["--max-steps", str(args.max_steps)]
    print(f"== train {run.dataset}/{tag} ({run.model}, {epochs} epochs, seed {seed})", flush=True)
    run_logged(
        trainer_command(1, flags + run.flags + args.trainer_args),
        Path(args.out) / run.dataset / "logs" / f"train_{tag}.log",
        f"training {run.dataset}/{tag}",
    )


# -- tables ----------------------------------------------------------------------------------------
def finished_seeds(args: argparse.Namespace, ds: str, name: str) -> list[Path]:
    """The folders of run ``name``'s finished seeds (0 .. --seeds - 1: those with a summary.json), in seed order."""
    folders = [seed_dir(args, ds, name, k) for k in range(args.seeds)]
    return [d for d in folders if (d / "summary.json").is_file()]


def load_seeds(args: argparse.Namespace, ds: str, name: str) -> list[RunSummary]:
    """The summaries of run ``name``'s finished seeds, in seed order."""
    return [
        RunSummary.from_dict(json.loads((d / "summary.json").read_text()))
        for d in finished_seeds(args, ds, name)
    ]


def load(args: argparse.Namespace, ds: str, name: str) -> RunSummary | None:
    """The first finished seed's summary (the per-epoch table, the sweeps and the figure read one run)."""
    runs = load_seeds(args, ds, name)
    return runs[0] if runs else None


def cell(summaries: list[RunSummary], metric: str, one=fmt) -> str:
    """Mean +- sd of test ``metric`` over the seeds' summaries (the value alone for one seed)."""
    return spread([s.scores.get(metric) for s in summaries], one)


def throughput(summaries: list[RunSummary]) -> str:
    """Mean +- sd of the seeds' training samples/s."""
    return spread([s.samples_per_s for s in summaries], count)


def seeds_note(args: argparse.Namespace, summaries: list[RunSummary]) -> str:
    """The row label's suffix " (k/N seeds)" when some of its seeds are missing, else ""."""
    return "" if len(summaries) == args.seeds else f" ({len(summaries)}/{args.seeds} seeds)"


def flops(args: argparse.Namespace, ds: str, summary: RunSummary) -> tuple[float, float | None] | None:
    """(model forward TFLOPs, attention TFLOPs) per batch of the run's model. Analytical for STORE / ID
    and the linear-layer baselines (attention None for the latter); for the other baselines torch's
    FlopCounterMode over one forward of a test batch of that size (``counted_flops``)."""
    import torch

    from data_pipeline.spec import DatasetSpec
    from store.models.config import ModelConfig
    from store.models.flops import model_flops, store_model_flops
    from store.models.zoo import build_model
    from store.sid import SidTable

    cfg = summary.config
    mc = ModelConfig.from_dict(cfg.model_config.to_dict())
    spec = DatasetSpec.load(cfg.data)
    if registry.get(cfg.model).flops is None:
        return counted_flops(cfg, spec, mc) / 1e12, None
    sids = SidTable.load(cfg.sids, spec) if cfg.sids else None
    model = build_model(cfg.model, spec, mc, sids, device=torch.device("meta"))
    if cfg.model not in ("store", "id"):
        return model_flops(cfg.model, model, cfg.batch_size) / 1e12, None
    report = store_model_flops(model, cfg.batch_size)
    return report.total_tflops, report.attention_tflops


def counted_flops(cfg: RunConfig, spec, model_config) -> int:
    """Forward FLOPs of the run's (untrained) baseline on the first test batch of its batch size, as
    torch's FlopCounterMode counts them (matmuls and attention; a multiply-add is 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from data_pipeline.reader import ParquetBatchReader
    from store.models.zoo import build_model

    model = build_model(cfg.model, spec, model_config, None, device=torch.device("cpu")).eval()
    reader = ParquetBatchReader(cfg.data, "test", cfg.batch_size, spec=spec, shuffle=False)
    batch = next(iter(reader))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(batch)
    return counter.get_total_flops()


def emb_params(s: RunSummary) -> int | None:
    v = s.embedding_params_per_rank
    return v[0] if v else None


TABLE1_BASELINE = "dnn"
"""The model every Table 1 row's test AUC is tested against."""


def versus_baseline(
    args: argparse.Namespace, ds: str, names: list[str], baseline: str = TABLE1_BASELINE
) -> dict:
    """{name: "diff [low, high]"}: each run's seed-mean test AUC minus ``baseline``'s, with the 95 %
    interval of launch.report's paired bootstrap over the test users (every resample applied to every
    seed of both). Empty when the baseline has no finished seed; a run whose seeds kept no predictions
    file is left out (the table shows "-")."""
    folders = {n: finished_seeds(args, ds, n) for n in [baseline, *names]}
    if not folders[baseline]:
        return {}
    arms = load_runs({n: f for n, f in folders.items() if f})
    with_predictions = {n: rs for n, rs in arms.items() if all((r.path / PREDICTIONS).is_file() for r in rs)}
    if baseline not in with_predictions or len(with_predictions) < 2:
        return {}
    result = significance(with_predictions, baseline)
    out = {}
    for arm, r in result["arms"].items():
        d = next(x for x in r["bootstrap"] if x["metric"] == "auc")
        if math.isfinite(d["diff"]):
            out[arm] = f"{signed(d['diff'])} [{signed(d['low'])}, {signed(d['high'])}]"
    return out


def table1(args: argparse.Namespace, ds: str, ceiling: dict | None) -> str:
    rows = []
    names = {
        "dnn": "DNN",
        "deepfm": "DeepFM",
        "dcn": "DCN-v2",
        "autoint": "AutoInt",
        "rankmixer": "RankMixer-like",
        "onetrans": "OneTrans-like",
        "fm": "FM",
        "widedeep": "Wide&Deep",
        "gdcn": "GDCN-P",
        "masknet": "MaskNet (parallel)",
        "pepnet": "PEPNet",
        "ssr": "SSR-S (static filter)",
        "id": "ID baseline (STORE arch., raw item IDs)",
    }
    names["store"] = "STORE (OPMQ SIDs)"
    versus = versus_baseline(args, ds, [n for n in names if n != TABLE1_BASELINE])
    for name, shown in names.items():
        runs = load_seeds(args, ds, name)
        if not runs:
            rows.append([shown, "not run", "", "", "", "", "", "", ""])
            continue
        s = runs[0]
        sps = throughput(runs)
        f = flops(args, ds, s)
        mflops = f"{f[0] * 1e6:,.4g}" if f else "-"  # TFLOPs -> MFLOPs
        metrics = [cell(runs, k) for k in ("auc", "gauc", "logloss", "tail_auc")]
        vs = "" if name == TABLE1_BASELINE else versus.get(name, "-")
        rows.append(
            [shown + seeds_note(args, runs), metrics[0], vs, *metrics[1:], sps, emb_params(s), mflops]
        )
    if ceiling:
        row = ceiling_row(ceiling, 3, blank="")
        rows.append([*row[:2], "", *row[2:]])
    header = [
        "model",
        "AUC",
        "AUC - DNN [95%]",
        "GAUC",
        "logloss",
        "tail AUC",
        "samples/s",
        "embedding params",
    ]
    return md_table([*header, "MFLOPs/batch (fwd)"], rows)


def table2(args: argparse.Namespace, ds: str) -> str:
    variants = [
        ("store", "STORE (OPMQ, rotation, MoBA)"),
        ("store_rqvae", "tokenizer: RQ-VAE"),
        ("store_opq", "tokenizer: OPQ"),
        ("store_no_rotation", "no rotation"),
        ("store_vanilla", "vanilla attention"),
        ("id", "ID baseline (no SIDs)"),
    ]
    rows = []
    for name, shown in variants:
        runs = load_seeds(args, ds, name)
        if not runs:
            rows.append([shown, "not run", "", "", "", "", ""])
            continue
        f = flops(args, ds, runs[0])
        sps = throughput(runs)
        tf = (f"{f[0]:.3e}", f"{f[1]:.3e}" if f[1] is not None else "-") if f else ("-", "-")
        metrics = [cell(runs, k) for k in ("auc", "gauc", "logloss")]
        rows.append([shown + seeds_note(args, runs), *metrics, tf[0], tf[1], sps])
    return md_table(
        ["variant", "AUC", "GAUC", "logloss", "TFLOPs/batch (fwd)", "attention TFLOPs/batch", "samples/s"],
        rows,
    )


SWEEPS = {
    "number of SIDs K": [("store_k2", 2), ("store", 4), ("store_k8", 8)],
    "transformer layers": [("store_l1", 1), ("store", 2), ("store_l3", 3)],
    "MoBA sparsity": [("store_s0.25", 0.25), ("store", 0.5), ("store_s0.75", 0.75)],
}
"""Figure 2 sweeps: (run name, x value); 'store' is the default configuration (trained --epochs)."""


def sweep_table(args: argparse.Namespace, ds: str) -> str:
    rows = []
    for sweep, points in SWEEPS.items():
        for name, x in points:
            runs = load_seeds(args, ds, name)
            if not runs:
                rows.append([sweep, x, "not run", "", "", ""])
                continue
            ep1 = spread([per_epoch(s)[0].value("auc") if per_epoch(s) else None for s in runs])
            epochs = runs[0].config.epochs
            rows.append(
                [sweep + seeds_note(args, runs), x, epochs, ep1, cell(runs, "auc"), cell(runs, "gauc")]
            )
    return md_table(["sweep", "value", "epochs", "valid AUC after epoch 1", "test AUC", "test GAUC"], rows)


def epoch_table(args: argparse.Namespace, ds: str) -> str:
    rows = []
    for name, shown in (("id", "ID baseline"), ("store", "STORE")):
        s = load(args, ds, name)
        for e in per_epoch(s) if s else []:
            rows.append([shown, e.epoch, *(e.value(k) for k in ("auc", "gauc", "logloss", "tail_auc"))])
    return md_table(["model", "epoch", "valid AUC", "valid GAUC", "valid logloss", "valid tail AUC"], rows)


def figure2(args: argparse.Namespace, ds: str, ceiling: dict | None, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    ax = axes[0]
    drawn = False
    for name, shown in (("id", "ID baseline"), ("store", "STORE")):
        s = load(args, ds, name)
        if s:
            rows = per_epoch(s)
            ax.plot(
                [r.epoch for r in rows], [r.value("auc") or math.nan for r in rows], marker="o", label=shown
            )
            drawn = True
    ax.set_title("valid AUC vs epoch")
    ax.set_xlabel("epoch")
    ax.legend()
    for ax, (sweep, points) in zip(axes[1:], SWEEPS.items()):
        xs, ys = [], []
        for name, x in points:
            s = load(args, ds, name)
            if s and s.scores.get("auc") is not None:
                xs.append(x)
                ys.append(s.scores["auc"])
        ax.plot(xs, ys, marker="o", color="C1")
        ax.set_title(f"test AUC vs {sweep}")
        ax.set_xlabel(sweep)
    for ax in axes:
        if ceiling:
            ax.axhline(ceiling["auc"], color="grey", ls="--", lw=1, label="Bayes-optimal")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{ds}: small-scale Figure 2 (CPU)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def tables(args: argparse.Namespace, figures_dir: Path) -> str:
    parts = [seeds_line(args)]
    for ds in args.datasets:
        data = Path(args.out) / ds / "data"
        ceiling = bayes_optimal(data) if (data / "spec.json").is_file() else None
        title = {"ml100k": "MovieLens-100K", "syn": f"Synthetic ({args.syn_rows:,} rows)"}.get(ds, ds)
        parts.append(f"### {title}\n")
        if ceiling:
            parts.append(
                f"Bayes-optimal ceiling on the test split ({ceiling['rows']:,} rows): AUC {fmt(ceiling['auc'])}, "
                f"GAUC {fmt(ceiling['gauc'])}, logloss {fmt(ceiling['logloss'])}.\n"
            )
        parts += [f"**Table 1 ({ds})**: {TABLE1_CAPTION}\n", table1(args, ds, ceiling), ""]
        if args.section == "table1":
            continue
        parts += [f"**Table 2 ({ds})**: ablations (forward FLOPs of the whole model per batch of "
                  f"{args.batch_size}, analytical, store.models.flops).\n", table2(args, ds), ""]  # fmt: skip
        parts += [f"**Figure 2 ({ds})**, validation per epoch:\n", epoch_table(args, ds), ""]
        parts += [f"Sweeps ({ds}; sweep runs train --sweep-epochs, the default point --epochs):\n"]
        parts += [sweep_table(args, ds), ""]
        png = figures_dir / f"results_fig2_{ds}.png"
        if figure2(args, ds, ceiling, png):
            parts.append(f"![Figure 2, {ds}]({png.name})\n")
    return "\n".join(parts)


TABLE1_CAPTION = (
    "test split, scored with the best validation epoch's weights. AUC - DNN: the difference of the "
    "seed-mean test AUC from DNN's, with its 95% interval from a paired bootstrap over the test users "
    "(1,000 resamples, every seed of both models in each; launch.report's significance test). "
    "MFLOPs: forward, per batch of the runs' "
    "batch size; analytical (store.models.flops) for STORE, ID and the linear-layer baselines, torch's "
    "FlopCounterMode on one test batch for DCN-v2, AutoInt, RankMixer and OneTrans; both count matmuls "
    "(and attention), not element-wise products."
)


def seeds_line(args: argparse.Namespace) -> str:
    if args.seeds == 1:
        return "One seed (0) per run.\n"
    return (
        f"Seeds 0-{args.seeds - 1}: every metric is the mean ± sample standard deviation over the seeds "
        "(one value: all seeds equal).\n"
    )


def write_doc(doc: Path, generated: str, section: str = "all") -> None:
    from data_pipeline.spec import atomic_write_text

    begin, end = SECTIONS[section]
    text = doc.read_text() if doc.is_file() else f"# Results\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        raise SystemExit(f"error: {doc} has no {begin} ... {end} block to fill")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(doc, f"{head}{begin}\n{generated}\n{end}{tail}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/paper", help="experiment folder (resumable)")
    p.add_argument("--datasets", default="syn,ml100k", help="comma-separated: syn, ml100k")
    p.add_argument("--syn-rows", type=int, default=60_000, help="rows of the synthetic dataset")
    p.add_argument("--syn-items", type=int, default=3_000, help="items of the synthetic dataset")
    p.add_argument("--syn-users", type=int, default=6_000, help="users of the synthetic dataset")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the main / ablation / baseline runs")
    p.add_argument("--sweep-epochs", type=int, default=1, help="epochs of the Figure 2 sweep runs")
    p.add_argument("--batch-size", type=int, default=1024, help="rows per batch")
    p.add_argument("--max-steps", type=int, default=0, help="cap on steps per run (0: none)")
    p.add_argument(
        "--codebook-size", type=int, default=TokenizerConfig.codebook_size, help="C of every tokenization"
    )
    p.add_argument(
        "--tokenizer-min-steps", type=int, default=FitConfig.min_steps, help="tokenizer training steps"
    )
    p.add_argument("--only", default="", help="comma-separated run names to train (default: all)")
    p.add_argument(
        "--seeds", type=int, default=1, help="train every run with seeds 0 .. N-1; tables: mean ± std"
    )
    p.add_argument("--section", default="all", choices=sorted(SECTIONS), help="tables to build and write")
    p.add_argument("--time-budget", type=float, default=0, help="stop starting runs after this many minutes")
    p.add_argument("--tables-only", action="store_true", help="train nothing; print the tables")
    p.add_argument("--write-doc", default="", help="fill the generated block of this markdown file")
    p.add_argument("--list", action="store_true", help="print the run grid and exit")
    args, extra = p.parse_known_args()
    if extra and extra[0] == "--":
        extra = extra[1:]
    args.trainer_args = extra
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    bad = [d for d in args.datasets if d not in ("syn", "ml100k")]
    if bad:
        p.error(f"--datasets: unknown {bad}; choose from syn, ml100k")
    runs = grid(args.datasets)
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        runs = [r for r in runs if r.name in wanted]
    if args.list:
        for r in runs:
            done = sum((run_dir(args, r, k) / "summary.json").is_file() for k in range(args.seeds))
            state = "done" if done == args.seeds else f"{done}/{args.seeds}" if done else "todo"
            print(f"{state:5} {r.dataset:7} {r.name:18} {r.model:7} {r.tok:9} {' '.join(r.flags)}")
        return 0
    t0 = time.time()
    if not args.tables_only:
        for run, seed in [(run, seed) for run in runs for seed in range(args.seeds)]:
            if args.time_budget and time.time() - t0 > 60 * args.time_budget:
                print(f"== time budget of {args.time_budget} min reached; stopping (rerun to continue)")
                break
            try:
                execute(args, run, seed)
            except RuntimeError as e:  # one failed run does not stop the grid
                print(f"!! {e}", flush=True)
    doc = Path(args.write_doc) if args.write_doc else None
    generated = tables(args, doc.parent if doc else Path(args.out))
    if doc:
        write_doc(doc, generated, args.section)
        print(f"wrote {doc}")
    else:
        print(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
