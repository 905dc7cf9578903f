"""How the report shows things: numbers and byte sizes in table cells, mean ± standard deviation
over seeds, markdown tables, and the display name of an arm."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence

LABELS = {"id": "ID baseline", "store": "STORE (SIDs)"}
"""Display names of the runs the comparison makes; other run names are shown as they are."""


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
