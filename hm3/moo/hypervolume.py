"""Hypervolume of a set of score vectors (higher is better), with a normalisation shared by all compared sets.

**Normalisation and reference point** (used everywhere hm3 reports a hypervolume): each objective is mapped to
[0, 1] by min-max over *every point being compared* (a front together with the fine-tuned models, the uniform
merges and any baseline in the same table; ``hm3 pareto A B``: the union of every run's front and references), and
the reference point is −0.1 on every normalised axis, i.e. 10% of each objective's range below the worst compared
point. Hypervolumes computed with one
:class:`Normalization` are comparable; a set's hypervolume lies in [0, 1.1^K].

The computation is exact: a 2-D sweep, and slicing by the last objective above that (HSO), which is fast for the
fronts a search produces (tens of points, a handful of objectives).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hm3.moo.pareto import non_dominated_mask

REFERENCE_OFFSET = -0.1
"""Reference point on every normalised axis."""


@dataclass(frozen=True)
class Normalization:
    """Per-objective min-max bounds of the compared points, and the reference point below them."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    reference: float = REFERENCE_OFFSET

    @classmethod
    def fit(cls, *point_sets: np.ndarray) -> Normalization:
        """Bounds from the union of every point set that will be compared."""
        stacked = np.vstack(
            [np.asarray(p, dtype=np.float64).reshape(-1, np.shape(p)[-1]) for p in point_sets]
        )
        return cls(tuple(stacked.min(axis=0).tolist()), tuple(stacked.max(axis=0).tolist()))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Points mapped to [0, 1] per objective (an objective on which all points tie maps to 1)."""
        points = np.asarray(points, dtype=np.float64)
        lower, upper = np.asarray(self.lower), np.asarray(self.upper)
        span = upper - lower
        safe = np.where(span > 0, span, 1.0)
        return np.where(span > 0, (points - lower) / safe, 1.0)

    def hypervolume(self, points: np.ndarray) -> float:
        """Hypervolume of ``points`` in this normalisation."""
        points = np.asarray(points, dtype=np.float64)
        if points.size == 0:
            return 0.0
        normalised = self.apply(points.reshape(-1, len(self.lower)))
        return hypervolume(normalised, np.full(len(self.lower), self.reference))

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description for run summaries."""
        return {
            "method": "min-max over all compared points; reference point at -0.1 on each normalised axis",
            "lower": list(self.lower),
            "upper": list(self.upper),
            "reference": self.reference,
        }


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume dominated by ``points`` (maximisation) and bounded below by ``reference``.

    Points that do not strictly exceed the reference on every objective contribute nothing.
    """
    points = np.asarray(points, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if points.size == 0:
        return 0.0
    points = points.reshape(-1, reference.size)
    # Minimisation form: distances below the negated reference.
    return _hv_min(-points, -reference)


def _hv_min(points: np.ndarray, reference: np.ndarray) -> float:
    points = points[np.all(points < reference, axis=1)]
    if len(points) == 0:
        return 0.0
    points = np.unique(points[non_dominated_mask(-points)], axis=0)
    dims = points.shape[1]
    if dims == 1:
        return float(reference[0] - points[:, 0].min())
    if dims == 2:
        order = np.argsort(points[:, 0])
        xs, ys = points[order, 0], points[order, 1]
        right = np.append(xs[1:], reference[0])
        return float(np.sum((right - xs) * (reference[1] - np.minimum.accumulate(ys))))
    order = np.argsort(points[:, -1])
    points = points[order]
    bounds = np.append(points[1:, -1], reference[-1])
    total = 0.0
    for i in range(len(points)):
        depth = bounds[i] - points[i, -1]
        if depth > 0:
            total += depth * _hv_min(points[: i + 1, :-1], reference[:-1])
    return float(total)
