"""The comparison report: markdown tables and PNG plots from trainer run folders.

``python -m launch.report --run id=RUN_DIR --run store=RUN_DIR [--sids SIDS] [--scaling DIR] --out REPORT``

Reads each run's summary.json (test metrics, per-epoch validation, throughput, embedding bytes
per rank) and the tokenizer's meta.json, and writes REPORT/report.md, REPORT/auc_vs_epoch.png and
REPORT/tensorboard/<run> (links to each run's TensorBoard folder, so ``tensorboard --logdir
REPORT/tensorboard`` shows them side by side). Every section is always present; one whose inputs
are missing says what to run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from data_pipeline.spec import DataError, DatasetSpec, atomic_write_text

LABELS = {"id": "ID baseline", "store": "STORE (SIDs)"}
"""Display names of the runs the comparison makes; other run names are shown as they are."""
SECTIONS = (
    "Setup",
    "Test metrics",
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
    """The Bayes-optimal row of a model table: name, AUC, GAUC, logloss, then ``blanks`` empty cells.
    GAUC is '-' for data without a user column."""
    metrics = [ceiling.get("auc"), ceiling.get("gauc"), ceiling.get("logloss")]
    return ["Bayes-optimal (true click prob.)", *metrics, *[blank] * blanks]


def bayes_optimal(data: str | Path, split: str = "test") -> dict | None:
    """AUC / GAUC / logloss of the true click probability on `split` (synthetic data), else None.
    GAUC is NaN when the dataset has no user column (spec.user_id "")."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from data_pipeline.spec import list_shards, split_dir
    from trainer.metrics import auc, gauc, logloss

    try:
        spec = DatasetSpec.load(data)
    except (DataError, OSError):
        return None
    if not spec.prob:
        return None
    cols = [c for c in (spec.prob, spec.label, spec.user_id) if c]
    tables = [pq.read_table(p, columns=cols) for p in list_shards(split_dir(data, split))]
    if not tables:
        return None
    prob = np.concatenate([t[spec.prob].to_numpy() for t in tables]).astype(np.float64)
    labels = torch.from_numpy(np.concatenate([t[spec.label].to_numpy() for t in tables]).astype(np.float32))
    p = torch.from_numpy(np.clip(prob, 1e-7, 1 - 1e-7))
    logits = torch.log(p) - torch.log1p(-p)
    g = math.nan
    if spec.user_id:
        users = np.concatenate([t[spec.user_id].to_numpy() for t in tables]).astype(np.int64)
        g = gauc(torch.from_numpy(users), logits, labels)[0]
    return {
        "auc": auc(logits, labels),
        "gauc": g,
        "logloss": logloss(logits, labels),
        "rows": int(labels.numel()),
    }


# -- plots -----------------------------------------------------------------------------------------
def plot_epochs(summaries: dict[str, dict], path: Path) -> None:
    """Validation AUC, tail AUC and logloss per epoch for every run (the 'one-epoch' effect)."""
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
        for name, summary in summaries.items():
            rows = per_epoch(summary)
            xs = [r["epoch"] for r in rows]
            ys = [r.get(key) if r.get(key) is not None else math.nan for r in rows]
            ax.plot(xs, ys, marker="o", label=label(name))
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


def link_tensorboard(runs: dict[str, Path], dest: Path) -> list[str]:
    """dest/<name> -> <run>/tensorboard (a symlink; a copy where links are not possible)."""
    dest.mkdir(parents=True, exist_ok=True)
    made = []
    for name, run in runs.items():
        src = (Path(run) / "tensorboard").resolve()
        if not src.is_dir():
            continue
        target = dest / name
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


