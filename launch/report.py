"""The comparison report: markdown tables and PNG plots from finished trainer run folders.

``python -m launch.report --run id=DIR --run store=DIR [--run NAME=DIR ...] [--sids SIDS] [--scaling DIR] --out REPORT``

A DIR is one run folder (it holds summary.json) or a folder of run folders (one per seed, e.g.
``launch.compare --seeds 3``'s OUT/id); naming an arm several times adds seeds. Every run must be on
the same dataset (summary.json's dataset fingerprint). ``launch.compare`` writes its report through
this same code. Run folders and REPORT are local; the dataset the runs name (for the setup line and the
Bayes-optimal row) and SIDS may be URIs (``s3://``, ``gs://``, ... through data_pipeline/fs.py).

Reads each run's summary.json (test metrics of the best-validation and of the last weights, per-epoch
validation, throughput, embedding bytes per rank), its test predictions (predictions/test.parquet)
and the tokenizer's meta.json, and writes REPORT/report.md, REPORT/significance.json,
REPORT/auc_vs_epoch.png and REPORT/tensorboard/<arm>[/<seed>] (links to each run's TensorBoard
folder, so ``tensorboard --logdir REPORT/tensorboard`` shows them side by side). Each metric is the
mean +- standard deviation over an arm's seeds; the "Significance" section tests each arm against the
baseline (``id``) on the test split: a paired bootstrap over users for AUC, GAUC and logloss, and
DeLong's test for the AUC of each seed pair (launch/stats.py). The verdict reads "Not comparable:
REASONS." instead when a tokenized feature's test coverage (of the test rows whose ID occurs in the
train split, the share whose ID has real SIDs; the worst over the seeds' SID tables) is below 0.5 or
it has no real SIDs, when the test split has one class, or when an arm scored NaN test AUC; the console
lines (`console_lines`) add each feature's coverage and collision rates. Every section is always
present; one whose inputs are missing says what to run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipeline import fs, outdir
from data_pipeline.spec import DataError, DatasetSpec, atomic_write_text, open_shard
from launch.stats import NO_DIFFERENCE, delong, paired_bootstrap
from store.metrics import METRICS, Rows, compute

LABELS = {"id": "ID baseline", "store": "STORE (SIDs)"}
"""Display names of the runs the comparison makes; other run names are shown as they are."""
SECTIONS = (
    "Setup",
    "Test metrics",
    "Significance",
    "Validation per epoch",
    "Tail items",
    "Throughput",
    "Embedding parameters per rank",
    "Tokenizer",
    "Plots",
    "TensorBoard",
    "Throughput scaling",
    "Projection to a large cluster",
)
"""The report's '## ' sections, in order."""
PLOT = "auc_vs_epoch.png"
SIGNIFICANCE = "significance.json"
"""The tests' figures, machine-readable, next to report.md."""
REPORT_FILE = "report.md"
REPORT_ENTRIES = (REPORT_FILE, SIGNIFICANCE, "*.png", "tensorboard")
"""What a report folder holds (an earlier report is replaced; other files there are refused)."""
PREDICTIONS = Path("predictions") / "test.parquet"
"""Where a run keeps its test predictions (row, label, logit[, user, item]), relative to its folder."""
BASELINE = "id"
"""The arm the others are tested against when present (else the first arm)."""
RESAMPLES = 1000
"""Bootstrap resamples of the significance tests."""


# -- small formatting helpers ----------------------------------------------------------------------
def fmt(v: object, digits: int = 4) -> str:
    """Numbers for tables: NaN/None as '-', floats with `digits` decimals, ints with separators."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def human_bytes(n: float | None) -> str:
    if n is None or not math.isfinite(n):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; cells formatted with `fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def label(name: str) -> str:
    return LABELS.get(name, name)


# -- inputs ----------------------------------------------------------------------------------------
def load_summary(run_dir: str | Path) -> dict:
    """A run's summary.json; DataError naming the file when it is missing or not JSON."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise DataError(f"{path}: missing (the run did not finish; see its log)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def per_epoch(summary: dict) -> list[dict]:
    """The last validation entry of each epoch, in epoch order (epoch numbers from 1)."""
    last: dict[int, dict] = {}
    for entry in summary.get("valid", []):
        last[int(entry["epoch"])] = entry
    return [{**last[e], "epoch": e + 1} for e in sorted(last)]


def ceiling_row(ceiling: dict, blanks: int, blank: object = None) -> list:
    """The Bayes-optimal row of a model table: name, every registered metric (``blank`` where the
    ceiling has none, e.g. tail AUC), then ``blanks`` empty cells. GAUC is NaN ('-') for data without
    a user column."""
    return ["Bayes-optimal (true click prob.)", *[ceiling.get(k, blank) for k in METRICS], *[blank] * blanks]


def bayes_optimal(data: str | Path, split: str = "test") -> dict | None:
    """AUC / GAUC / logloss of the true click probability on `split` (synthetic data), else None.
    GAUC is NaN when the dataset has no user column (spec.user_id "")."""
    from data_pipeline.spec import list_shards, split_dir

    try:
        spec = DatasetSpec.load(data)
    except (DataError, OSError):
        return None
    if not spec.prob:
        return None
    cols = [c for c in (spec.prob, spec.label, spec.user_id) if c]
    tables = [fs.read_table(p, columns=cols) for p in list_shards(split_dir(data, split))]
    if not tables:
        return None
    prob = np.clip(
        np.concatenate([t[spec.prob].to_numpy() for t in tables]).astype(np.float64), 1e-7, 1 - 1e-7
    )
    labels = np.concatenate([t[spec.label].to_numpy() for t in tables]).astype(np.float64)
    users = np.concatenate([t[spec.user_id].to_numpy() for t in tables]) if spec.user_id else None
    rows = Rows.of(np.log(prob) - np.log1p(-prob), labels, users)
    return {"gauc": math.nan, **compute(rows), "rows": int(labels.size)}


def finite(values: Iterable[object]) -> list[float]:
    """The finite numbers among `values` (None, NaN and non-numbers left out)."""
    return [
        float(v)
        for v in values
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]


def finite_mean(values: Iterable[object]) -> float:
    xs = finite(values)
    return statistics.fmean(xs) if xs else math.nan


def finite_sd(values: Iterable[object]) -> float:
    """Sample standard deviation of the finite numbers (0 for fewer than two)."""
    xs = finite(values)
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def spread(values: Iterable[object], one: Callable[[float], str] = fmt) -> str:
    """Mean ± sample standard deviation of the finite numbers in `values`, each formatted with `one`;
    the value alone when there is one or all are equal; '-' when there is none."""
    xs = finite(values)
    if not xs:
        return "-"
    if len(xs) == 1 or min(xs) == max(xs):
        return one(xs[0])
    return f"{one(statistics.fmean(xs))} ± {one(statistics.stdev(xs))}"


def count(v: float) -> str:
    return f"{v:,.0f}"


def signed(v: float) -> str:
    return f"{v:+.4f}" if math.isfinite(v) else "-"


