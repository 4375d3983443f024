"""The optimised upper level (``parameter_level.weights: optimised``): one multi-objective weight search for the
run, from which every preference takes its starting merge.

The HM3 paper's upper level solves Θ^(i) = argmin_Θ max_k λ_k |F_k(Θ) − z*_k| over the merged parameters;
"weights = λ" is its shortcut (``weights: preference``). Here the merge's per-model coefficients live in the
box [0, ``w_max``]^K — amplifying task vectors (coefficients summing past 1) is where the best weight merges
lie (``benchmarks/results/search_quality.md``, ``../shared/reference/search-anchors.md``) — plus the density for
methods that sparsify, and NSGA-II (:mod:`hm3.moo.nsga2`) searches it on the normalised objectives with
``parameter_level.budget`` merges, every one through the run's budgeted evaluator (logged, resumable: a
resumed run's NSGA-II asks the same points again and the log answers them). A preference λ then starts its
path search from the scored merge its scalarization ranks best (:func:`merge_for_preference`): the
preferences choose *which* merges matter, they are not the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from hm3.merge.spec import MergeSpec
from hm3.moo.nsga2 import nsga2_minimise
from hm3.search.budget import BudgetedEvaluator, BudgetSpent
from hm3.search.candidate import Candidate

if TYPE_CHECKING:
    from hm3.recipe import Recipe
    from hm3.search.session import Search

DENSITY_RANGE = (0.1, 1.0)
"""Densities a weight search tries, for methods that sparsify."""
UPPER_LEVEL = "upper_level"
"""The label of the optimised upper level's candidates in the log."""


def sparsifies(recipe: Recipe) -> bool:
    """Whether the recipe's merge method has a density to search."""
    spec = MergeSpec.from_recipe(recipe.parameter_level, [1.0] * len(recipe.models), recipe.seed)
    return spec.row.sparsification is not None


def upper_level_budget(recipe: Recipe) -> int:
    """Merges the optimised upper level scores: ``parameter_level.budget``, else 8 per searched dimension."""
    level = recipe.parameter_level
    if level.budget is not None:
        return level.budget
    return 8 * (len(recipe.models) + int(sparsifies(recipe)))


def coefficients_merge(recipe: Recipe, x: Sequence[float], sparse: bool) -> MergeSpec:
    """The merge of a point of the box: per-model coefficients (all zero: equal ones), then the density."""
    k = len(recipe.models)
    level = recipe.parameter_level
    weights = np.clip(np.asarray(x[:k], dtype=float), 0.0, level.w_max)
    if not weights.any():
        weights = np.full(k, 1.0 / k)
    density = float(np.clip(x[k], *DENSITY_RANGE)) if sparse else None
    return MergeSpec.from_recipe(level, [round(float(w), 6) for w in weights], recipe.seed, density=density)


def optimise_merges(search: Search, method: str) -> list[tuple[MergeSpec, dict[str, float]]]:
    """Run the upper level's weight search; every merge it scored, with its search-split scores, in order."""
    recipe = search.recipe
    budget = upper_level_budget(recipe)
    sparse = sparsifies(recipe)
    k = len(recipe.models)
    evaluations = BudgetedEvaluator(search, method, budget)
    rewards = search.rewards()
    archive: list[tuple[MergeSpec, dict[str, float]]] = []
    search.progress.stage("upper level: merges (NSGA-II)", budget)

    def evaluate(x: np.ndarray) -> list[float]:
        spec = coefficients_merge(recipe, x, sparse)
        used = evaluations.used
        scores = evaluations.score(Candidate.of_merge(spec), level="merge", label=UPPER_LEVEL)
        if evaluations.used > used:
            search.progress.advance()
        archive.append((spec, scores))
        return [-value for value in rewards.normalised(scores)]

    try:
        nsga2_minimise(
            evaluate,
            [0.0] * k + ([DENSITY_RANGE[0]] if sparse else []),
            [recipe.parameter_level.w_max] * k + ([DENSITY_RANGE[1]] if sparse else []),
            objectives=len(recipe.objectives),
            population=int(min(max(4, budget // 4), 20)),
            seed=recipe.seed,
            more=lambda: evaluations.used < budget,
        )
    except BudgetSpent:
        pass
    search.store.log(f"upper level: {evaluations.used} of {budget} merges")
    return archive


def merge_for_preference(
    search: Search, archive: Sequence[tuple[MergeSpec, dict[str, float]]], preference: Sequence[float]
) -> MergeSpec:
    """The scored merge the recipe's scalarization ranks best for λ (the first of equals)."""
    rewards = search.rewards()
    length = search.pool.num_layers
    lam = [float(v) for v in preference]
    best = max(range(len(archive)), key=lambda i: (rewards.reward(archive[i][1], lam, length), -i))
    return archive[best][0]
