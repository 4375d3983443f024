"""Parameter-space baselines: the merge's per-model weights (and density) are all they search.

* ``uniform``: task arithmetic, TIES and DARE-TIES with equal weights 1/K — the paper's baselines.
* ``grid``: every weight vector of a regular grid over [0, 1]^K (the finest grid the budget allows, coarsest
  points first), with the recipe's method.
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


def grid_points(k: int, budget: int) -> Iterator[tuple[float, ...]]:
    """Weight vectors of the finest regular grid on [0, 1]^k with at most ``budget`` non-zero points,
    ordered coarse to fine (so a cut budget still covers the cube), at most ``budget`` of them, made as they
    are taken: scoring starts at once however large the budget."""
    levels = 1
    while (levels + 2) ** k - 1 <= budget:
        levels += 1
    seen: set[tuple[float, ...]] = set()
    for n in range(1, levels + 1):
        for combo in itertools.product(np.linspace(0.0, 1.0, n + 1), repeat=k):
            point = tuple(round(float(v), 6) for v in combo)
            if any(point) and point not in seen:
                seen.add(point)
                yield point
                if len(seen) >= budget:
                    return


def grid(scoring: BaselineScoring, preferences: np.ndarray, seed: int) -> None:
    """A grid over the per-model weights of the recipe's method, until the budget is spent."""
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
