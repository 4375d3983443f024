"""Turning a score vector and a preference into one number to maximise, on normalised objectives.

Objectives of one recipe come on different scales (chrF 0-100 next to accuracies 0-1), so before any weighting
each objective is put on the fine-tuned models' scale (:class:`ObjectiveScale`): 0 is the nadir (the worst
fine-tuned model on that objective), 1 the ideal z* (the best one). A preference then weighs objectives, not
units, and a length penalty β1 means the same on every recipe.

* ``weighted_sum``: Σ_k λ_k f̂_k — the HM3 paper's RL reward and appendix.
* ``tchebycheff``: −max_k λ_k (u_k − f̂_k) with the utopia point u = ẑ* + ε (ε = :data:`UTOPIA_MARGIN`, 1% of
  the specialists' range) — the paper's main text, as a *shortfall* from a point no candidate is expected to
  reach: a candidate that beats the best specialist scores better than one that falls short of it, never
  worse (|f − z*| would penalise both alike). Negated so that, like the weighted sum, higher is better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Scalarization = Literal["weighted_sum", "tchebycheff"]
UTOPIA_MARGIN = 0.01
"""ε of the utopia point, on the normalised scale."""
NORMALISED_DIGITS = 12
"""Normalised values are rounded to this many decimals, so that a metric's unit (0-1 or 0-100) cannot change a
comparison through the last bit of a division."""


@dataclass(frozen=True)
class ObjectiveScale:
    """Per-objective ideal and nadir (oriented: higher is better) that map scores onto [0, 1] = [nadir, ideal].

    An objective on which every fine-tuned model scores the same has no range to measure with; its range is
    then taken as max(1, |ideal|) on its own scale, so that it neither vanishes nor dominates.
    """

    ideal: tuple[float, ...]
    nadir: tuple[float, ...]

    @classmethod
    def from_points(cls, points: Sequence[Sequence[float]]) -> ObjectiveScale:
        """The scale spanned by oriented score vectors (the fine-tuned models')."""
        array = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
        return cls(tuple(array.max(axis=0).tolist()), tuple(array.min(axis=0).tolist()))

    @property
    def ranges(self) -> np.ndarray:
        ideal, nadir = np.asarray(self.ideal), np.asarray(self.nadir)
        span = ideal - nadir
        degenerate = span <= 1e-12 * np.maximum(1.0, np.abs(ideal))
        return np.where(degenerate, np.maximum(1.0, np.abs(ideal)), span)

    def normalise(self, oriented: Sequence[float] | np.ndarray) -> np.ndarray:
        """Oriented scores on the fine-tuned models' scale (0 = nadir, 1 = ideal)."""
        values = (np.asarray(oriented, dtype=np.float64) - np.asarray(self.nadir)) / self.ranges
        return np.round(values, NORMALISED_DIGITS)


def scalarize(
    scores: Sequence[float] | np.ndarray,
    preference: Sequence[float] | np.ndarray,
    method: Scalarization = "weighted_sum",
    ideal: Sequence[float] | np.ndarray | None = None,
) -> float:
    """The scalar utility of ``scores`` (higher-is-better, one per objective, normalised where they come from
    a search) under ``preference``.

    Args:
        scores: One value per objective.
        preference: λ, one weight per objective.
        method: ``weighted_sum`` or ``tchebycheff``.
        ideal: z* on the scale of ``scores`` (1 on every objective for normalised scores); the Tchebycheff
            utopia point is z* + :data:`UTOPIA_MARGIN`.

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
        utopia = np.asarray(ideal, dtype=np.float64) + UTOPIA_MARGIN
        return -float(np.max(lam * (utopia - f)))
    raise ValueError(f"unknown scalarization {method!r}")


def oriented(value: float, higher_is_better: bool) -> float:
    """A metric value turned so that higher is better (lower-is-better metrics are negated)."""
    return value if higher_is_better else -value
