"""The report's sections read from the runs' summaries: setup, test metrics (with the
Bayes-optimal row of synthetic data), validation per epoch, tail items, throughput, embedding
parameters per rank, and the bench_scaling.py outputs. Each returns the markdown body of its section."""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from data_pipeline import fs
from data_pipeline.spec import DataError, DatasetSpec
from launch.report.runs import Run, Summaries, as_summaries, epoch_rows, reported_weights, scores_of
from launch.report.text import count, finite_mean, human_bytes, label, md_table, spread
from store.metrics import METRICS, Rows, compute


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


def section_setup(arms: Mapping[str, Sequence[Run]]) -> str:
    first = next(iter(arms.values()))[0].summary
    cfg = first.config
    data = cfg.data if cfg.data is not None else "?"
    try:
        spec = DatasetSpec.load(data)
        rows = spec.num_rows or {}
        data_line = f"`{data}` ({spec.name}; rows {', '.join(f'{k} {v:,}' for k, v in rows.items())})"
    except (DataError, OSError):
        data_line = f"`{data}`"
    mc, ev, opt = cfg.model_config, cfg.eval, cfg.optim
    lines = [
        f"- data: {data_line}",
        f"- epochs {cfg.epochs}, batch size {cfg.batch_size} per rank, "
        f"{first.world_size} rank(s) on {first.device}"
        + (f", max steps {cfg.max_steps}" if cfg.max_steps else ""),
        f"- model: embedding dim {mc.embedding_dim}, {mc.num_layers} layers, "
        f"{mc.num_heads} heads, MoBA block {mc.moba_block_size} sparsity {mc.moba_sparsity}"
        f"{' (vanilla attention)' if mc.vanilla_attention else ''}, rotation {mc.rotation}",
        f"- optimizers: sparse {opt.sparse} lr {opt.sparse_lr}, dense {opt.dense} lr {opt.dense_lr}",
    ]
    if ev.restore_best is not None:
        lines.append(
            f"- test split scored with {'the best validation' if ev.restore_best else 'the last'} weights "
            f"(valid {ev.metric}; early stopping "
            + (f"after {ev.patience} validations without improvement)" if ev.patience else "off)")
        )
    lines += [
        f"- versions: {first.versions}",
        "- seeds: "
        + "; ".join(f"{label(n)} {len(rs)} ({', '.join(r.seed for r in rs)})" for n, rs in arms.items()),
        "- runs: "
        + "; ".join(f"{label(n)} " + ", ".join(f"`{r.path}`" for r in rs) for n, rs in arms.items()),
    ]
    return "\n".join(lines)


def section_test(summaries: Mapping[str, Summaries], ceiling: dict | None) -> str:
    """Test metrics per arm (mean ± std over its seeds), with the reported and the last weights."""
    arms = as_summaries(summaries)
    rows = []
    for n, runs in arms.items():
        for which in ("best", "last"):
            if which == "last" and not any(s.test_last is not None for s in runs):
                continue
            metrics = [scores_of(s, which) for s in runs]
            rows.append([
                label(n), reported_weights(runs) if which == "best" else "last epoch",
                *[spread(m.get(k) for m in metrics) for k in METRICS],
                spread((s.steps for s in runs), count), len(runs),
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


def section_epochs(summaries: Mapping[str, Summaries]) -> str:
    rows = []
    effect = []
    for name, runs in as_summaries(summaries).items():
        epochs = epoch_rows(runs)
        for epoch, entries in epochs.items():
            rows.append([
                label(name), epoch, *[spread(e.value(k) for e in entries) for k in METRICS], len(entries),
            ])  # fmt: skip
        means = {e: finite_mean(x.value("auc") for x in entries) for e, entries in epochs.items()}
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


def section_tail(summaries: Mapping[str, Summaries]) -> str:
    arms = as_summaries(summaries)
    tests = {n: [scores_of(s) for s in runs] for n, runs in arms.items()}
    buckets = max((len(t.get("bucket_auc") or []) for ts in tests.values() for t in ts), default=0)
    if not buckets:
        return "No per-bucket AUC in the runs' summaries."
    first = next(iter(arms.values()))[0]
    tail_buckets = first.config.eval.tail_buckets
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


def section_throughput(summaries: Mapping[str, Summaries]) -> str:
    arms = as_summaries(summaries)
    rows = []
    for n, runs in arms.items():
        s = runs[0]
        rows.append([
            label(n), spread((r.samples_per_s for r in runs), count),
            spread((r.samples_per_s_per_rank for r in runs), count), s.world_size, s.device, s.pipeline,
            spread((max(r.peak_memory_bytes_per_rank or [math.nan]) for r in runs), human_bytes),
            spread((r.wall_s for r in runs), lambda v: f"{v:.1f}"),
        ])  # fmt: skip
    text = md_table(
        ["model", "samples/s (total)", "samples/s per rank", "ranks", "device", "TorchRec pipeline",
         "peak memory per rank", "wall s"],
        rows,
    )  # fmt: skip
    blockers = {label(n): rs[0].pipeline_blocker for n, rs in arms.items() if rs[0].pipeline_blocker}
    if blockers:
        text += "\n\nTrained without TorchRec's pipeline (model not traceable): " + "; ".join(
            f"{k}: {v}" for k, v in blockers.items()
        )
    return text + (
        "\n\nSteady-state training throughput (first logging interval excluded), evaluation not counted; "
        "mean ± standard deviation over the seeds."
    )


def section_embeddings(summaries: Mapping[str, Summaries]) -> str:
    arms = as_summaries(summaries)
    rows = []
    for n, runs in arms.items():
        ranks = max(len(s.embedding_params_per_rank) for s in runs)

        def at(values: list[list[int]], r: int) -> list:
            return [v[r] if r < len(v) else None for v in values]

        params = [s.embedding_params_per_rank for s in runs]
        nbytes = [s.embedding_bytes_per_rank for s in runs]
        opt = [s.embedding_optimizer_bytes_per_rank for s in runs]
        for r in range(ranks):
            rows.append([
                label(n), r, spread(at(params, r), count), spread(at(nbytes, r), human_bytes),
                spread(at(opt, r), human_bytes),
            ])  # fmt: skip
    text = md_table(
        ["model", "rank", "embedding parameters", "embedding bytes", "optimizer state bytes"], rows
    )
    for n, runs in arms.items():
        plan = runs[0].sharding_plan
        if plan:
            text += f"\n\nSharding plan, {label(n)}:\n\n" + md_table(
                ["table", "sharding", "kernel", "ranks"],
                [[p.table, p.sharding, p.kernel, str(p.ranks)] for p in plan],
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
