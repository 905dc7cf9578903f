"""The accuracy-memory frontier: every arm at every embedding budget, from finished run folders.

``frontier_points(folders)`` groups run folders by point, an arm (``--model``) at its budget (B rows
per tokenized feature, ``ModelSpec.budget``, read back from each summary.json); ``write_frontier``
writes frontier.md, frontier.json and frontier.png. ``launch.frontier`` calls both after its runs;
``python -m launch.report --frontier DIR ... --out OUT`` on any finished runs (a DIR: a run folder, or
a folder holding some, such as launch.frontier's OUT).

Per point: every registered test metric (``store.metrics.METRICS``: AUC, GAUC, logloss, the frequency
slices' AUC, ...) as mean +- std over seeds, with the paired bootstrap's 95% interval of the point minus
``id`` (launch/stats.py: test users resampled, each point's metric the mean over its seeds), embedding
and optimizer-state bytes per rank (exact, summary.json) and samples/s. The Pareto front: the points no
other point matches on test AUC with fewer embedding bytes (all ranks). Then one sentence per frequency
slice and pair: does a SID arm (``needs_sids``) beat a hashed arm (budgeted, no SIDs) at equal bytes,
the hashed arm taken at its largest budget within the SID point's bytes (tested the same way).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from data_pipeline.spec import DataError, atomic_write_text
from launch.report.runs import Run, load_runs, load_summary, natural_key, paired_predictions
from launch.report.significance import BASELINE, RESAMPLES
from launch.report.text import finite, finite_mean, finite_sd, human_bytes, label, md_table, signed, spread
from launch.stats import BETTER, paired_bootstrap
from store.metrics import METRICS, SLICES
from store.records import RunSummary

FRONTIER_MD, FRONTIER_JSON, FRONTIER_PNG = "frontier.md", "frontier.json", "frontier.png"
FRONTIER_FILES = (FRONTIER_MD, FRONTIER_JSON, FRONTIER_PNG)
SLICE_METRICS = tuple(f"auc_{name}" for name in reversed(SLICES))
"""auc_head, auc_torso, auc_tail, auc_unseen."""


def budget_rows(summary: RunSummary) -> int | None:
    """The run's budget, B rows per tokenized feature (None: its model has no budget)."""
    from store.models import registry

    spec = registry.get(summary.config.model or "")
    if spec.budget is None:
        return None
    return int(summary.config.model_config.extra.get(spec.group, {})[spec.budget])


def point_name(arm: str, rows: int | None) -> str:
    """'id', 'id-hash@4096': an arm, at its budget when it has one."""
    return arm if rows is None else f"{arm}@{rows}"


def frontier_points(folders: Sequence[str | Path]) -> dict[str, list[Run]]:
    """{point: [Run per seed]} of every finished run in ``folders`` (each a run folder or a folder
    holding run folders at any depth), id first, then by arm (registry order) and budget, largest first.
    DataError naming the folder without a finished run, or runs on another dataset (`load_runs`)."""
    from store.models import registry

    by_point: dict[tuple[str, int | None], list[Path]] = {}
    for folder in map(Path, folders):
        found = (
            [folder]
            if (folder / "summary.json").is_file()
            else [p.parent for p in folder.rglob("summary.json")]
        )
        if not found:
            raise DataError(f"{folder}: no finished run (summary.json) in it or below it")
        for run_dir in sorted(found, key=lambda p: [natural_key(Path(x)) for x in p.parts]):
            summary = load_summary(run_dir)
            by_point.setdefault((summary.config.model or "?", budget_rows(summary)), []).append(run_dir)
    order = {name: i for i, name in enumerate(registry.names())}
    keys = sorted(by_point, key=lambda k: (k[0] != BASELINE, order.get(k[0], len(order)), -(k[1] or 0)))
    return load_runs({point_name(*k): by_point[k] for k in keys})


def _interval(d: Mapping | None) -> str:
    """'+0.0123 [-0.0010, +0.0250]' of a bootstrap difference, 'n/a' when undefined (a slice of one class)."""
    if d is None or not math.isfinite(d["diff"]):
        return "n/a"
    return f"{signed(d['diff'])} [{signed(d['low'])}, {signed(d['high'])}]"


def pareto(points: Sequence[dict]) -> list[str]:
    """The points no other point matches on test AUC with fewer embedding bytes (NaN AUC: never)."""
    ok = [p for p in points if math.isfinite(p["metrics"].get("auc", {}).get("mean", math.nan))]
    auc = lambda p: p["metrics"]["auc"]["mean"]  # noqa: E731
    return [
        p["point"]
        for p in ok
        if not any(
            q is not p and q["embedding_bytes"] <= p["embedding_bytes"] and auc(q) >= auc(p)
            and (q["embedding_bytes"] < p["embedding_bytes"] or auc(q) > auc(p))
            for q in ok
        )
    ]  # fmt: skip


