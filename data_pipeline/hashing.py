"""The one 64-bit integer hash of the data pipeline (reader ID mapping, converters, inspect)."""

from __future__ import annotations

import numpy as np


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser over uint64/int64 values: spreads every input bit over all 64 output bits.

    Stable across machines and runs (converted datasets depend on it). Returns a new uint64 array.
    """
    h = x.astype(np.uint64)  # a fresh copy, updated in place below
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h
