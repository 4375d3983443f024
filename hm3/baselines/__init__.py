"""Baselines for HM3, run on the same tasks, split, budget and run-directory format (``hm3 baseline``).

=============  ==========================================================================================
``uniform``    equal-weight task arithmetic, TIES and DARE-TIES (the paper's baselines; 3 evaluations)
``grid``       a regular grid over the per-model weights of the recipe's method
``nsga2``      pymoo NSGA-II over weights (+ density), one objective per task (Mergenetic)
``cmaes``      CMA-ES on the weighted-sum objective per preference (mergekit-evolve)
``evo_path``   evolution over inference paths + weights per preference (Sakana's data-flow space)
``param_only`` HM3 without the architecture level: the optimised upper level alone with the whole budget (with
               ``weights: preference``: one merge per preference, as many as the budget buys)
``arch_only``  HM3 without the parameter level: the agent routes over the fine-tuned models and the base
=============  ==========================================================================================

The budget counts distinct candidates scored on the search split, spent through the run's one budgeted
evaluator (:mod:`hm3.search.budget`). Its default is what HM3 may spend on the recipe
(:func:`hm3.search.run.hm3_budget`): P preferences × (merges + ``agent.iterations``), or in ``conditioned``
mode ``agent.iterations`` + P × (merges + 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hm3.baselines.budget import BaselineScoring
from hm3.baselines.evo_path import evo_path
from hm3.baselines.weights import cmaes, grid, nsga2, uniform
from hm3.errors import UserError
from hm3.recipe import Recipe
from hm3.search.budget import BudgetedEvaluator, BudgetSpent
from hm3.search.finish import finish_run
from hm3.search.progress import SearchProgress
from hm3.search.references import score_finetuned
from hm3.search.run import hm3_budget, run_search
from hm3.search.session import SearchInputs, open_search, preferences
from hm3.store import RunStore

Baseline = Callable[[BaselineScoring, np.ndarray, int], None]
SEARCHES: dict[str, Baseline] = {
    "uniform": uniform,
    "grid": grid,
    "nsga2": nsga2,
    "cmaes": cmaes,
    "evo_path": evo_path,
}
ABLATIONS = ("param_only", "arch_only")
METHODS = (*SEARCHES, *ABLATIONS)

__all__ = ["METHODS", "hm3_budget", "run_baseline"]


def run_baseline(
    recipe: Recipe,
    store: RunStore,
    method: str,
    budget: int | None,
    progress: SearchProgress,
    inputs: SearchInputs | None = None,
) -> dict[str, Any]:
    """Run baseline ``method`` on ``recipe`` into ``store`` with ``budget`` evaluations; returns the summary
    (``inputs``: already loaded by :func:`hm3.search.run.start_search`, else loaded now)."""
    if method not in METHODS:
        raise UserError(f"unknown baseline {method!r}; choose one of {', '.join(METHODS)}")
    budget = hm3_budget(recipe) if budget is None else budget
    if budget < 1:
        raise UserError(f"--budget must be at least 1, not {budget}")
    if method in ABLATIONS:
        return _ablation(recipe, store, method, budget, progress, inputs)
    started = time.perf_counter()
    search = open_search(recipe, store, progress, inputs)
    score_finetuned(search)
    evaluations = BudgetedEvaluator(search, method, budget)
    progress.stage(f"{method}: candidates", budget)
    try:
        SEARCHES[method](BaselineScoring(search, evaluations), preferences(recipe), recipe.seed)
    except BudgetSpent:
        pass
    store.log(f"{method}: {evaluations.used} of {budget} evaluations")
    details = {
        "budget": budget,
        "evaluations_used": evaluations.used,
        "ledgers": [evaluations.ledger.to_json()],
    }
    return finish_run(search, time.perf_counter() - started, method, details)


def _ablation(
    recipe: Recipe,
    store: RunStore,
    method: str,
    budget: int,
    progress: SearchProgress,
    inputs: SearchInputs | None = None,
) -> dict[str, Any]:
    """HM3 with one level switched off, its preferences or iterations set so it spends ``budget``."""
    k = len(recipe.objectives)
    fixed = (k if recipe.preferences.include_corners else 0) + (1 if recipe.preferences.include_centre else 0)
    if method == "param_only" and recipe.parameter_level.optimised:  # the upper level alone, with the budget
        changed = recipe.model_copy(
            update={
                "architecture_level": recipe.architecture_level.model_copy(update={"enabled": False}),
                "parameter_level": recipe.parameter_level.model_copy(update={"budget": budget}),
            }
        )
        return run_search(changed, store, progress, method=method, details={"budget": budget}, inputs=inputs)
    if method == "param_only":
        changed = recipe.model_copy(
            update={
                "architecture_level": recipe.architecture_level.model_copy(update={"enabled": False}),
                "preferences": recipe.preferences.model_copy(
                    update={"count": max(0, budget // recipe.parameter_level.merges_per_preference - fixed)}
                ),
            }
        )
        return run_search(changed, store, progress, method=method, details={"budget": budget}, inputs=inputs)
    count = len(preferences(recipe))
    iterations = max(1, budget // count - 1)
    changed = recipe.model_copy(update={"agent": recipe.agent.model_copy(update={"iterations": iterations})})
    return run_search(
        changed,
        store,
        progress,
        method=method,
        parameter_level=False,
        details={"budget": budget},
        inputs=inputs,
    )