def equal_bytes(points: Sequence[dict], paired, resamples: int) -> list[dict]:  # noqa: ANN001 (Paired)
    """Each SID point against each hashed arm at its largest budget within the SID point's bytes:
    {"sid", "hashed", "hashed_arm", **Difference} per frequency slice (hashed None: no budget fits; the
    Difference's "arm" is the SID point's slice AUC, its "baseline" the hashed point's)."""
    from store.models import registry

    def family(p: dict) -> str:
        spec = registry.get(p["arm"])
        return "sid" if spec.needs_sids else "hashed" if spec.budget is not None else "other"

    out = []
    for s in (p for p in points if family(p) == "sid"):
        for arm in dict.fromkeys(p["arm"] for p in points if family(p) == "hashed"):
            fits = [p for p in points if p["arm"] == arm and p["embedding_bytes"] <= s["embedding_bytes"]]
            h = max(fits, key=lambda p: p["embedding_bytes"], default=None)
            if h is None:
                out += [
                    {"sid": s["point"], "hashed": None, "hashed_arm": arm, "metric": m} for m in SLICE_METRICS
                ]
                continue
            logits = {h["point"]: paired.logits[h["point"]], s["point"]: paired.logits[s["point"]]}
            boot = paired_bootstrap(
                paired.labels, logits, h["point"], paired.users, resamples, tail=paired.tail,
                item_slice=paired.item_slice,
            )[s["point"]]  # fmt: skip
            out += [
                {"sid": s["point"], "hashed": h["point"], "hashed_arm": arm, **d.as_dict()}
                for d in boot
                if d.metric in SLICE_METRICS
            ]
    return out


def slice_sentences(points: Sequence[dict], tests: Sequence[dict], resamples: int = RESAMPLES) -> list[str]:
    """One sentence per frequency slice and (SID point, hashed arm): whether the SID point beats it
    (``resamples``: the bootstrap's; a test over fewer, some having had one class, gives no verdict)."""
    by_name = {p["point"]: p for p in points}
    if not tests:
        return [
            "No SID arm against a hashed arm at equal bytes: the frontier needs both (e.g. --arms id,store,id-hash)."
        ]
    lines = []
    for t in tests:
        slice_name = t["metric"].removeprefix("auc_")
        sid = by_name[t["sid"]]
        what = f"{slice_name.capitalize()} items: {label(t['sid'])} ({human_bytes(sid['embedding_bytes'])})"
        if t["hashed"] is None:
            lines.append(
                f"{what}: {t['hashed_arm']} has no budget within its bytes; no comparison at equal bytes."
            )
            continue
        vs = f"{t['hashed']} ({human_bytes(by_name[t['hashed']]['embedding_bytes'])})"
        if not math.isfinite(t["diff"]):
            lines.append(f"{what} vs {vs}: n/a (the slice has no rows or one class on the test split).")
        elif t["verdict"] == BETTER:
            lines.append(f"{what} beats {vs} at equal bytes: AUC {_interval(t)} (95% interval).")
        else:
            why = t["verdict"]
            if t.get("resamples", resamples) < resamples:  # some resamples had one class: no verdict
                why = f"no verdict: {resamples - t['resamples']} of {resamples} resamples had one class only"
            lines.append(
                f"{what} does NOT beat {vs} at equal bytes: AUC {_interval(t)} (95% interval; {why})."
            )
    return lines