# -- sections --------------------------------------------------------------------------------------
def section_setup(summaries: dict[str, dict]) -> str:
    first = next(iter(summaries.values()))
    cfg = first.get("config", {})
    data = cfg.get("data", "?")
    try:
        spec = DatasetSpec.load(data)
        rows = spec.num_rows or {}
        data_line = f"`{data}` ({spec.name}; rows {', '.join(f'{k} {v:,}' for k, v in rows.items())})"
    except (DataError, OSError):
        data_line = f"`{data}`"
    mc = cfg.get("model_config", {})
    lines = [
        f"- data: {data_line}",
        f"- epochs {cfg.get('epochs')}, batch size {cfg.get('batch_size')} per rank, "
        f"{first.get('world_size')} rank(s) on {first.get('device')}, seed {cfg.get('seed')}"
        + (f", max steps {cfg['max_steps']}" if cfg.get("max_steps") else ""),
        f"- model: embedding dim {mc.get('embedding_dim')}, {mc.get('num_layers')} layers, "
        f"{mc.get('num_heads')} heads, MoBA block {mc.get('moba_block_size')} sparsity {mc.get('moba_sparsity')}"
        f"{' (vanilla attention)' if mc.get('vanilla_attention') else ''}, rotation {mc.get('rotation')}",
        f"- optimizers: sparse {cfg.get('optim', {}).get('sparse')} lr {cfg.get('optim', {}).get('sparse_lr')}, "
        f"dense {cfg.get('optim', {}).get('dense')} lr {cfg.get('optim', {}).get('dense_lr')}",
        f"- versions: {first.get('versions')}",
        "- runs: "
        + ", ".join(f"{label(n)} (`{s.get('config', {}).get('out')}`)" for n, s in summaries.items()),
    ]
    return "\n".join(lines)


def section_test(summaries: dict[str, dict], ceiling: dict | None) -> str:
    rows = [
        [label(n), s.get("auc"), s.get("gauc"), s.get("logloss"), s.get("tail_auc"), s.get("steps")]
        for n, s in summaries.items()
    ]
    if ceiling:
        rows.append(ceiling_row(ceiling, 2))
    text = md_table(["model", "AUC", "GAUC", "logloss", "tail AUC", "steps"], rows)
    if "id" in summaries and "store" in summaries:
        d = {
            k: (summaries["store"].get(k) or math.nan) - (summaries["id"].get(k) or math.nan)
            for k in ("auc", "gauc", "logloss")
        }
        gauc_part = f", GAUC {d['gauc']:+.4f}" if math.isfinite(d["gauc"]) else ""
        text += (
            f"\n\nSTORE - ID: AUC {d['auc']:+.4f}{gauc_part}, logloss {d['logloss']:+.4f} "
            "(test split, end of training)."
        )
    if not any("gauc" in s for s in summaries.values()):
        text += "\n\nNo GAUC: the dataset has no user column."
    if not any("tail_auc" in s for s in summaries.values()):
        text += "\n\nNo tail-item AUC: the dataset has no item column."
    return text


def section_epochs(summaries: dict[str, dict]) -> str:
    rows = []
    effect = []
    for name, s in summaries.items():
        entries = per_epoch(s)
        for e in entries:
            rows.append(
                [label(name), e["epoch"], e.get("auc"), e.get("gauc"), e.get("logloss"), e.get("tail_auc")]
            )
        if len(entries) >= 2 and entries[0].get("auc") is not None and entries[-1].get("auc") is not None:
            best = max(entries, key=lambda r: r.get("auc") or -1)
            effect.append(
                f"{label(name)}: AUC epoch 1 -> {entries[-1]['epoch']}: {entries[-1]['auc'] - entries[0]['auc']:+.4f} "
                f"(best at epoch {best['epoch']})"
            )
    text = md_table(["model", "epoch", "AUC", "GAUC", "logloss", "tail AUC"], rows)
    if effect:
        text += (
            "\n\nOne-epoch effect (raw-ID models tend to peak after one epoch and overfit, SIDs keep improving):\n"
            + "\n".join(f"- {line}" for line in effect)
        )
    return text


