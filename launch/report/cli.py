"""``python -m launch.report --run id=DIR --run store=DIR [--run NAME=DIR ...] [--sids SIDS] [--scaling DIR]
[--baseline NAME] [--resamples N] --out REPORT [--overwrite]``, or ``python -m launch.report --frontier
DIR ... --out REPORT`` (the accuracy-memory frontier of launch.report.frontier, from run folders or
launch.frontier's OUT): the flags (a dataclass parsed with tyro, data_pipeline/cli.py) and `main`.

Exit codes: 0 when the report is written (also when the arms are not comparable: the report says so),
2 for a bad flag or input, with a message naming the flag, the folder or the file."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from data_pipeline import cli
from data_pipeline.cli import ConfigError
from data_pipeline.spec import DataError
from launch.report.significance import RESAMPLES
from launch.report.write import console_lines, write_report

DESCRIPTION = "The comparison report: markdown tables and PNG plots from finished trainer run folders."


@dataclass(kw_only=True)
class ReportArgs:
    """The report of finished trainer runs."""

    run: Annotated[list[str], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="NAME=DIR")] = field(
        default_factory=list
    )
    """An arm's run folder, or a folder of its seeds' run folders (once per arm, and a NAME given again
    adds seeds; required unless --frontier)."""
    frontier: list[str] = field(default_factory=list)
    """Instead of the comparison: the accuracy-memory frontier (frontier.md, .json, .png) of every
    finished run in these folders (run folders or folders holding them, e.g. launch.frontier's OUT)."""
    sids: str = ""
    """SID table folder, a path or a URI (for the tokenizer statistics)."""
    scaling: str = ""
    """bench_scaling.py output folder."""
    baseline: str = ""
    """The arm the others are tested against (default: id, else the first)."""
    resamples: int = RESAMPLES
    """Bootstrap resamples of the significance tests."""
    out: str
    """Report folder (an earlier report there is replaced)."""
    overwrite: bool = False
    """Write into an --out that holds other files (they are kept)."""

    def validate(self) -> None:
        """ConfigError naming the flag, the value and the rule."""
        if not self.run and not self.frontier:
            raise ConfigError("--run is required (NAME=DIR, one per arm), or --frontier DIR ...")
        if self.run and self.frontier:
            raise ConfigError("--run and --frontier: give one (a comparison report, or the frontier)")
        if self.resamples < 1:
            raise ConfigError(f"--resamples must be >= 1, got {self.resamples}")


def parse_runs(items: Sequence[str]) -> dict[str, list[Path]]:
    """['NAME=DIR', ...] -> {NAME: [DIR, ...]} (a name given again adds its folders); ValueError if malformed."""
    runs: dict[str, list[Path]] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--run expects NAME=DIR, got {item!r}")
        runs.setdefault(name, []).append(Path(folder))
    return runs


def write_frontier_report(out: str, folders: Sequence[str], resamples: int, overwrite: bool) -> Path:
    """REPORT/frontier.md, .json and .png of the runs in ``folders`` (an earlier frontier there is replaced)."""
    from data_pipeline import outdir
    from launch.report.frontier import FRONTIER_FILES, FRONTIER_MD, frontier_points, write_frontier

    where = outdir.claim(
        out, "frontier-report", replace=True, overwrite=overwrite, local=True, legacy=FRONTIER_MD,
        owned=FRONTIER_FILES, label="launch.report --frontier",
    )  # fmt: skip
    where.add(*FRONTIER_FILES)
    return write_frontier(where.path, frontier_points(folders), resamples)


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(ReportArgs, argv, prog="python -m launch.report", description=DESCRIPTION)
    try:
        args.validate()
        if args.frontier:
            path = write_frontier_report(args.out, args.frontier, args.resamples, args.overwrite)
            print(f"frontier: {path}")
            return 0
        runs = parse_runs(args.run)
        if args.baseline and args.baseline not in runs:
            raise ValueError(f"--baseline {args.baseline!r} is not one of the --run names {', '.join(runs)}")
        path = write_report(
            args.out, runs, args.sids or None, args.scaling or None, args.resamples, args.baseline or None,
            overwrite=args.overwrite,
        )  # fmt: skip
    except (DataError, ValueError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    for line in console_lines(path.parent):
        print(line)
    return 0
