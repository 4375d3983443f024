"""The optimised upper level (``parameter_level.weights: optimised``): one multi-objective weight search for the
run, from which every preference takes its starting merge.

The HM3 paper's upper level solves Θ^(i) = argmin_Θ max_k λ_k |F_k(Θ) − z*_k| over the merged parameters;
"weights = λ" is its shortcut (``weights: preference``). Here the merge's per-model coefficients live in the
box [0, ``w_max``]^K — amplifying task vectors (coefficients summing past 1) is where the best weight merges
lie (``benchmarks/results/search_quality.md``, ``../shared/reference/search-anchors.md``) — plus the density for
methods that sparsify, and the recipe's optimiser — Gaussian-process Bayesian optimisation (:mod:`hm3.moo.bayesian`,
``gp``) or NSGA-II (:mod:`hm3.moo.nsga2`) — searches it on the normalised objectives with
``parameter_level.budget`` merges, every one through the run's budgeted evaluator (logged, resumable: a
resumed run's optimiser asks the same points again and the log answers them). A preference λ then starts its
path search from the scored merge its scalarization ranks best (:func:`merge_for_preference`): the
preferences choose *which* merges matter, they are not the weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hm3.merge.spec import MergeSpec
from hm3.moo.bayesian import GPSearch
from hm3.moo.nsga2 import NSGA2Search
from hm3.search.budget import BudgetedEvaluator, BudgetSpent, ScoreNew
from hm3.search.candidate import Candidate

if TYPE_CHECKING:
    from hm3.recipe import Recipe
    from hm3.search.session import Search

DENSITY_RANGE = (0.1, 1.0)
"""Densities a weight search tries, for methods that sparsify."""
OPTIMISER_NAMES = {"gp": "Gaussian-process BO", "nsga2": "NSGA-II"}
UPPER_LEVEL = "upper_level"
"""The label of the optimised upper level's candidates in the log."""


def sparsifies(recipe: Recipe) -> bool:
    """Whether the recipe's merge method has a density to search."""
    spec = MergeSpec.from_recipe(recipe.parameter_level, [1.0] * len(recipe.models), recipe.seed)
    return spec.row.sparsification is not None


def upper_level_budget(recipe: Recipe) -> int:
    """Merges the optimised upper level's first round scores: ``parameter_level.budget``, else 8 per searched
    dimension."""
    level = recipe.parameter_level
    if level.budget is not None:
        return level.budget
    return 8 * (len(recipe.models) * level.blocks + int(sparsifies(recipe)))


def coefficients_merge(recipe: Recipe, x: Sequence[float], sparse: bool) -> MergeSpec:
    """The merge of a point of the box: per-model coefficients — ``blocks`` per model, model after model, a
    mergekit gradient when there are several (all zero: equal ones) —, then the density."""
    k = len(recipe.models)
    level = recipe.parameter_level
    blocks = level.blocks
    weights = np.clip(np.asarray(x[: k * blocks], dtype=float), 0.0, level.w_max)
    if not weights.any():
        weights = np.full(k * blocks, 1.0 / k)
    rounded = [round(float(w), 6) for w in weights]
    per_model: list[float] | list[tuple[float, ...]] = (
        rounded if blocks == 1 else [tuple(rounded[i * blocks : (i + 1) * blocks]) for i in range(k)]
    )
    density = float(np.clip(x[k * blocks], *DENSITY_RANGE)) if sparse else None
    return MergeSpec.from_recipe(level, per_model, recipe.seed, density=density)