# -- run folders -----------------------------------------------------------------------------------
@dataclass
class Run:
    """One finished trainer run of an arm."""

    arm: str
    path: Path
    summary: dict

    @property
    def seed(self) -> str:
        """'seed <k>' from the run's config, else its folder name."""
        seed = self.summary.get("config", {}).get("seed")
        return f"seed {seed}" if seed is not None else self.path.name


def natural_key(path: Path) -> list:
    """seed2 before seed10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def find_runs(folder: str | Path) -> list[Path]:
    """A run folder (it holds summary.json) -> [it]; a folder of run folders (seeds) -> them, in natural
    order. DataError naming the folder otherwise (a run that did not finish has no summary.json)."""
    folder = Path(folder)
    if (folder / "summary.json").is_file():
        return [folder]
    if not folder.is_dir():
        raise DataError(
            f"{folder}: does not exist (expected a run folder with summary.json, or a folder of them)"
        )
    subs = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)
    if not subs:
        raise DataError(f"{folder}: no summary.json (the run did not finish; see its log) and no run folders")
    for sub in subs:
        if not (sub / "summary.json").is_file():
            raise DataError(
                f"{sub}: no summary.json ({folder} is neither a finished run nor a folder of finished runs; "
                "a run that did not finish has no summary.json)"
            )
    return subs


def dataset_key(run: Run) -> tuple[str, str]:
    """(what, value) identifying the run's dataset: its fingerprint, else (older runs) its data path."""
    record = run.summary.get("dataset") or {}
    if record.get("fingerprint"):
        return "fingerprint", str(record["fingerprint"])
    data = run.summary.get("config", {}).get("data", "?")
    return "data folder", str(Path(fs.local_path(data)).resolve()) if fs.is_local(data) else data


def load_runs(runs: Mapping[str, str | Path | Sequence[str | Path]]) -> dict[str, list[Run]]:
    """{arm: folder or folders} -> {arm: [Run per seed]}, each folder expanded by `find_runs`.
    DataError naming the folder: missing summary.json, or a run on another dataset than the first."""
    arms: dict[str, list[Run]] = {}
    for arm, folders in runs.items():
        folders = [folders] if isinstance(folders, str | Path) else list(folders)
        if not folders:
            raise DataError(f"arm {arm!r}: no run folder given")
        arms[arm] = [Run(arm, p, load_summary(p)) for f in folders for p in find_runs(f)]
    first = next(r for rs in arms.values() for r in rs)
    want = dataset_key(first)
    name = (first.summary.get("dataset") or {}).get("name", "?")
    for run in (r for rs in arms.values() for r in rs):
        got = dataset_key(run)
        if got != want:
            other = (run.summary.get("dataset") or {}).get("name", "?")
            raise DataError(
                f"{run.path}: trained on dataset {other!r} ({got[0]} {got[1]}), but {first.path} on "
                f"{name!r} ({want[0]} {want[1]}); the runs of one report must share their dataset"
            )
    seen: dict[Path, str] = {}
    for arm, rs in arms.items():
        seeds: dict[str, Path] = {}
        for run in rs:
            where = run.path.resolve()
            if where in seen:
                raise DataError(
                    f"{run.path}: given twice (as arm {seen[where]!r} and as arm {arm!r}); each run once"
                )
            seen[where] = arm
            if run.seed in seeds:
                raise DataError(
                    f"arm {arm!r}: {seeds[run.seed]} and {run.path} are both {run.seed}; a seed counts once "
                    "per arm"
                )
            seeds[run.seed] = run.path
    return arms


def check_sids(arms: Mapping[str, Sequence[Run]], metas: Sequence[dict], sid_dirs: Sequence[str]) -> None:
    """DataError when an SID table was built for another dataset than the runs' (its dataset fingerprint
    differs from theirs): its statistics would describe a table the runs did not use."""
    first = next(r for rs in arms.values() for r in rs)
    kind, want = dataset_key(first)
    if kind != "fingerprint":
        return
    for where, meta in zip(sid_dirs, metas, strict=True):
        record = meta.get("dataset") or {}
        got = record.get("fingerprint")
        if got and got != want:
            raise DataError(
                f"--sids {where}: built for dataset {record.get('name')!r} (fingerprint {got}), but the runs "
                f"were trained on {(first.summary.get('dataset') or {}).get('name')!r} (fingerprint {want})"
            )


def as_summaries(summaries: Mapping[str, dict | Sequence[dict]]) -> dict[str, list[dict]]:
    """{arm: summary or [summary per seed]} -> {arm: [summary per seed]}."""
    return {n: [s] if isinstance(s, dict) else list(s) for n, s in summaries.items()}


def scores_of(summary: dict, which: str = "best") -> dict:
    """The test metrics of the reported weights ('best': the best validation's with --eval.restore_best,
    else the last) or of the last weights ('last': test_last, empty in runs from before it existed)."""
    if which == "last":
        return summary.get("test_last") or {}
    return {**summary.get("test", {}), **{k: summary[k] for k in METRICS if k in summary}}


def reported_weights(runs: Sequence[dict]) -> str:
    """What the 'test' metrics of these runs were scored with, for the table."""
    if not any("test_last" in s for s in runs):
        return "end of training"
    if not all(s.get("config", {}).get("eval", {}).get("restore_best", True) for s in runs):
        return "last epoch"
    epochs = [s.get("best_epoch") for s in runs]
    shown = ", ".join(str(e + 1) for e in epochs if isinstance(e, int))
    return f"best valid (epoch {shown})" if shown else "best valid"


def epoch_rows(runs: Sequence[dict]) -> dict[int, list[dict]]:
    """{epoch (from 1): [the last validation entry of that epoch, per run that reached it]}."""
    out: dict[int, list[dict]] = {}
    for s in runs:
        for e in per_epoch(s):
            out.setdefault(e["epoch"], []).append(e)
    return dict(sorted(out.items()))