def section_tail(summaries: dict[str, dict]) -> str:
    names = list(summaries)
    tests = {n: summaries[n].get("test", {}) for n in names}
    buckets = max((len(t.get("bucket_auc") or []) for t in tests.values()), default=0)
    if not buckets:
        return "No per-bucket AUC in the runs' summaries."
    tail_buckets = next(iter(summaries.values())).get("config", {}).get("eval", {}).get("tail_buckets")
    rows = []
    for b in range(buckets):
        row: list[object] = [b, (tests[names[0]].get("bucket_rows") or [None] * buckets)[b]]
        row += [(tests[n].get("bucket_auc") or [None] * buckets)[b] for n in names]
        rows.append(row)
    head = (
        f"Test AUC per item-popularity bucket (items split into {buckets} equal parts of the catalog by train "
        f"impressions, bucket 0 = least popular; tail AUC = buckets 0..{(tail_buckets or 1) - 1}):\n\n"
    )
    return head + md_table(["bucket", "test rows", *[f"{label(n)} AUC" for n in names]], rows)


def section_throughput(summaries: dict[str, dict]) -> str:
    rows = []
    for n, s in summaries.items():
        peak = s.get("peak_memory_bytes_per_rank") or []
        rows.append(
            [
                label(n), s.get("samples_per_s"), s.get("samples_per_s_per_rank"), s.get("world_size"),
                s.get("device"), s.get("pipeline"), human_bytes(max(peak)) if peak else "-",
                s.get("wall_s"),
            ]
        )  # fmt: skip
    text = md_table(
        ["model", "samples/s (total)", "samples/s per rank", "ranks", "device", "TorchRec pipeline",
         "peak memory per rank", "wall s"],
        [[r[0], f"{r[1]:,.0f}" if r[1] else "-", f"{r[2]:,.0f}" if r[2] else "-", *r[3:]] for r in rows],
    )  # fmt: skip
    blockers = {label(n): s["pipeline_blocker"] for n, s in summaries.items() if s.get("pipeline_blocker")}
    if blockers:
        text += "\n\nTrained without TorchRec's pipeline (model not traceable): " + "; ".join(
            f"{k}: {v}" for k, v in blockers.items()
        )
    return (
        text
        + "\n\nSteady-state training throughput (first logging interval excluded), evaluation not counted."
    )


def section_embeddings(summaries: dict[str, dict]) -> str:
    rows = []
    for n, s in summaries.items():
        params = s.get("embedding_params_per_rank") or []
        nbytes = s.get("embedding_bytes_per_rank") or []
        opt = s.get("embedding_optimizer_bytes_per_rank") or []
        for r in range(len(params)):
            rows.append(
                [
                    label(n),
                    r,
                    params[r],
                    human_bytes(nbytes[r]),
                    human_bytes(opt[r] if r < len(opt) else None),
                ]
            )
    text = md_table(
        ["model", "rank", "embedding parameters", "embedding bytes", "optimizer state bytes"], rows
    )
    for n, s in summaries.items():
        plan = s.get("sharding_plan") or []
        if plan:
            text += f"\n\nSharding plan, {label(n)}:\n\n" + md_table(
                ["table", "sharding", "kernel", "ranks"],
                [[p["table"], p["sharding"], p["kernel"], str(p["ranks"])] for p in plan],
            )
    return text


def embedding_dim(summaries: dict[str, dict]) -> int | None:
    """D of the runs' tables, from their config (None when no run records it)."""
    for s in summaries.values():
        dim = s.get("config", {}).get("model_config", {}).get("embedding_dim")
        if dim:
            return int(dim)
    return None


