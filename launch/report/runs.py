"""The runs a report compares: finding run folders (one run, or a folder of seed runs), loading
their summary.json, checking they share a dataset, the scores and epochs a summary holds, and the
runs' test predictions aligned row by row for the paired tests."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from data_pipeline import fs
from data_pipeline.spec import DataError, open_shard
from store.records import EvalEntry, RunSummary, as_summary

PREDICTIONS = Path("predictions") / "test.parquet"
"""Where a run keeps its test predictions (row, label, logit[, user, item, tail, item_train_count,
item_slice]), relative to its folder."""


@dataclass
class Run:
    """One finished trainer run of an arm."""

    arm: str
    path: Path
    summary: RunSummary

    @property
    def seed(self) -> str:
        """'seed <k>' from the run's config, else its folder name."""
        seed = self.summary.seed
        return f"seed {seed}" if seed is not None else self.path.name


def load_summary(run_dir: str | Path) -> RunSummary:
    """A run's summary.json; DataError naming the file when it is missing or not JSON."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise DataError(f"{path}: missing (the run did not finish; see its log)")
    try:
        return RunSummary.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


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
    record = run.summary.dataset
    if record is not None and record.fingerprint:
        return "fingerprint", str(record.fingerprint)
    data = run.summary.config.data if run.summary.config.data is not None else "?"
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
    name = dataset_name(first.summary)
    for run in (r for rs in arms.values() for r in rs):
        got = dataset_key(run)
        if got != want:
            other = dataset_name(run.summary)
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


def dataset_name(summary: RunSummary) -> str:
    """The name of the run's dataset ('?' when the run does not record it)."""
    name = summary.dataset.name if summary.dataset is not None else None
    return name if name is not None else "?"


Summaries = RunSummary | Mapping | Sequence[RunSummary | Mapping]
"""An arm's runs as the sections take them: one summary or one per seed (each a RunSummary, or the
content of a summary.json)."""


def as_summaries(summaries: Mapping[str, Summaries]) -> dict[str, list[RunSummary]]:
    """{arm: summary or [summary per seed]} -> {arm: [RunSummary per seed]}."""
    return {
        n: [as_summary(s)] if isinstance(s, RunSummary | Mapping) else [as_summary(x) for x in s]
        for n, s in summaries.items()
    }


def scores_of(summary: RunSummary | Mapping, which: str = "best") -> dict:
    """The test metrics of the reported weights ('best': the best validation's with --eval.restore_best,
    else the last) or of the last weights ('last': test_last, empty in runs from before it existed)."""
    return as_summary(summary).test_scores(which)


def auc_of(summary: RunSummary | Mapping) -> float:
    """The reported test AUC of a run (NaN when it has none)."""
    return as_summary(summary).auc()


def reported_weights(runs: Sequence[RunSummary]) -> str:
    """What the 'test' metrics of these runs were scored with, for the table."""
    if not any(s.test_last is not None for s in runs):
        return "end of training"
    if not all(s.config.eval.restore_best is not False for s in runs):
        return "last epoch"
    epochs = [s.best_epoch for s in runs]
    shown = ", ".join(str(e + 1) for e in epochs if isinstance(e, int))
    return f"best valid (epoch {shown})" if shown else "best valid"


def per_epoch(summary: RunSummary | Mapping) -> list[EvalEntry]:
    """The last validation entry of each epoch, in epoch order (epoch numbers from 1)."""
    last: dict[int, EvalEntry] = {}
    for entry in as_summary(summary).valid:
        last[int(entry.epoch)] = entry
    return [replace(last[e], epoch=e + 1) for e in sorted(last)]


def epoch_rows(runs: Sequence[RunSummary]) -> dict[int, list[EvalEntry]]:
    """{epoch (from 1): [the last validation entry of that epoch, per run that reached it]}."""
    out: dict[int, list[EvalEntry]] = {}
    for s in runs:
        for e in per_epoch(s):
            out.setdefault(e.epoch, []).append(e)
    return dict(sorted(out.items()))


def run_name(summary: RunSummary, index: int) -> str:
    """'seed <k>' from a run's config, else 'run <index + 1>'."""
    seed = summary.seed
    return f"seed {seed}" if seed is not None else f"run {index + 1}"


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
    item_slice: np.ndarray | None = None
    """(N,) the train frequency slice of each row's item (``store.metrics.SLICES``), when every run marked
    the same ones (the slice AUCs' tests)."""


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
    # the tail rows and the slices: only when every run marked the same ones (other
    # --eval.tail_buckets: no tail test; a run without the column: no slice tests)
    marks = {}
    for col in ("tail", "item_slice"):
        got = [p[col][np.searchsorted(p["row"], common)] if col in p else None for p in preds]
        marks[col] = got[0] if all(t is not None and np.array_equal(t, got[0]) for t in got) else None
    return Paired(ref["label"].astype(np.float64), ref.get("user"), logits, int(dropped), **marks)


def seed_pairs(base: Sequence[Run], other: Sequence[Run]) -> list[tuple[int, int]]:
    """(baseline run, other run) index pairs: runs of the same seed, else by position."""
    by_seed = {r.seed: i for i, r in enumerate(base)}
    pairs = [(by_seed[r.seed], j) for j, r in enumerate(other) if r.seed in by_seed]
    return pairs or [(i, i) for i in range(min(len(base), len(other)))]


def pair_label(base: Run, other: Run) -> str:
    """'seed 1', or 'seed 1 / seed 2' for runs of different seeds."""
    return other.seed if base.seed == other.seed else f"{base.seed} / {other.seed}"
