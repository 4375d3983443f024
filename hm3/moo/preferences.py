"""Preference vectors λ over K objectives: Dirichlet(1, ..., 1) samples, the K simplex corners, the centre."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

DUPLICATE_DECIMALS = 9
"""Two preference vectors equal to this many decimals are one preference."""


def preference_vectors(
    num_objectives: int,
    count: int,
    seed: int,
    include_corners: bool = True,
    include_centre: bool = True,
    centre: Sequence[float] | None = None,
) -> np.ndarray:
    """The preferences a search covers, in a fixed order: corners, centre, then ``count`` Dirichlet samples.

    Args:
        num_objectives: K.
        count: N, the number of Dirichlet(1, ..., 1) samples.
        seed: Seed of the samples; the same seed gives the same vectors.
        include_corners: Add the K one-hot vectors (each objective alone).
        include_centre: Add the centre: ``centre`` normalised to sum 1, or the uniform vector (1/K, ..., 1/K).
        centre: Positive relative importances of the objectives (the recipe's objective weights); None: equal.

    Returns:
        Array of shape [M, K], rows on the simplex (non-negative, summing to 1), duplicates removed (rows
        equal to 9 decimals; in linear time, so 10,000 samples take milliseconds).
    """
    if num_objectives < 1:
        raise ValueError("need at least one objective")
    rows: list[np.ndarray] = []
    if include_corners:
        rows.extend(np.eye(num_objectives))
    if include_centre:
        weights = np.ones(num_objectives) if centre is None else np.asarray(centre, dtype=np.float64)
        rows.append(weights / weights.sum())
    if count:
        rng = np.random.default_rng(seed)
        rows.extend(rng.dirichlet(np.ones(num_objectives), size=count))
    unique: list[np.ndarray] = []
    seen: set[bytes] = set()
    for row in rows:
        key = (np.round(row, DUPLICATE_DECIMALS) + 0.0).tobytes()  # + 0.0 turns -0.0 into 0.0
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return np.asarray(unique, dtype=np.float64).reshape(-1, num_objectives)


_DECIMAL = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|inf|infinity|nan)", re.ASCII | re.IGNORECASE)
"""A number as a user writes one (``inf`` and ``nan`` too, refused as not finite with their own message)."""


def parse_preference(text: str, num_objectives: int) -> np.ndarray:
    """A preference from ``"0.5,0.3,0.2"``, normalised to sum to 1 (only ratios matter: ``1e308,1e308,1`` is
    about ``0.5,0.5,0``).

    Raises:
        ValueError: wrong count, a negative or non-finite entry, or all zeros.
    """
    shown = text if len(text) <= 60 else f"{text[:57]}..."
    parts = [part.strip() for part in text.split(",")]
    if not all(_DECIMAL.fullmatch(part) for part in parts):  # float() also takes "1_0" and "١"
        raise ValueError(f"preference {shown!r}: expected comma-separated numbers such as 0.5,0.3,0.2")
    values = np.array([float(part) for part in parts], dtype=np.float64) + 0.0  # + 0.0: -0 is 0
    if not np.isfinite(values).all():
        raise ValueError(f"preference {shown!r}: values must be finite numbers")
    if values.size != num_objectives:
        raise ValueError(f"preference {shown!r}: {values.size} values for {num_objectives} objectives")
    if (values < 0).any() or not (values > 0).any():
        raise ValueError(f"preference {shown!r}: values must be non-negative and not all zero")
    values = values / values.max()  # a sum of huge values stays finite
    return values / values.sum()