def section_tokenizer(sids: Path | None, dim: int | None = None) -> str:
    """The tokenizer's figures per tokenized feature, and each feature's embedding size in both arms
    (``dim``: the runs' embedding width, for bytes; fp32 tables)."""
    meta_path = Path(sids) / "meta.json" if sids else None
    if meta_path is None or not meta_path.is_file():
        return "No tokenizer meta.json (`python -m store.tokenizer --data DIR --out SIDS` writes it)."
    meta = json.loads(meta_path.read_text())
    features = meta.get("features") or {meta.get("item_feature", "item_id"): meta}  # older tables: item only
    codewords = meta.get("codewords", meta.get("codebook_size"))
    head = (
        f"From `{meta_path}`: method {meta.get('method')}, K = {meta.get('num_sids')} semantic IDs per feature, "
        f"C = {codewords} codewords per codebook"
    )
    if "unseen_code" in meta:
        head += (
            f", plus one reserved code for IDs absent from the train split (learned from "
            f"{meta.get('learned_from')})"
        )
    rows = []
    for f, m in features.items():
        util, ppl = m.get("utilisation") or [], m.get("perplexity") or []
        rows.append([
            f, m.get("embedding_source"), m.get("rows", meta.get("num_items")), m.get("coverage"),
            m.get("recon_error_rel"),
            f"{fmt(sum(util) / len(util), 3)} / {fmt(sum(ppl) / len(ppl), 1)}" if util else "-",
            m.get("collision_rate"), m.get("unique_sids"),
        ])  # fmt: skip
    text = head + ".\n\n" + md_table(
        ["feature", "embedding", "rows", "coverage", "recon error (rel.)", "utilisation / perplexity",
         "collision rate", "distinct SID tuples"],
        rows,
    )  # fmt: skip
    params = meta.get("embedding_params")
    if params:
        mib = (lambda n: f"{n * dim * 4 / 2**20:,.2f}") if dim else (lambda n: "-")
        sizes = [
            [
                f,
                f"{p['raw_id']:,}",
                mib(p["raw_id"]),
                f"{p['sid']:,}",
                mib(p["sid"]),
                f"{p['raw_id'] / p['sid']:,.0f}x",
            ]
            for f, p in params.items()
        ]
        raw, sid = sum(p["raw_id"] for p in params.values()), sum(p["sid"] for p in params.values())
        sizes.append(["all tokenized", f"{raw:,}", mib(raw), f"{sid:,}", mib(sid), f"{raw / sid:,.0f}x"])
        text += (
            f"\n\nEmbedding rows and MiB (fp32, D = {dim}) per tokenized feature: the ID arm's raw-ID table "
            "vs STORE's K codebooks:\n\n"
            + md_table(["feature", "ID rows", "ID MiB", "STORE rows", "STORE MiB", "ratio"], sizes)
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


# -- the report ------------------------------------------------------------------------------------
def write_report(
    out: str | Path, runs: dict[str, Path], sids: str | Path | None = None, scaling: str | Path | None = None
) -> Path:
    """Write OUT/report.md (+ plot, tensorboard links); returns the markdown path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {name: load_summary(d) for name, d in runs.items()}
    data = next(iter(summaries.values())).get("config", {}).get("data", "")
    ceiling = bayes_optimal(data) if data else None
    plot_epochs(summaries, out / PLOT)
    linked = link_tensorboard(runs, out / "tensorboard")
    scaling = Path(scaling) if scaling else None
    bodies = {
        "Setup": section_setup(summaries),
        "Test metrics": section_test(summaries, ceiling),
        "Validation per epoch": section_epochs(summaries),
        "Tail items": section_tail(summaries),
        "Throughput": section_throughput(summaries),
        "Embedding parameters per rank": section_embeddings(summaries),
        "Tokenizer": section_tokenizer(Path(sids) if sids else None, embedding_dim(summaries)),
        "Plots": f"![validation metrics per epoch]({PLOT})\n\nValidation AUC, tail-item AUC and logloss after "
        "each epoch for both models.",
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
    title = " vs ".join(label(n) for n in summaries)
    md = [f"# {title}", ""]
    for name in SECTIONS:
        md += [f"## {name}", "", bodies[name], ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, metavar="NAME=DIR", help="a run folder (repeat)")
    p.add_argument("--sids", default="", help="SID table folder (for the tokenizer statistics)")
    p.add_argument("--scaling", default="", help="bench_scaling.py output folder")
    p.add_argument("--out", required=True, help="report folder")
    args = p.parse_args(argv)
    runs = {}
    for item in args.run:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            print(f"error: --run expects NAME=DIR, got {item!r}", file=sys.stderr)
            return 2
        runs[name] = Path(folder)
    try:
        path = write_report(args.out, runs, args.sids or None, args.scaling or None)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
