"""Embedding budgets as ``launch.frontier --budgets`` gives them: B rows per tokenized feature.

Torch-free: the TorchX component (launch/store.py) checks ``--budgets`` when it builds the job.

- a fraction 0 < b <= 1: B = max(2, round(b x V)), V the rows of the largest tokenized feature's table;
- ``<n>r`` (``4096r``): B = n (n >= 2);
- ``<x>MiB`` (``2MiB``): B = max(2, floor(x x 2^20 / (4 x D))), D the embedding dimension: that many bytes
  of float32 rows per tokenized feature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from data_pipeline.cli import ConfigError

MIB = 1 << 20


@dataclass(frozen=True)
class Budget:
    """One ``--budgets`` entry: B rows per tokenized feature (`rows`)."""

    text: str
    """As given (its runs' folder name)."""
    unit: str
    """'fraction' (of the largest tokenized feature's rows), 'rows' or 'MiB' (per tokenized feature)."""
    value: float

    def rows(self, vocab: int, dim: int) -> int:
        """B for the largest tokenized feature's ``vocab`` rows and embedding dimension ``dim``."""
        if self.unit == "fraction":
            return max(2, round(self.value * vocab))
        if self.unit == "MiB":
            return max(2, math.floor(self.value * MIB / (4 * dim)))
        return int(self.value)


def parse_budgets(text: str) -> list[Budget]:
    """'1,0.1,4096r,2MiB' -> Budgets; ConfigError naming --budgets and the rule otherwise."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        unit = "MiB" if item.endswith("MiB") else "rows" if item.endswith("r") else "fraction"
        number = item.removesuffix("MiB") if unit == "MiB" else item.removesuffix("r")
        try:
            value = float(number) if unit != "rows" else int(number)
        except ValueError:
            value = math.nan
        ok = {"fraction": 0 < value <= 1, "rows": value >= 2, "MiB": value > 0}[unit]
        if not (ok and math.isfinite(value)):
            raise ConfigError(
                f"--budgets {item!r}: a budget is a fraction in (0, 1] of the largest tokenized feature's rows, "
                "<n>r rows (n >= 2) or <x>MiB per tokenized feature (x > 0), e.g. 1,0.1,4096r,2MiB"
            )
        out.append(Budget(item, unit, value))
    if len({b.text for b in out}) < len(out):
        raise ConfigError(f"--budgets {text}: a budget is given twice")
    return out
