"""Turning a score vector and a preference into one number to maximise.

* ``weighted_sum``: Σ_k λ_k f_k — the HM3 paper's RL reward and appendix.
* ``tchebycheff``: −max_k λ_k |f_k − z*_k| — the paper's main text, where z* is the ideal point (the best score
  per objective among the fine-tuned models). Negated so that, like the weighted sum, higher is better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Scalarization = Literal["weighted_sum", "tchebycheff"]


def scalarize(
    scores: Sequence[float] | np.ndarray,
    preference: Sequence[float] | np.ndarray,
    method: Scalarization = "weighted_sum",
    ideal: Sequence[float] | np.ndarray | None = None,
) -> float:
    """The scalar utility of ``scores`` (higher-is-better, one per objective) under ``preference``.

    Raises:
        ValueError: ``tchebycheff`` without an ideal point, or vectors of different lengths.
    """
    f = np.asarray(scores, dtype=np.float64)
    lam = np.asarray(preference, dtype=np.float64)
    if f.shape != lam.shape:
        raise ValueError(f"{f.size} scores for a preference over {lam.size} objectives")
    if method == "weighted_sum":
        return float(np.dot(lam, f))
    if method == "tchebycheff":
        if ideal is None:
            raise ValueError("the Tchebycheff scalarization needs the ideal point z*")
        z = np.asarray(ideal, dtype=np.float64)
        return -float(np.max(lam * np.abs(f - z)))
    raise ValueError(f"unknown scalarization {method!r}")


def oriented(value: float, higher_is_better: bool) -> float:
    """A metric value turned so that higher is better (lower-is-better metrics are negated)."""
    return value if higher_is_better else -value
