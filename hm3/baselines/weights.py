"""Parameter-space baselines: the merge's per-model weights (and density) are all they search.

* ``uniform``: task arithmetic, TIES and DARE-TIES with equal weights 1/K — the paper's baselines.
* ``grid``: weight vectors of ever finer regular grids over [0, 1]^K, coarsest first, as many as the budget
  buys (the finest grid it reaches taken in an order that covers the cube evenly), with the recipe's method.
* ``nsga2``: pymoo's NSGA-II over the weights (and the density, for methods that sparsify), one objective per
  task — what Mergenetic does.
* ``cmaes``: CMA-ES (the ``cma`` package) on the weighted-sum objective, one run per preference with an equal
  share of the budget — what mergekit-evolve does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import cma
import numpy as np

from hm3.baselines.budget import BaselineScoring, shares
from hm3.moo.nsga2 import nsga2_minimise
from hm3.search.budget import BudgetSpent
from hm3.search.references import UNIFORM_METHODS
from hm3.search.upper_level import DENSITY_RANGE


def _sparsifies(scoring: BaselineScoring) -> bool:
    return scoring.merge_spec([1.0] * len(scoring.search.pool.models)).row.sparsification is not None


def uniform(scoring: BaselineScoring, preferences: np.ndarray, seed: int) -> None:
    """Equal-weight TA, TIES and DARE-TIES (3 candidates, whatever the budget)."""
    k = len(scoring.search.pool.models)
    for method in UNIFORM_METHODS:
        scoring.score(scoring.merge_spec([1.0 / k] * k, method=method))


SPREAD_LIMIT = 2**20
"""The most points a grid may have for :func:`grid_points` to order them farthest-first; a larger one (many
models) is taken in product order, one point at a time, as no budget could cover it anyway."""


def grid_points(k: int, budget: int) -> Iterator[tuple[float, ...]]:
    """``budget`` weight vectors on [0, 1]^k (the origin, no merge at all, left out), made as they are taken:
    the regular grids of 2, 3, 4, … values per axis in turn, coarse to fine, each point once, until the budget
    is spent. Within a grid each next point is the one farthest from those taken so far (ties: the first in
    product order), so the grid the budget cuts still covers the cube evenly. Deterministic; a smaller budget's
    points are the first of a larger one's, and scoring starts at once however large the budget."""
    taken: list[tuple[float, ...]] = []
    for values in itertools.count(2):
        for point in grid_level(k, values, taken):
            if len(taken) >= budget:
                return
            taken.append(point)
            yield point
            if len(taken) >= budget:  # not a point of the next grid made for nothing
                return


def grid_level(k: int, values: int, taken: list[tuple[float, ...]]) -> Iterator[tuple[float, ...]]:
    """The points of the regular grid of ``values`` values per axis on [0, 1]^k that are neither the origin nor
    ``taken`` (coordinates rounded to 6 decimals, so that coarser grids' points match), farthest-first."""
    axis = [round(float(v), 6) for v in np.linspace(0.0, 1.0, values)]
    seen = set(taken)
    fresh = (p for p in itertools.product(axis, repeat=k) if any(p) and p not in seen)
    return fresh if values**k > SPREAD_LIMIT else farthest_first(list(fresh), taken)


def farthest_first(
    points: list[tuple[float, ...]], taken: list[tuple[float, ...]]
) -> Iterator[tuple[float, ...]]:
    """``points`` in greedy max-min order: each next the one whose nearest point among ``taken`` and those
    already given is farthest (squared distances rounded to 9 decimals, so that equal ones tie exactly; ties:
    the first in ``points``)."""
    if not points:
        return
    grid = np.asarray(points)
    nearest = np.full(len(grid), np.inf)
    for point in taken:
        nearest = np.minimum(nearest, _squared_distances(grid, point))
    for _ in range(len(grid)):
        index = int(np.argmax(nearest))
        yield points[index]
        nearest = np.minimum(nearest, _squared_distances(grid, grid[index]))
        nearest[index] = -1.0


def _squared_distances(grid: np.ndarray, point) -> np.ndarray:
    return np.round(((grid - np.asarray(point)) ** 2).sum(axis=1), 9)


def grid(scoring: BaselineScoring, preferences: np.ndarray, seed: int) -> None:
    """A grid over the per-model weights of the recipe's method (:func:`grid_points`), the budget's worth."""
    for point in grid_points(len(scoring.search.pool.models), scoring.budget):
        if scoring.left <= 0:
            break
        scoring.score(scoring.merge_spec(point))


def _decode(scoring: BaselineScoring, x: np.ndarray, sparse: bool):
    k = len(scoring.search.pool.models)
    weights = np.clip(x[:k], 0.0, 1.0)
    if not weights.any():
        weights = np.full(k, 1.0 / k)
    density = float(np.clip(x[k], *DENSITY_RANGE)) if sparse else None
    return scoring.merge_spec([round(float(w), 6) for w in weights], density=density)


def nsga2(scoring: BaselineScoring, preferences: np.ndarray, seed: int) -> None:
    """NSGA-II (pymoo, ask/tell) over weights (+ density), minimising the negated oriented scores."""

    k = len(scoring.search.pool.models)
    sparse = _sparsifies(scoring)
    low = [0.0] * k + ([DENSITY_RANGE[0]] if sparse else [])
    high = [1.0] * k + ([DENSITY_RANGE[1]] if sparse else [])
    nsga2_minimise(
        lambda x: -scoring.oriented(scoring.score(_decode(scoring, x, sparse))),
        low,
        high,
        objectives=len(scoring.search.objectives),
        population=int(min(max(4, scoring.budget // 4), 20)),
        seed=seed,
        more=lambda: scoring.left > 0,
    )


def cmaes(scoring: BaselineScoring, preferences: np.ndarray, seed: int) -> None:
    """One CMA-ES per preference on −R(λ) over weights (+ density), each with budget / P evaluations."""

    k = len(scoring.search.pool.models)
    sparse = _sparsifies(scoring)
    length = scoring.search.pool.num_layers
    for index, (preference, share) in enumerate(
        zip(preferences, shares(scoring.budget, len(preferences)), strict=True)
    ):
        if share == 0:
            continue
        weights = scoring.search.recipe.model_weights(list(preference))
        start = list(weights) + ([0.5] if sparse else [])
        bounds = [
            [0.0] * k + ([DENSITY_RANGE[0]] if sparse else []),
            [1.0] * k + ([DENSITY_RANGE[1]] if sparse else []),
        ]
        options = {"bounds": bounds, "seed": seed + index + 1, "verbose": -9, "maxfevals": share}
        strategy = cma.CMAEvolutionStrategy(start, 0.25, options)
        spent = 0
        while not strategy.stop() and spent < share:
            solutions = strategy.ask()
            values: list[float | None] = []
            for x in solutions:
                if spent >= share:  # the share ends mid-generation: the rest rank last
                    values.append(None)
                    continue
                scores = scoring.score(_decode(scoring, np.asarray(x), sparse), preference=preference)
                values.append(-scoring.reward(scores, preference, length))
                spent += 1
            worst = max(v for v in values if v is not None) + 1.0
            strategy.tell(solutions, [worst if v is None else v for v in values])
        if scoring.left <= 0:
            raise BudgetSpent
