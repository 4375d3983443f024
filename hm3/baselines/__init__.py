"""Baselines for HM3, run on the same tasks, split, budget and run-directory format (``hm3 baseline``).

=============  ==========================================================================================
``uniform``    equal-weight task arithmetic, TIES and DARE-TIES (the paper's baselines; 3 evaluations)
``grid``       ever finer regular grids over the per-model weights of the recipe's method, the budget's worth
``nsga2``      pymoo NSGA-II over weights (+ density), one objective per task (Mergenetic)
``cmaes``      CMA-ES on the weighted-sum objective per preference (mergekit-evolve)
``evo_path``   evolution over inference paths + weights per preference (Sakana's data-flow space)
``param_only`` HM3 without the architecture level: the optimised upper level alone with the whole budget (with
               ``weights: preference``: each preference's merges, as many preferences as the budget buys)
``arch_only``  HM3 without the parameter level: the agent routes over the fine-tuned models and the base, as
               many paths as the budget buys
=============  ==========================================================================================

The budget counts the documents a method scores on the search split, in full scorings of it (a distinct
candidate scored on all of it costs 1, a path screened on a part of it that part's share), spent through budgeted
evaluators (:mod:`hm3.search.budget`); no method spends more, and one that cannot run within it (an ablation
whose fixed preferences cost more) is refused with the smallest budget it needs. Its default is what HM3 may
spend on the recipe (:func:`hm3.search.run.hm3_budget`): P preferences × (merges + ``agent.iterations``), or in
``conditioned`` mode ``agent.iterations`` + P × (merges + 1).

A baseline's run holds ``baseline.json`` (its method and budget): ``hm3 baseline --resume RUN`` continues a
killed or interrupted one, every method replaying its search deterministically with the candidates it logged
answered from ``candidates.jsonl`` (none scored twice), so its front is the uninterrupted run's.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hm3.baselines.budget import BaselineScoring
from hm3.baselines.evo_path import evo_path
from hm3.baselines.weights import cmaes, grid, nsga2, uniform
from hm3.errors import UserError
from hm3.recipe import Recipe, load_recipe
from hm3.search.budget import BudgetedEvaluator, BudgetSpent
from hm3.search.finish import finish_run
from hm3.search.progress import SearchProgress
from hm3.search.references import score_finetuned
from hm3.search.run import hm3_budget, run_search, start_search
from hm3.search.session import SearchInputs, open_search, preferences
from hm3.store import BASELINE_FILE, RunStore, require_run_directory

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

__all__ = [
    "BASELINE_FILE",
    "METHODS",
    "ablation_recipe",
    "baseline_budget",
    "hm3_budget",
    "open_baseline_run",
    "reopen_baseline_run",
    "run_baseline",
]


def open_baseline_run(
    recipe_file: str | Path, method: str, budget: int | None, out: str | Path | None, force: bool = False
) -> tuple[RunStore, Recipe, SearchInputs]:
    """Start a new run of baseline ``method`` on a recipe file (:func:`hm3.search.run.start_search`; the
    default folder ``runs/<recipe name>-<method>``), once the method is known to run within ``budget``: a
    refused budget leaves no folder.

    Raises:
        UserError: from :func:`baseline_budget`, or from :func:`~hm3.search.run.start_search`.
    """
    baseline_budget(load_recipe(recipe_file), method, budget)
    default = Path("runs") / f"{Path(recipe_file).stem}-{method}"
    return start_search(recipe_file, out, force=force, default_folder=default)


def reopen_baseline_run(directory: str | Path) -> tuple[RunStore, Recipe, str, int | None]:
    """Open a baseline's run to continue it (locked, its inputs checked: :meth:`RunStore.resume`); returns the
    store, the run's recipe, and the method and budget it was started with.

    Raises:
        UserError: not a baseline's run, or :meth:`RunStore.resume` refuses it.
    """
    method, budget = recorded_baseline(directory)
    store, recipe = RunStore.resume(directory)
    return store, recipe, method, budget


def recorded_baseline(directory: str | Path) -> tuple[str, int | None]:
    """The method and budget in a run's ``baseline.json``.

    Raises:
        UserError: no run there, no ``baseline.json`` (a run of ``hm3 merge``), or a damaged one.
    """
    file = require_run_directory(directory) / BASELINE_FILE
    if not file.is_file():
        raise UserError(
            f"{directory} is not a run of hm3 baseline (it has no {BASELINE_FILE}); a run of hm3 merge continues "
            f"with hm3 merge --resume {shlex.quote(str(directory))}"
        )
    try:
        recorded = json.loads(file.read_text(encoding="utf-8"))
        method, budget = recorded["method"], recorded["budget"]
    except (ValueError, TypeError, KeyError):
        method, budget = None, None
    if method not in METHODS or not (budget is None or (type(budget) is int and budget >= 1)):
        raise UserError(
            f"{file} is damaged (it names no method of {', '.join(METHODS)} with its budget); start the run "
            "afresh with hm3 baseline --recipe R --method M --out RUN --force"
        )
    return method, budget


def run_baseline(
    recipe: Recipe,
    store: RunStore,
    method: str,
    budget: int | None,
    progress: SearchProgress,
    inputs: SearchInputs | None = None,
) -> dict[str, Any]:
    """Run baseline ``method`` on ``recipe`` into ``store`` with ``budget`` evaluations (None: what HM3 may
    spend), or finish it where ``store`` holds its interrupted run; returns the summary (``inputs``: already
    loaded by :func:`hm3.search.run.start_search`, else loaded now).

    Raises:
        UserError: from :func:`baseline_budget`.
    """
    given = budget
    budget = baseline_budget(recipe, method, budget)
    store.write_json(BASELINE_FILE, {"method": method, "budget": given})
    if method in ABLATIONS:
        return _ablation(recipe, store, method, budget, progress, inputs)
    started = time.perf_counter()
    search = open_search(recipe, store, progress, inputs)
    if search.log.loaded:
        progress.print(f"resuming: {search.log.loaded} candidates already scored in {store.candidates_path}")
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


def baseline_budget(recipe: Recipe, method: str, budget: int | None) -> int:
    """The budget ``method`` spends on ``recipe``: ``budget``, or (None) what HM3 may spend on it.

    Raises:
        UserError: an unknown method, a budget below 1, or one too small for the ablation to run at all (the
            smallest it needs is named).
    """
    if method not in METHODS:
        raise UserError(f"unknown baseline {method!r}; choose one of {', '.join(METHODS)}")
    budget = hm3_budget(recipe) if budget is None else budget
    if budget < 1:
        raise UserError(f"--budget must be at least 1, not {budget}")
    if method in ABLATIONS:
        ablation_recipe(recipe, method, budget)
    return budget


def _ablation(
    recipe: Recipe,
    store: RunStore,
    method: str,
    budget: int,
    progress: SearchProgress,
    inputs: SearchInputs | None = None,
) -> dict[str, Any]:
    """HM3 with one level switched off, on the recipe :func:`ablation_recipe` sizes to ``budget``."""
    return run_search(
        ablation_recipe(recipe, method, budget),
        store,
        progress,
        method=method,
        parameter_level=method == "param_only",
        details={"budget": budget},
        inputs=inputs,
    )


def ablation_recipe(recipe: Recipe, method: str, budget: int) -> Recipe:
    """The recipe ablation ``method`` runs so that HM3's budget on it (:func:`~hm3.search.run.hm3_budget`),
    the most it can spend, is at most ``budget``."""
    return param_only_recipe(recipe, budget) if method == "param_only" else arch_only_recipe(recipe, budget)


def param_only_recipe(recipe: Recipe, budget: int) -> Recipe:
    """HM3 without the architecture level. With the optimised upper level: its optimiser alone, with the whole
    budget. With ``weights: preference``: as many preferences as the budget buys, each its merges (every
    density × scale searched), the corners and the centre the recipe asks for among them.

    Raises:
        UserError: the budget does not buy the merges of the preferences the recipe always searches.
    """
    level = recipe.parameter_level
    switched_off = {"architecture_level": recipe.architecture_level.model_copy(update={"enabled": False})}
    if level.optimised:
        return recipe.model_copy(
            update={**switched_off, "parameter_level": level.model_copy(update={"budget": budget})}
        )
    merges = level.merges_per_preference
    fixed = fixed_preferences(recipe)
    smallest = merges * max(1, fixed)
    if budget < smallest:
        searched = f"the {fixed} preferences it always searches (preferences.include_corners, include_centre)"
        each = f"{merges} merges each (parameter_level.density_search x scale_search)"
        spend = f"{searched if fixed else '1 preference'} x {each}"
        raise _too_small("param_only", budget, smallest, spend)
    count = budget // merges - fixed
    return recipe.model_copy(
        update={**switched_off, "preferences": recipe.preferences.model_copy(update={"count": count})}
    )


def arch_only_recipe(recipe: Recipe, budget: int) -> Recipe:
    """HM3 without the parameter level: no merge, one plain start per preference (the base model: its
    embeddings and head are the paths'), and as many agent paths as the budget buys — ``agent.iterations``
    per preference (``per_preference``: P × (1 + iterations) ≤ budget) or for the conditioned agent's training
    (P × 2 + iterations ≤ budget: each preference's start and rollout).

    Raises:
        UserError: the budget does not buy one agent path beside the preferences' starts (and rollouts).
    """
    count = len(preferences(recipe))
    if recipe.agent.mode == "conditioned":  # each preference: its start and the conditioned agent's rollout
        iterations, smallest = budget - 2 * count, 2 * count + 1
        spend = f"{count} preferences x (the base model + the agent's rollout) + 1 path to train the agent on"
    else:
        iterations, smallest = budget // count - 1, 2 * count
        spend = f"{count} preferences x (the base model + 1 agent path)"
    if iterations < 1:
        raise _too_small("arch_only", budget, smallest, spend)
    no_merge = recipe.parameter_level.model_copy(
        update={
            "weights": "preference",  # one plain start per preference, no upper level: HM3's budget as spent
            "density_search": None,
            "scale_search": None,
            "budget": None,
            "batch": 1,
            "granularity": "model",
        }
    )
    return recipe.model_copy(
        update={
            "parameter_level": no_merge,
            "agent": recipe.agent.model_copy(update={"iterations": iterations}),
        }
    )


def _too_small(method: str, budget: int, smallest: int, spend: str) -> UserError:
    """The one-line refusal of a budget below what ``method`` spends whatever its budget (``spend``)."""
    return UserError(f"{method} needs --budget {smallest} or more on this recipe, not {budget}: {spend}")


def fixed_preferences(recipe: Recipe) -> int:
    """The preferences a recipe searches whatever its ``preferences.count``: the corners and the centre it asks
    for (without duplicates: one objective's corner is its centre)."""
    return len(
        preferences(
            recipe.model_copy(update={"preferences": recipe.preferences.model_copy(update={"count": 0})})
        )
    )
