"""Checks every converter shares on what its sources hold (beside the column checks of ``common``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from data_pipeline.spec import DataError


def require_rows(rows: int, sources: Sequence[Path], src: Path) -> None:
    """DataError naming --src and its source files when they hold no data rows (empty files, or a
    header only), which would make a dataset of 0 rows in every split. Converters call it once they
    counted the rows, before --out is touched where they can (so that an existing dataset is not
    replaced by nothing), and on the rows they wrote, before spec.json."""
    if rows > 0:
        return
    names = ", ".join(str(p) for p in sources) or str(src)
    raise DataError(
        f"--src {src}: no data rows in {names} (empty, or only a header and blank lines): nothing to convert"
    )
