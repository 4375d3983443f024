"""Pareto dominance and the non-dominated subset of a set of score vectors (higher is better)."""

from __future__ import annotations

import numpy as np


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` is at least as good as ``b`` everywhere and strictly better somewhere."""
    return bool(np.all(a >= b) and np.any(a > b))


def non_dominated_mask(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point dominates. Exact duplicates are all kept.

    Args:
        points: Array [n, k] of scores, higher is better.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        if not mask[i]:
            continue
        better_or_equal = np.all(points >= points[i], axis=1)
        strictly_better = np.any(points > points[i], axis=1)
        if np.any(better_or_equal & strictly_better):
            mask[i] = False
    return mask