class UpperLevel:
    """The optimised upper level of one run: the optimiser, every merge it scored, and its budgeted evaluator.

    :meth:`run` searches until the upper level has ``budget`` merges; a later call with a larger budget
    continues the same optimiser (the budget the path level gave back). A resumed run builds a fresh one and
    asks the same points again: the log answers them, so nothing is scored twice.
    """

    def __init__(self, search: Search, method: str) -> None:
        recipe = search.recipe
        self.search, self.recipe = search, recipe
        self.first_round = upper_level_budget(recipe)
        self.sparse = sparsifies(recipe)
        k = len(recipe.models) * recipe.parameter_level.blocks
        low = [0.0] * k + ([DENSITY_RANGE[0]] if self.sparse else [])
        high = [recipe.parameter_level.w_max] * k + ([DENSITY_RANGE[1]] if self.sparse else [])
        objectives = len(recipe.objectives)
        self.optimiser: GPSearch | NSGA2Search
        if recipe.parameter_level.optimiser == "gp":
            self.optimiser = GPSearch(low, high, objectives, recipe.seed, batch=self.batch)
        else:
            self.optimiser = NSGA2Search(low, high, objectives, self.batch, recipe.seed)
        self.evaluations = BudgetedEvaluator(search, method, self.first_round)
        self.archive: list[tuple[MergeSpec, dict[str, float]]] = []
        self._rewards = search.rewards()
        self.score_new: ScoreNew | None = None
        """Scores a batch of new merges together (a distributed run's Ray workers); None: one after the other,
        here."""

    @property
    def batch(self) -> int:
        """Merges it hands over at once: the recipe's ``batch`` (GP), or NSGA-II's population."""
        if self.recipe.parameter_level.optimiser == "gp":
            return self.recipe.parameter_level.batch
        return int(min(max(4, self.first_round // 4), 20))

    def _evaluate(self, points: list[np.ndarray]) -> list[list[float]]:
        specs = [coefficients_merge(self.recipe, x, self.sparse) for x in points]
        used = self.evaluations.used
        scores = self.evaluations.score_many(
            [Candidate.of_merge(spec) for spec in specs],
            level="merge",
            label=UPPER_LEVEL,
            score_new=self.score_new,
        )
        self.search.progress.advance(int(self.evaluations.used - used))
        self.archive.extend(zip(specs, scores, strict=True))
        return [list(self._rewards.normalised(s)) for s in scores]

    def run(self, budget: int | None = None) -> list[tuple[MergeSpec, dict[str, float]]]:
        """Search until ``budget`` merges (default: the first round's); every merge scored, in order."""
        budget = self.first_round if budget is None else budget
        self.evaluations.budget = budget
        optimiser = self.recipe.parameter_level.optimiser
        extra = (
            f" ({budget - self.first_round} given back by the path level)"
            if budget > self.first_round
            else ""
        )
        self.search.progress.stage(f"upper level: merges ({OPTIMISER_NAMES[optimiser]}){extra}", budget)
        self.search.progress.advance(self.evaluations.used)
        more = lambda: self.evaluations.used < budget  # noqa: E731
        room = lambda: int(budget - self.evaluations.used)  # noqa: E731  (merges: whole scorings)
        try:
            if isinstance(self.optimiser, GPSearch):
                self.optimiser.run_batches(self._evaluate, more, room)
            else:
                minimise = lambda points: [[-v for v in r] for r in self._evaluate(points)]  # noqa: E731
                self.optimiser.run_batches(minimise, more, room)
        except BudgetSpent:
            pass
        self.search.store.log(f"upper level: {self.evaluations.used} of {budget} merges")
        return self.archive


def merge_for_preference(
    search: Search, archive: Sequence[tuple[MergeSpec, dict[str, float]]], preference: Sequence[float]
) -> MergeSpec:
    """The scored merge the recipe's scalarization ranks best for λ (the first of equals)."""
    rewards = search.rewards()
    length = search.pool.num_layers
    lam = [float(v) for v in preference]
    best = max(range(len(archive)), key=lambda i: (rewards.reward(archive[i][1], lam, length), -i))
    return archive[best][0]


def upper_level_keys(records: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The keys of the merges the upper level scored on the search split (charged to it): a path search over
    one of them gets its merge free (:attr:`~hm3.search.budget.BudgetedEvaluator.prepaid`)."""
    return frozenset(
        r["key"] for r in records if r.get("label") == UPPER_LEVEL and r.get("split") == "search"
    )