# -- plots -----------------------------------------------------------------------------------------
def plot_epochs(summaries: Mapping[str, dict | Sequence[dict]], path: Path) -> None:
    """Validation AUC, tail AUC and logloss per epoch for every arm (the 'one-epoch' effect): the mean
    over its seeds, and a band of one standard deviation when it has several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (
        ("auc", "validation AUC"),
        ("tail_auc", "validation tail-item AUC"),
        ("logloss", "validation logloss"),
    )
    for ax, (key, title) in zip(axes, panels):
        for name, runs in as_summaries(summaries).items():
            epochs = epoch_rows(runs)
            xs = list(epochs)
            values = [[e.get(key) for e in entries] for entries in epochs.values()]
            ys = np.array([finite_mean(v) for v in values])
            (line,) = ax.plot(xs, ys, marker="o", label=label(name))
            if len(runs) > 1:
                sd = np.array([finite_sd(v) for v in values])
                ax.fill_between(xs, ys - sd, ys + sd, color=line.get_color(), alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def link_tensorboard(runs: Mapping[str, Path], dest: Path) -> list[str]:
    """dest/<name> -> <run>/tensorboard (a symlink; a copy where links are not possible). A name may
    hold a '/' (arm/seed)."""
    dest.mkdir(parents=True, exist_ok=True)
    made = []
    for name, run in runs.items():
        src = (Path(run) / "tensorboard").resolve()
        if not src.is_dir():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        try:
            target.symlink_to(src, target_is_directory=True)
        except OSError:
            shutil.copytree(src, target)
        made.append(name)
    return made


def tensorboard_names(arms: Mapping[str, Sequence[Run]]) -> dict[str, Path]:
    """{'<arm>' or '<arm>/<seed folder>': run folder}: an arm of one run gets its own name."""
    out: dict[str, Path] = {}
    for arm, runs in arms.items():
        names = [r.path.name for r in runs]
        unique = len(set(names)) == len(names)
        for i, r in enumerate(runs):
            out[arm if len(runs) == 1 else f"{arm}/{names[i] if unique else f'run{i}'}"] = r.path
    return out


# -- sections --------------------------------------------------------------------------------------
def section_setup(arms: Mapping[str, Sequence[Run]]) -> str:
    first = next(iter(arms.values()))[0].summary
    cfg = first.get("config", {})
    data = cfg.get("data", "?")
    try:
        spec = DatasetSpec.load(data)
        rows = spec.num_rows or {}
        data_line = f"`{data}` ({spec.name}; rows {', '.join(f'{k} {v:,}' for k, v in rows.items())})"
    except (DataError, OSError):
        data_line = f"`{data}`"
    mc = cfg.get("model_config", {})
    ev = cfg.get("eval", {})
    lines = [
        f"- data: {data_line}",
        f"- epochs {cfg.get('epochs')}, batch size {cfg.get('batch_size')} per rank, "
        f"{first.get('world_size')} rank(s) on {first.get('device')}"
        + (f", max steps {cfg['max_steps']}" if cfg.get("max_steps") else ""),
        f"- model: embedding dim {mc.get('embedding_dim')}, {mc.get('num_layers')} layers, "
        f"{mc.get('num_heads')} heads, MoBA block {mc.get('moba_block_size')} sparsity {mc.get('moba_sparsity')}"
        f"{' (vanilla attention)' if mc.get('vanilla_attention') else ''}, rotation {mc.get('rotation')}",
        f"- optimizers: sparse {cfg.get('optim', {}).get('sparse')} lr {cfg.get('optim', {}).get('sparse_lr')}, "
        f"dense {cfg.get('optim', {}).get('dense')} lr {cfg.get('optim', {}).get('dense_lr')}",
    ]
    if "restore_best" in ev:
        lines.append(
            f"- test split scored with {'the best validation' if ev['restore_best'] else 'the last'} weights "
            f"(valid {ev.get('metric')}; early stopping "
            + (f"after {ev['patience']} validations without improvement)" if ev.get("patience") else "off)")
        )
    lines += [
        f"- versions: {first.get('versions')}",
        "- seeds: "
        + "; ".join(f"{label(n)} {len(rs)} ({', '.join(r.seed for r in rs)})" for n, rs in arms.items()),
        "- runs: "
        + "; ".join(f"{label(n)} " + ", ".join(f"`{r.path}`" for r in rs) for n, rs in arms.items()),
    ]
    return "\n".join(lines)


def section_test(summaries: Mapping[str, dict | Sequence[dict]], ceiling: dict | None) -> str:
    """Test metrics per arm (mean ± std over its seeds), with the reported and the last weights."""
    arms = as_summaries(summaries)
    rows = []
    for n, runs in arms.items():
        for which in ("best", "last"):
            if which == "last" and not any("test_last" in s for s in runs):
                continue
            metrics = [scores_of(s, which) for s in runs]
            rows.append([
                label(n), reported_weights(runs) if which == "best" else "last epoch",
                *[spread(m.get(k) for m in metrics) for k in METRICS],
                spread((s.get("steps") for s in runs), count), len(runs),
            ])  # fmt: skip
    if ceiling:
        row = ceiling_row(ceiling, 2)
        rows.append([row[0], "-", *row[1:]])
    text = md_table(["model", "weights", *(m.title for m in METRICS.values()), "steps", "seeds"], rows)
    text += (
        "\n\nMean ± standard deviation over the seeds (a single value: one seed, or all seeds equal). "
        "Whether a difference is more than noise: the next section."
    )
    if not any("gauc" in scores_of(s) for runs in arms.values() for s in runs):
        text += "\n\nNo GAUC: the dataset has no user column."
    if not any("tail_auc" in scores_of(s) for runs in arms.values() for s in runs):
        text += "\n\nNo tail-item AUC: the dataset has no item column."
    return text


def section_epochs(summaries: Mapping[str, dict | Sequence[dict]]) -> str:
    rows = []
    effect = []
    for name, runs in as_summaries(summaries).items():
        epochs = epoch_rows(runs)
        for epoch, entries in epochs.items():
            rows.append([
                label(name), epoch, *[spread(e.get(k) for e in entries) for k in METRICS], len(entries),
            ])  # fmt: skip
        means = {e: finite_mean(x.get("auc") for x in entries) for e, entries in epochs.items()}
        finite = {e: v for e, v in means.items() if math.isfinite(v)}
        if len(finite) >= 2:
            first, last = min(finite), max(finite)
            best = max(finite, key=finite.get)
            effect.append(
                f"{label(name)}: AUC epoch {first} -> {last}: {finite[last] - finite[first]:+.4f} "
                f"(best at epoch {best})"
            )
    text = md_table(["model", "epoch", *(m.title for m in METRICS.values()), "seeds"], rows)
    if effect:
        text += (
            "\n\nOne-epoch effect (raw-ID models tend to peak after one epoch and overfit, SIDs keep improving; "
            "means over the seeds that reached the epoch):\n" + "\n".join(f"- {line}" for line in effect)
        )
    return text


def section_tail(summaries: Mapping[str, dict | Sequence[dict]]) -> str:
    arms = as_summaries(summaries)
    tests = {n: [scores_of(s) for s in runs] for n, runs in arms.items()}
    buckets = max((len(t.get("bucket_auc") or []) for ts in tests.values() for t in ts), default=0)
    if not buckets:
        return "No per-bucket AUC in the runs' summaries."
    first = next(iter(arms.values()))[0]
    tail_buckets = first.get("config", {}).get("eval", {}).get("tail_buckets")
    bucket_rows = next((t["bucket_rows"] for ts in tests.values() for t in ts if t.get("bucket_rows")), None)
    rows = []
    for b in range(buckets):
        row: list[object] = [b, (bucket_rows or [None] * buckets)[b]]
        row += [spread((t.get("bucket_auc") or [None] * buckets)[b] for t in tests[n]) for n in arms]
        rows.append(row)
    head = (
        f"Test AUC per item-popularity bucket (items split into {buckets} equal parts of the catalog by train "
        f"impressions, bucket 0 = least popular; tail AUC = buckets 0..{(tail_buckets or 1) - 1}):\n\n"
    )
    return head + md_table(["bucket", "test rows", *[f"{label(n)} AUC" for n in arms]], rows)


def section_throughput(summaries: Mapping[str, dict | Sequence[dict]]) -> str:
    arms = as_summaries(summaries)
    rows = []
    for n, runs in arms.items():
        s = runs[0]
        rows.append([
            label(n), spread((r.get("samples_per_s") for r in runs), count),
            spread((r.get("samples_per_s_per_rank") for r in runs), count), s.get("world_size"),
            s.get("device"), s.get("pipeline"),
            spread((max(r.get("peak_memory_bytes_per_rank") or [math.nan]) for r in runs), human_bytes),
            spread((r.get("wall_s") for r in runs), lambda v: f"{v:.1f}"),
        ])  # fmt: skip
    text = md_table(
        ["model", "samples/s (total)", "samples/s per rank", "ranks", "device", "TorchRec pipeline",
         "peak memory per rank", "wall s"],
        rows,
    )  # fmt: skip
    blockers = {
        label(n): rs[0]["pipeline_blocker"] for n, rs in arms.items() if rs[0].get("pipeline_blocker")
    }
    if blockers:
        text += "\n\nTrained without TorchRec's pipeline (model not traceable): " + "; ".join(
            f"{k}: {v}" for k, v in blockers.items()
        )
    return text + (
        "\n\nSteady-state training throughput (first logging interval excluded), evaluation not counted; "
        "mean ± standard deviation over the seeds."
    )


def section_embeddings(summaries: Mapping[str, dict | Sequence[dict]]) -> str:
    arms = as_summaries(summaries)
    rows = []
    for n, runs in arms.items():
        ranks = max(len(s.get("embedding_params_per_rank") or []) for s in runs)

        def at(key: str, r: int, runs=runs) -> list:
            return [(s.get(key) or [])[r] if r < len(s.get(key) or []) else None for s in runs]

        for r in range(ranks):
            rows.append([
                label(n), r, spread(at("embedding_params_per_rank", r), count),
                spread(at("embedding_bytes_per_rank", r), human_bytes),
                spread(at("embedding_optimizer_bytes_per_rank", r), human_bytes),
            ])  # fmt: skip
    text = md_table(
        ["model", "rank", "embedding parameters", "embedding bytes", "optimizer state bytes"], rows
    )
    for n, runs in arms.items():
        plan = runs[0].get("sharding_plan") or []
        if plan:
            text += f"\n\nSharding plan, {label(n)}:\n\n" + md_table(
                ["table", "sharding", "kernel", "ranks"],
                [[p["table"], p["sharding"], p["kernel"], str(p["ranks"])] for p in plan],
            )
    return text


def embedding_dim(summaries: Mapping[str, Sequence[dict]]) -> int | None:
    """D of the runs' tables, from their config (None when no run records it)."""
    for s in (s for runs in summaries.values() for s in runs):
        dim = s.get("config", {}).get("model_config", {}).get("embedding_dim")
        if dim:
            return int(dim)
    return None