def frontier(points: Mapping[str, Sequence[Run]], resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """What frontier.json holds: {"baseline", "resamples", "rows", "points": [per point], "pareto": [point],
    "equal_bytes": [`equal_bytes`], "slices": [sentence]}. DataError when no point is ``id``."""
    if BASELINE not in points:
        raise DataError(f"the frontier needs the {BASELINE!r} arm (its baseline); got {', '.join(points)}")
    paired = paired_predictions(points)
    boot = paired_bootstrap(
        paired.labels, paired.logits, BASELINE, paired.users, resamples, seed=seed, tail=paired.tail,
        item_slice=paired.item_slice,
    )  # fmt: skip
    out = []
    for name, runs in points.items():
        summaries = [r.summary for r in runs]
        scores = [s.test_scores() for s in summaries]
        first = summaries[0]
        emb, opt = first.embedding_bytes_per_rank, first.embedding_optimizer_bytes_per_rank
        out.append({
            "point": name, "arm": first.config.model, "rows_per_feature": budget_rows(first),
            "seeds": [r.seed for r in runs], "runs": [str(r.path) for r in runs],
            "metrics": {
                m: {"mean": finite_mean(v), "std": finite_sd(v), "values": v}
                for m in METRICS if any(m in s for s in scores)
                for v in [[s.get(m) for s in scores]]
            },
            "vs_baseline": {d.metric: d.as_dict() for d in boot.get(name, [])},
            "embedding_bytes_per_rank": emb, "embedding_optimizer_bytes_per_rank": opt,
            "embedding_bytes": sum(emb), "samples_per_s": finite_mean(s.samples_per_s for s in summaries),
        })  # fmt: skip
    tests = equal_bytes(out, paired, resamples)
    return {
        "baseline": BASELINE, "resamples": resamples, "rows": int(paired.labels.size), "points": out,
        "pareto": pareto(out), "equal_bytes": tests, "slices": slice_sentences(out, tests, resamples),
    }  # fmt: skip


def frontier_markdown(result: dict) -> str:
    """frontier.md: the points' metrics and bytes, their slice AUCs, the sentences, the plot."""
    base = label(result["baseline"])
    pts, front = result["points"], set(result["pareto"])

    def cell(p: dict, m: str) -> str:
        return spread(p["metrics"].get(m, {}).get("values", []))

    def diff(p: dict, m: str) -> str:
        return "(baseline)" if p["point"] == result["baseline"] else _interval(p["vs_baseline"].get(m))

    def per_rank(xs: list[int]) -> str:
        return ", ".join(f"{x:,} ({human_bytes(x)})" for x in xs) or "-"

    main = [
        [label(p["point"]), p["rows_per_feature"], len(p["seeds"]),
         cell(p, "auc"), diff(p, "auc"), cell(p, "gauc"), diff(p, "gauc"), cell(p, "logloss"), diff(p, "logloss"),
         per_rank(p["embedding_bytes_per_rank"]), per_rank(p["embedding_optimizer_bytes_per_rank"]),
         f"{p['samples_per_s']:,.0f}" if math.isfinite(p["samples_per_s"]) else "-",
         "yes" if p["point"] in front else ""]
        for p in pts
    ]  # fmt: skip
    slices = [[label(p["point"]), *(x for m in SLICE_METRICS for x in (cell(p, m), diff(p, m)))] for p in pts]
    head = [f"{m.removeprefix('auc_')} AUC" for m in SLICE_METRICS]
    return "\n".join([
        "# Accuracy-memory frontier",
        "",
        f"Test metrics per arm and budget (rows per tokenized feature), mean ± std over seeds; the difference "
        f"to {base} with the paired bootstrap's 95% interval ({result['resamples']:,} resamples of the test "
        f"users, {result['rows']:,} test rows; the mean over the same seeds). Bytes are per rank, exact "
        "(summary.json). Pareto: no other point has a higher test AUC with no more embedding bytes.",
        "",
        md_table(["point", "rows/feature", "seeds", "AUC", f"AUC - {base}", "GAUC", f"GAUC - {base}",
                  "logloss", f"logloss - {base}", "embedding bytes", "optimizer bytes", "samples/s", "Pareto"],
                 main),  # fmt: skip
        "",
        "## Frequency slices",
        "",
        "Test AUC by the train frequency of the row's item (store.metrics.item_slices: items sorted by train "
        "rows; head holds the first third of the train rows, torso the next, tail the rest seen; unseen: "
        "no train row). '-' / n/a: the slice has no rows or one class.",
        "",
        md_table(["point", *(x for h in head for x in (h, f"{h} - {base}"))], slices),
        "",
        "SID arms against hashed arms at equal bytes (the hashed arm at its largest budget within the SID "
        "arm's bytes; paired bootstrap, 95% interval):",
        "",
        *(f"- {s}" for s in result["slices"]),
        "",
        f"![test AUC vs embedding bytes]({FRONTIER_PNG})",
        "",
    ])  # fmt: skip


def plot_frontier(result: dict, path: Path) -> None:
    """Test AUC against embedding bytes (all ranks, log x): one line per arm, the Pareto front marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [p for p in result["points"] if finite([p["metrics"].get("auc", {}).get("mean")])]
    for arm in dict.fromkeys(p["arm"] for p in pts):
        line = sorted((p for p in pts if p["arm"] == arm), key=lambda p: p["embedding_bytes"])
        xs = [p["embedding_bytes"] for p in line]
        ys = [p["metrics"]["auc"]["mean"] for p in line]
        err = [p["metrics"]["auc"]["std"] for p in line]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label(arm))
    front = sorted((p for p in pts if p["point"] in result["pareto"]), key=lambda p: p["embedding_bytes"])
    if front:
        xs = [p["embedding_bytes"] for p in front]
        ys = [p["metrics"]["auc"]["mean"] for p in front]
        ax.step(xs, ys, where="post", color="black", linestyle="--", linewidth=1, label="Pareto front")
        ax.scatter(xs, ys, s=140, facecolors="none", edgecolors="black", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes (all ranks)")
    ax.set_ylabel("test AUC")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_frontier(out: str | Path, points: Mapping[str, Sequence[Run]], resamples: int = RESAMPLES) -> Path:
    """OUT/frontier.json, frontier.md and frontier.png (each written atomically) of ``points``
    (`frontier_points`); returns the markdown's path. The caller has claimed OUT."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = frontier(points, resamples)
    atomic_write_text(out / FRONTIER_JSON, json.dumps(result, indent=2))
    plot_frontier(result, out / FRONTIER_PNG)
    atomic_write_text(out / FRONTIER_MD, frontier_markdown(result))
    return out / FRONTIER_MD
