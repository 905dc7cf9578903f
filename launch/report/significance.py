"""The paired tests of each arm against the baseline on the test split (a paired bootstrap over
users, DeLong's test per seed pair; launch/stats.py), whether the arms are comparable at all and why
not, the one-sentence verdict, and the report's "Significance" section."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from launch.report.runs import (
    PREDICTIONS,
    Run,
    Summaries,
    as_summaries,
    auc_of,
    pair_label,
    paired_predictions,
    run_name,
    scores_of,
    seed_pairs,
)
from launch.report.text import label, md_table, signed
from launch.report.tokenizer import sid_reasons
from launch.stats import NO_DIFFERENCE, delong, paired_bootstrap
from store.metrics import METRICS
from store.records import SidTableMeta

BASELINE = "id"
"""The arm the others are tested against when present (else the first arm)."""
RESAMPLES = 1000
"""Bootstrap resamples of the significance tests."""


def p_text(p: float, floor: float) -> str:
    """A p-value; below `floor` (what the test can resolve) as '< floor'."""
    if not math.isfinite(p):
        return "-"
    return f"< {floor:.2g}" if p < floor else f"{p:.3f}"


def interval(low: float, high: float) -> str:
    return f"[{signed(low)}, {signed(high)}]"


def comparability(
    summaries: Mapping[str, Summaries],
    metas: Sequence[SidTableMeta] = (),
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
    metas: Sequence[SidTableMeta] = (),
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
        paired.labels, paired.logits, baseline, paired.users, resamples, seed=seed, tail=paired.tail,
        item_slice=paired.item_slice,
    )  # fmt: skip
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