def read_meta(sids: str | Path | None) -> dict | None:
    """The tokenizer's meta.json in the SID folder ``sids`` (a path or a URI); None without one.
    DataError when it is not JSON; StorageError when the store holding it cannot be read."""
    if not sids:
        return None
    path = fs.join(sids, "meta.json")
    if not fs.is_file(path):
        return None
    try:
        return json.loads(fs.read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def sid_features(meta: dict) -> dict[str, dict]:
    """{tokenized feature: its figures} of a meta.json (older tables: the item's, at the top level)."""
    return meta.get("features") or {meta.get("item_feature", "item_id"): meta}


def has_real_sids(m: dict) -> bool:
    """Whether some ID of the feature has real SIDs (items_tokenized 0: every row has the reserved code;
    tables from before that count: assumed)."""
    return m.get("items_tokenized") != 0


def coverage_of(m: dict) -> float | None:
    """Of the test rows whose ID occurs in the train split, the share whose ID has real SIDs; None when
    unknown (tables from before the tokenizer measured it, unless no ID has real SIDs: 0) or undefined
    (no test row's ID occurs in the train split)."""
    if "test_coverage" in m:
        v = m["test_coverage"]
        return float(v) if v is not None else None
    return None if has_real_sids(m) else 0.0


@dataclass
class FeatureSids:
    """A tokenized feature over the SID tables of a comparison (one per seed): the worst of each figure."""

    feature: str
    coverage: float | None
    """The lowest test coverage (`coverage_of`); None when no table knows it."""
    collision_rate: float | None
    """The highest share of tokenized IDs whose SID tuple another ID shares."""
    collision_rate_rows: float | None
    """The same weighted by train rows (None in tables from before it was measured)."""
    real_sids: bool
    """Every table gives some ID of the feature real SIDs."""


def worst_features(metas: Sequence[dict]) -> list[FeatureSids]:
    """One FeatureSids per tokenized feature of the tables, in the first table's order."""
    figures: dict[str, list[dict]] = {}
    for meta in metas:
        for f, m in sid_features(meta).items():
            figures.setdefault(f, []).append(m)
    out = []
    for f, ms in figures.items():
        coverage = finite(coverage_of(m) for m in ms)
        ids = finite(m.get("collision_rate") for m in ms)
        rows = finite(m.get("collision_rate_rows") for m in ms)
        out.append(FeatureSids(
            f, min(coverage, default=None), max(ids, default=None), max(rows, default=None),
            all(has_real_sids(m) for m in ms),
        ))  # fmt: skip
    return out


def sid_reasons(metas: Sequence[dict]) -> list[str]:
    """Why the tables make the arms not comparable, per tokenized feature: test coverage below
    COVERAGE_FLOOR (the worst over the tables), or no ID with real SIDs."""
    from store.tokenizer.select import COVERAGE_FLOOR  # the floor the tokenizer's selection keeps to

    reasons = []
    for f in worst_features(metas):
        if f.coverage is not None and f.coverage < COVERAGE_FLOOR:
            reasons.append(
                f"{f.feature}: {100 * f.coverage:.3g}% of the test rows whose ID occurs in train have real SIDs "
                f"(coverage {f.coverage:.3f} < {COVERAGE_FLOOR:.2f})"
            )
        elif not f.real_sids:
            reasons.append(f"{f.feature}: no ID has real SIDs (every row has the reserved code)")
    return reasons


def feature_lines(metas: Sequence[dict]) -> list[str]:
    """One console line per tokenized feature: its test coverage and collision rates (the worst over
    the tables)."""
    several = f" (worst of {len(metas)} SID tables)" if len(metas) > 1 else ""
    lines = []
    for f in worst_features(metas):
        line = (
            f"{f.feature}: coverage {fmt(f.coverage, 2)} (test rows with real SIDs), collision rate "
            f"{fmt(f.collision_rate)} of IDs / {fmt(f.collision_rate_rows)} of train rows{several}"
        )
        lines.append(line + ("" if f.real_sids else "; no real SIDs (every row has the reserved code)"))
    return lines


def section_selection(selection: dict) -> str:
    """The tokenizer's choice among SID variants (meta["selection"]): one row per candidate, and the
    proxy on raw IDs as a reference when recorded. Keys it does not know are ignored."""
    forced = " (forced by a flag)" if selection.get("forced") else ""
    rows = [[c.get("name", "?"), c.get("valid_auc"), "yes" if c.get("chosen") else ""]
            for c in selection.get("candidates") or []]  # fmt: skip
    if not rows:  # forced (--min-count / --rare): nothing was tried
        return f"SID variant: {selection.get('chosen')}{forced}."
    if "raw_id_valid_auc" in selection:
        rows.append(["raw IDs (reference)", selection["raw_id_valid_auc"], ""])
    metric = selection.get("metric", "valid AUC")
    head = f"SID variants the tokenizer tried (by {metric}): chosen {selection.get('chosen')}{forced}"
    return head + ".\n\n" + md_table(["candidate", "valid AUC", "chosen"], rows)


def section_tokenizer(sids: str | Path | None, dim: int | None = None) -> str:
    """The tokenizer's figures per tokenized feature, and each feature's embedding size in both arms
    (``sids``: the SID folder, a path or a URI; ``dim``: the runs' embedding width, for bytes; fp32
    tables). StorageError when the store holding ``sids`` cannot be read."""
    if not sids:
        return "No SID table was given (`--sids SIDS`, the folder `python -m store.tokenizer` wrote)."
    meta_path = fs.join(sids, "meta.json")
    meta = read_meta(sids)
    if meta is None:
        return f"No tokenizer meta.json in `{sids}` (`python -m store.tokenizer --data DIR --out SIDS` writes it)."
    features = sid_features(meta)
    codewords = meta.get("codewords", meta.get("codebook_size"))
    head = (
        f"From `{meta_path}`: method {meta.get('method')}, K = {meta.get('num_sids')} semantic IDs per feature, "
        f"C = {codewords} codewords per codebook"
    )
    if "unseen_code" in meta:
        m = meta.get("min_count", 1)
        if meta.get("rare") == "neighbours" and m > 1:
            rare = (
                f" (IDs seen there fewer than {m} times have the SIDs their co-occurrence neighbours predict)"
            )
        elif m > 1:
            rare = f" or seen there fewer than {m} times"
        else:
            rare = ""
        head += (
            f", plus one reserved code for IDs absent from the train split{rare} "
            f"(learned from {meta.get('learned_from')})"
        )
    rows = []
    for f, m in features.items():
        util, ppl = m.get("utilisation") or [], m.get("perplexity") or []
        rows.append([
            f, m.get("embedding_source"), m.get("rows", meta.get("num_items")), m.get("coverage"),
            coverage_of(m), m.get("recon_error_rel"),
            f"{fmt(sum(util) / len(util), 3)} / {fmt(sum(ppl) / len(ppl), 1)}" if util else "-",
            m.get("collision_rate"), m.get("collision_rate_rows"), m.get("unique_sids"),
        ])  # fmt: skip
    text = head + ".\n\n" + md_table(
        ["feature", "embedding", "rows", "IDs tokenized", "test coverage", "recon error (rel.)",
         "utilisation / perplexity", "collision rate (IDs)", "collision rate (train rows)",
         "distinct SID tuples"],
        rows,
    )  # fmt: skip
    from store.tokenizer.select import COVERAGE_FLOOR

    text += (
        "\n\nIDs tokenized: the share of the feature's IDs with real SIDs. Test coverage: of the test rows "
        "whose ID occurs in the train split (those the ID arm could learn), the share whose ID has real SIDs "
        f"('-': not recorded by this tokenizer); below {COVERAGE_FLOOR:.2f} the verdict reads not comparable. "
        "Collision rate: the share of tokenized IDs (of train rows) whose SID tuple another ID shares."
    )
    if meta.get("selection"):
        text += "\n\n" + section_selection(meta["selection"])
    params = meta.get("embedding_params")
    if params:
        mib = (lambda n: f"{n * dim * 4 / 2**20:,.2f}") if dim else (lambda n: "-")
        real = {f: has_real_sids(features.get(f, {})) for f in params}
        sizes = [
            [f, f"{p['raw_id']:,}", mib(p["raw_id"]), f"{p['sid']:,}", mib(p["sid"]),
             f"{p['raw_id'] / p['sid']:,.0f}x" if real[f] else "no real SIDs"]
            for f, p in params.items()
        ]  # fmt: skip
        saved = {f: p for f, p in params.items() if real[f]}
        if saved:
            raw, sid = sum(p["raw_id"] for p in saved.values()), sum(p["sid"] for p in saved.values())
            sizes.append(["all tokenized", f"{raw:,}", mib(raw), f"{sid:,}", mib(sid), f"{raw / sid:,.0f}x"])
        text += (
            f"\n\nEmbedding rows and MiB (fp32, D = {dim}) per tokenized feature: the ID arm's raw-ID table "
            "vs STORE's K codebooks:\n\n"
            + md_table(["feature", "ID rows", "ID MiB", "STORE rows", "STORE MiB", "ratio"], sizes)
        )
        if len(saved) < len(params):
            left_out = " and is left out of the total" if saved else "; no feature has real SIDs: no total"
            text += (
                "\n\nA feature with no real SIDs (every row has the reserved code) saves no memory worth "
                f"reporting: it has no ratio{left_out}."
            )
    return text


def section_scaling(scaling: Path | None, out: Path, key: str, heading_hint: str) -> str:
    """Include a bench_scaling.py output (`key`.md and `key`.png) if present."""
    if scaling is None or not (Path(scaling) / f"{key}.md").is_file():
        return f"Not run. {heading_hint}"
    text = (Path(scaling) / f"{key}.md").read_text().strip()
    png = Path(scaling) / f"{key}.png"
    if png.is_file():
        shutil.copyfile(png, out / png.name)
        text += f"\n\n![{key}]({png.name})"
    return text


# -- significance ----------------------------------------------------------------------------------
@dataclass
class Paired:
    """The test predictions of every run on the rows all of them scored, in row order."""

    labels: np.ndarray
    """(N,) 0/1."""
    users: np.ndarray | None
    """(N,) user per row; None when the dataset has no user column."""
    logits: dict[str, list[np.ndarray]]
    """{arm: [(N,) per run]}, in the order of the arm's runs."""
    dropped: int
    """Rows some run scored and another did not (left out of the tests)."""
    tail: np.ndarray | None = None
    """(N,) bool, the rows of tail items, when every run marked the same ones (tail AUC's test)."""


def read_predictions(run: Run) -> dict[str, np.ndarray]:
    path = run.path / PREDICTIONS
    try:
        table = open_shard(path).read()  # DataError naming the file for a broken footer
    except (OSError, ValueError) as e:  # a corrupt page (pyarrow's errors are OSError / ValueError)
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    missing = {"row", "label", "logit"} - set(table.column_names)
    if missing:
        raise DataError(f"{path}: no column {', '.join(sorted(missing))} (not a trainer's predictions file)")
    return {c: table[c].to_numpy() for c in table.column_names}


def paired_predictions(arms: Mapping[str, Sequence[Run]]) -> Paired:
    """Every run's predictions aligned on the test rows they share (the ``row`` column). DataError
    naming the file when a run's labels or users differ from the first run's on shared rows (another
    test split)."""
    runs = [r for rs in arms.values() for r in rs]
    preds = []
    for r in runs:
        p = read_predictions(r)
        order = np.argsort(p["row"], kind="stable")
        preds.append({k: v[order] for k, v in p.items()})
    common = preds[0]["row"]
    for p in preds[1:]:
        common = np.intersect1d(common, p["row"], assume_unique=True)
    if common.size == 0:
        raise DataError(f"{runs[0].path / PREDICTIONS}: shares no test row with the other runs")
    with_users = all("user" in p for p in preds)
    first, ref = runs[0], {}
    logits: dict[str, list[np.ndarray]] = {arm: [] for arm in arms}
    for r, p in zip(runs, preds):
        at = np.searchsorted(p["row"], common)
        for col in ("label", "user") if with_users else ("label",):
            values = p[col][at]
            if col not in ref:
                ref[col] = values
            elif not np.array_equal(values, ref[col]):
                bad = int((values != ref[col]).sum())
                raise DataError(
                    f"{r.path / PREDICTIONS}: {col} differs from {first.path / PREDICTIONS} on {bad} of the "
                    f"{common.size} test rows both scored: not the same test split"
                )
        logits[r.arm].append(p["logit"][at].astype(np.float64))
    dropped = max(p["row"].size for p in preds) - common.size
    # the tail rows: only when every run marked the same ones (other --eval.tail_buckets: no tail test)
    tails = [p["tail"][np.searchsorted(p["row"], common)] if "tail" in p else None for p in preds]
    tail = tails[0] if all(t is not None and np.array_equal(t, tails[0]) for t in tails) else None
    return Paired(ref["label"].astype(np.float64), ref.get("user"), logits, int(dropped), tail)


def seed_pairs(base: Sequence[Run], other: Sequence[Run]) -> list[tuple[int, int]]:
    """(baseline run, other run) index pairs: runs of the same seed, else by position."""
    by_seed = {r.seed: i for i, r in enumerate(base)}
    pairs = [(by_seed[r.seed], j) for j, r in enumerate(other) if r.seed in by_seed]
    return pairs or [(i, i) for i in range(min(len(base), len(other)))]


def pair_label(base: Run, other: Run) -> str:
    """'seed 1', or 'seed 1 / seed 2' for runs of different seeds."""
    return other.seed if base.seed == other.seed else f"{base.seed} / {other.seed}"


def p_text(p: float, floor: float) -> str:
    """A p-value; below `floor` (what the test can resolve) as '< floor'."""
    if not math.isfinite(p):
        return "-"
    return f"< {floor:.2g}" if p < floor else f"{p:.3f}"


def interval(low: float, high: float) -> str:
    return f"[{signed(low)}, {signed(high)}]"


def run_name(summary: dict, index: int) -> str:
    """'seed <k>' from a run's config, else 'run <index + 1>'."""
    seed = summary.get("config", {}).get("seed")
    return f"seed {seed}" if seed is not None else f"run {index + 1}"


def comparability(
    summaries: Mapping[str, dict | Sequence[dict]],
    metas: Sequence[dict] = (),
    labels: np.ndarray | None = None,
    logits: Mapping[str, Sequence[np.ndarray]] | None = None,
) -> list[str]:
    """Why these arms' test scores are not a comparison (empty: they are): the test split has one class
    (``labels``, the paired test rows; AUC undefined), an arm scored NaN test AUC (its summary.json, or
    non-finite ``logits`` {arm: [per run]}), or a tokenized feature of the SID tables ``metas`` (one
    meta.json per seed) has test coverage below COVERAGE_FLOOR or no real SIDs (`sid_reasons`)."""
    reasons = []
    one_class = labels is not None and np.unique(labels).size < 2
    if one_class:
        shown = "no rows" if labels.size == 0 else f"all {labels.size:,} rows labelled {labels[0]:g}"
        reasons.append(f"the test split has one class ({shown}; AUC is undefined)")
    for arm, runs in as_summaries(summaries).items():
        nan = []  # (run, detail)
        for i, s in enumerate(runs):
            scores = logits[arm][i] if logits is not None and i < len(logits[arm]) else None
            bad = int((~np.isfinite(scores)).sum()) if scores is not None else 0
            auc = scores_of(s).get("auc", 0.0)  # absent (older runs): nothing to say
            if bad:
                nan.append((run_name(s, i), f"{bad:,} of {scores.size:,} test logits not finite"))
            elif not one_class and (auc is None or not math.isfinite(auc)):  # one class: said above
                nan.append((run_name(s, i), ""))
        if nan:
            shown = [": ".join(x for x in (run if len(runs) > 1 else "", detail) if x) for run, detail in nan]
            which = ", ".join(x for x in shown if x)
            reasons.append(f"{arm} scored NaN test AUC" + (f" ({which})" if which else ""))
    return reasons + sid_reasons(metas)


def not_comparable(reasons: Sequence[str]) -> str:
    """The verdict of arms that cannot be compared."""
    return f"Not comparable: {'; '.join(reasons)}."


def headline(arm: str, base: str, d: dict, reasons: Sequence[str] = ()) -> str:
    """The plain verdict on test AUC, one sentence ('Not comparable: REASONS.' when there are reasons)."""
    if reasons:
        return not_comparable(reasons)
    if not math.isfinite(d["diff"]):
        return f"No verdict for {label(arm)} vs {label(base)}: the test AUC is undefined (one class only)."
    numbers = f"{signed(d['diff'])} (95% interval {signed(d['low'])} to {signed(d['high'])})"
    if d["verdict"] == NO_DIFFERENCE:
        return f"No significant difference between {label(arm)} and {label(base)} on test AUC: {numbers}."
    return f"{label(arm)} is {d['verdict']} than {label(base)} on test AUC: {numbers}."


def significance(
    arms: Mapping[str, Sequence[Run]],
    baseline: str,
    resamples: int = RESAMPLES,
    seed: int = 0,
    metas: Sequence[dict] = (),
) -> dict:
    """The paired tests of every arm against `baseline` on the test split (what significance.json holds):
    {"baseline", "rows", "users", "dropped_rows", "resamples", "comparable", "reasons", "arms": {arm:
    {"bootstrap": [Difference], "delong": [per seed pair], "comparable", "reasons", "verdict"}}} or, when
    a run has no predictions file, {"baseline", "missing": [folders], "comparable", "reasons"}. Reasons:
    `comparability` of all arms (top level) and of the arm and the baseline, with the SID tables
    ``metas`` (one meta.json per seed); an arm with reasons gets the verdict 'Not comparable: ...'."""
    summaries = {n: [r.summary for r in rs] for n, rs in arms.items()}
    missing = [str(r.path) for rs in arms.values() for r in rs if not (r.path / PREDICTIONS).is_file()]
    if missing:
        reasons = comparability(summaries, metas)
        return {"baseline": baseline, "missing": missing, "comparable": not reasons, "reasons": reasons}
    paired = paired_predictions(arms)
    reasons = comparability(summaries, metas, paired.labels, paired.logits)
    boot = paired_bootstrap(
        paired.labels, paired.logits, baseline, paired.users, resamples, seed=seed, tail=paired.tail
    )
    result = {
        "baseline": baseline,
        "rows": int(paired.labels.size),
        "users": int(np.unique(paired.users).size) if paired.users is not None else None,
        "dropped_rows": paired.dropped,
        "resamples": resamples,
        "comparable": not reasons,
        "reasons": reasons,
        "arms": {},
    }
    for arm, diffs in boot.items():
        pairs = []
        for i, j in seed_pairs(arms[baseline], arms[arm]):
            entry = {"baseline_run": str(arms[baseline][i].path), "run": str(arms[arm][j].path),
                     "seed": pair_label(arms[baseline][i], arms[arm][j])}  # fmt: skip
            try:
                entry |= vars(delong(paired.logits[baseline][i], paired.logits[arm][j], paired.labels))
            except ValueError as e:  # too few positives or negatives
                entry["error"] = str(e)
            pairs.append(entry)
        bootstrap = [d.as_dict() for d in diffs]
        pair = (baseline, arm)
        why = comparability({n: summaries[n] for n in pair}, metas, paired.labels,
                            {n: paired.logits[n] for n in pair})  # fmt: skip
        auc = next(d for d in bootstrap if d["metric"] == "auc")
        if not why and auc["resamples"] < resamples:  # resamples without both classes were dropped
            why.append(
                f"the test split has too few clicks or non-clicks for the test: {resamples - auc['resamples']} "
                f"of {resamples} bootstrap resamples had one class only"
            )
            if not result["reasons"]:
                result["reasons"] = why
                result["comparable"] = False
        result["arms"][arm] = {
            "bootstrap": bootstrap,
            "delong": pairs,
            "comparable": not why,
            "reasons": why,
            "verdict": headline(arm, baseline, next(d for d in bootstrap if d["metric"] == "auc"), why),
        }
    return result


def auc_of(summary: dict) -> float:
    """The reported test AUC of a run (NaN when it has none)."""
    v = scores_of(summary).get("auc")
    return float(v) if v is not None else math.nan


def metric_title(name: str) -> str:
    """How a table names metric ``name``: its registered title, with the direction when lower is better."""
    m = METRICS.get(name)
    if m is None:  # a significance.json from a metric no longer registered
        return name
    return m.title if m.higher_is_better else f"{m.title} (lower is better)"


def section_significance(arms: Mapping[str, Sequence[Run]], baseline: str, result: dict) -> str:
    summaries = {n: [r.summary for r in rs] for n, rs in arms.items()}
    others = [n for n in arms if n != baseline]
    if not others:
        return f"Only one arm ({label(baseline)}): nothing to compare."
    per_seed = []
    for arm in others:
        pairs = seed_pairs(arms[baseline], arms[arm])
        diffs = [
            f"{signed(auc_of(summaries[arm][j]) - auc_of(summaries[baseline][i]))} "
            f"({pair_label(arms[baseline][i], arms[arm][j])})"
            for i, j in pairs
        ]
        per_seed.append(f"{label(arm)} - {label(baseline)} test AUC per seed pair: {', '.join(diffs)}.")
    if "missing" in result:
        why = f"**{not_comparable(result['reasons'])}**\n\n" if result.get("reasons") else ""
        return (
            why
            + "No paired test: these runs have no test predictions file (predictions/test.parquet; a run of "
            "an older trainer has none, rerun it): "
            + ", ".join(f"`{m}`" for m in result["missing"])
            + ".\n\n"
            + "\n".join(per_seed)
        )
    users = result["users"]
    unit = f"users ({users:,} of them)" if users is not None else "rows (the dataset has no user column)"
    seeds = ", ".join(f"{label(n)} {len(rs)}" for n, rs in arms.items())
    lines = [
        f"Paired tests on the {result['rows']:,} test rows every run scored, with the weights whose metrics the "
        f"table above reports; an arm's metric is the mean over its seeds ({seeds})."
        + (
            f" {result['dropped_rows']:,} rows not scored by every run are left out."
            if result["dropped_rows"]
            else ""
        ),
        "",
    ]
    floor = 2 / result["resamples"]
    for arm in others:
        r = result["arms"][arm]
        head = f"{label(arm)} - {label(baseline)}"
        # not comparable: no better / worse in the tables either, only the numbers
        shown = (lambda v: v) if r.get("comparable", True) else (lambda v: "not comparable")
        rows = [
            [
                metric_title(d["metric"]),
                d["baseline"], d["arm"], signed(d["diff"]), interval(d["low"], d["high"]),
                p_text(d["p"], floor), shown(d["verdict"]),
            ]
            for d in r["bootstrap"]
        ]  # fmt: skip
        lines += [
            f"**{r['verdict']}**",
            "",
            f"Paired bootstrap: {result['resamples']:,} resamples of the test {unit}, each applied to both arms "
            "and every seed; 95% percentile interval of the difference:",
            "",
            md_table(["metric", label(baseline), label(arm), head, "95% interval", "p", "verdict"], rows),
            "",
            "DeLong's test of the AUC of each seed pair (rows taken as independent; 95% normal interval):",
            "",
            md_table(
                ["seed", f"{label(baseline)} AUC", f"{label(arm)} AUC", head, "95% interval", "p", "verdict"],
                [
                    [
                        e["seed"],
                        e["auc_a"],
                        e["auc_b"],
                        signed(e["diff"]),
                        interval(e["low"], e["high"]),
                        f"{e['p']:.2g}" if e["p"] < 0.001 else f"{e['p']:.3f}",
                        shown(e["verdict"]),
                    ]
                    if "error" not in e
                    else [e["seed"], "-", "-", "-", "-", "-", e["error"]]
                    for e in r["delong"]
                ],
            ),
            "",
        ]
    lines += per_seed
    lines += [
        "",
        "How to read this: the interval is where the difference would fall for other test users drawn like "
        'these; "better" or "worse" only when the whole interval is on one side of 0. It covers the noise '
        "of the test split, not of training: the spread over seeds (± in the tables, the per-seed "
        "differences above) shows that, and a verdict from one seed speaks for that pair of trained models.",
    ]
    return "\n".join(lines)


# -- the report ------------------------------------------------------------------------------------
def write_report(
    out: str | Path,
    runs: Mapping[str, str | Path | Sequence[str | Path]],
    sids: str | Path | Sequence[str | Path] | None = None,
    scaling: str | Path | None = None,
    resamples: int = RESAMPLES,
    baseline: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write OUT/report.md (+ significance.json, plot, tensorboard links); returns the markdown path.
    An earlier report in OUT is replaced; files OUT holds that no report wrote are refused (DataError)
    unless ``overwrite``, which writes beside them.

    runs: {arm: run folder, folder of seed run folders, or a list of those} (`load_runs`); sids: the
    SID table folder (a path or a URI), or one per seed (the first one's statistics are shown; the verdict
    takes the worst test coverage over them); baseline: the arm the others are tested against (default:
    id when present, else the first arm)."""
    arms = load_runs(runs)
    baseline = baseline or (BASELINE if BASELINE in arms else next(iter(arms)))
    if baseline not in arms:
        raise DataError(f"baseline {baseline!r} is not one of the arms {', '.join(arms)}")
    out = outdir.claim(  # an earlier report there is replaced; files of the user's are refused (kept)
        out, "report", replace=True, overwrite=overwrite, local=True, legacy=REPORT_FILE,
        owned=REPORT_ENTRIES, label="launch.report",
    ).path  # fmt: skip
    summaries = {n: [r.summary for r in rs] for n, rs in arms.items()}
    data = next(iter(summaries.values()))[0].get("config", {}).get("data", "")
    ceiling = bayes_optimal(data) if data else None
    # locations, not Path: Path("s3://b/sids") would be s3:/b/sids
    sid_dirs = [fs.location(sids)] if isinstance(sids, str | Path) else [fs.location(s) for s in sids or []]
    found = [(s, m) for s, m in ((s, read_meta(s)) for s in sid_dirs) if m is not None]
    metas = [m for _, m in found]
    check_sids(arms, metas, [s for s, _ in found])
    result = significance(arms, baseline, resamples, metas=metas)
    result["features"] = feature_lines(metas)  # for the console (`console_lines`)
    atomic_write_text(out / SIGNIFICANCE, json.dumps(result, indent=2))
    plot_epochs(summaries, out / PLOT)
    linked = link_tensorboard(tensorboard_names(arms), out / "tensorboard")
    scaling = Path(scaling) if scaling else None
    tokenizer = section_tokenizer(sid_dirs[0] if sid_dirs else None, embedding_dim(summaries))
    if len(sid_dirs) > 1:
        tokenizer += (
            "\n\nOne SID table per seed: " + ", ".join(f"`{s}`" for s in sid_dirs) + "; the first is shown "
            "(the verdict takes the worst test coverage over them)."
        )
    bodies = {
        "Setup": section_setup(arms),
        "Test metrics": section_test(summaries, ceiling),
        "Significance": section_significance(arms, baseline, result),
        "Validation per epoch": section_epochs(summaries),
        "Tail items": section_tail(summaries),
        "Throughput": section_throughput(summaries),
        "Embedding parameters per rank": section_embeddings(summaries),
        "Tokenizer": tokenizer,
        "Plots": f"![validation metrics per epoch]({PLOT})\n\nValidation AUC, tail-item AUC and logloss after "
        "each epoch for every arm (mean over the seeds, a band of one standard deviation).",
        "TensorBoard": (
            f"`tensorboard --logdir {out / 'tensorboard'}` shows the runs side by side: "
            + ", ".join(f"`{n}/`" for n in linked)
            if linked
            else "The runs wrote no TensorBoard events (--logging.tensorboard false)."
        ),
        "Throughput scaling": section_scaling(
            scaling, out, "scaling", "`python benchmarks/bench_scaling.py --data DIR --sids SIDS --out DIR`, "
            "then pass `--scaling DIR` to the comparison or the report."
        ),
        "Projection to a large cluster": section_scaling(
            scaling, out, "projection", "`python benchmarks/bench_scaling.py --projection-only --out DIR` "
            "writes the TorchRec-planner estimate."
        ),
    }  # fmt: skip
    title = " vs ".join(label(n) for n in arms)
    md = [f"# {title}", ""]
    for name in SECTIONS:
        md += [f"## {name}", "", bodies[name], ""]
    path = out / REPORT_FILE
    atomic_write_text(path, "\n".join(md))
    return path


def read_significance(report_dir: str | Path) -> dict:
    """significance.json next to report.md; {} without it."""
    path = Path(report_dir) / SIGNIFICANCE
    return json.loads(path.read_text()) if path.is_file() else {}


def verdicts(report_dir: str | Path) -> list[str]:
    """The plain verdict of each arm (significance.json next to report.md); without the paired tests
    (no predictions), 'Not comparable: ...' when the arms are not, else nothing."""
    result = read_significance(report_dir)
    if "arms" not in result and result.get("reasons"):
        return [not_comparable(result["reasons"])]
    return [a["verdict"] for a in result.get("arms", {}).values()]


def console_lines(report_dir: str | Path) -> list[str]:
    """What the CLIs print last: the verdicts, one line per tokenized feature (test coverage, collision
    rates) and, when the arms are not comparable, a line saying so."""
    result = read_significance(report_dir)
    lines = verdicts(report_dir) + list(result.get("features", []))
    if result.get("reasons"):
        lines.append(
            f"not comparable: {'; '.join(result['reasons'])} (the report is written, but it holds no "
            "better / worse verdict)"
        )
    return lines


def parse_runs(items: Sequence[str]) -> dict[str, list[Path]]:
    """['NAME=DIR', ...] -> {NAME: [DIR, ...]} (a name given again adds its folders); ValueError if malformed."""
    runs: dict[str, list[Path]] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--run expects NAME=DIR, got {item!r}")
        runs.setdefault(name, []).append(Path(folder))
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.report", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--run", action="append", required=True, metavar="NAME=DIR",
        help="an arm's run folder, or a folder of its seeds' run folders (repeat; a NAME again adds seeds)",
    )  # fmt: skip
    p.add_argument(
        "--sids", default="", help="SID table folder, a path or a URI (for the tokenizer statistics)"
    )
    p.add_argument("--scaling", default="", help="bench_scaling.py output folder")
    p.add_argument(
        "--baseline", default="", help="the arm the others are tested against (default: id, else the first)"
    )
    p.add_argument(
        "--resamples", type=int, default=RESAMPLES, help="bootstrap resamples of the significance tests"
    )
    p.add_argument("--out", required=True, help="report folder (an earlier report there is replaced)")
    p.add_argument(
        "--overwrite", action="store_true", help="write into an --out that holds other files (they are kept)"
    )
    args = p.parse_args(argv)
    if args.resamples < 1:
        print(f"error: --resamples must be >= 1, got {args.resamples}", file=sys.stderr)
        return 2
    try:
        runs = parse_runs(args.run)
        if args.baseline and args.baseline not in runs:
            raise ValueError(f"--baseline {args.baseline!r} is not one of the --run names {', '.join(runs)}")
        path = write_report(
            args.out, runs, args.sids or None, args.scaling or None, args.resamples, args.baseline or None,
            overwrite=args.overwrite,
        )  # fmt: skip
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    for line in console_lines(path.parent):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
