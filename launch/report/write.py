"""The report folder: report.md with every section in order, significance.json, the plot and the
TensorBoard links (`write_report`), and what the command lines print from it afterwards
(`console_lines`, `verdicts`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from data_pipeline import fs, outdir
from data_pipeline.spec import DataError, atomic_write_text
from launch.report.plots import link_tensorboard, plot_epochs, tensorboard_names
from launch.report.runs import load_runs
from launch.report.sections import (
    bayes_optimal,
    section_embeddings,
    section_epochs,
    section_scaling,
    section_setup,
    section_tail,
    section_test,
    section_throughput,
)
from launch.report.significance import BASELINE, RESAMPLES, not_comparable, section_significance, significance
from launch.report.text import label
from launch.report.tokenizer import check_sids, embedding_dim, feature_lines, read_meta, section_tokenizer

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
    data = next(iter(summaries.values()))[0].config.data or ""
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
