"""`hm3 merge --recipe`: the bilevel multi-objective search of HM3, from a recipe to a Pareto front.

1. **Fine-tuned models** (:mod:`hm3.search.session`). Each is scored on the search split; the ideal point z* is
   the best score per objective among them (oriented so that higher is better).
2. **Preferences.** The K simplex corners, the centre and N Dirichlet(1, …, 1) samples
   (:func:`hm3.moo.preferences.preference_vectors`, the recipe's ``preferences``).
3. **For each λ** (:mod:`hm3.search.preference`; on Ray actors: :mod:`hm3.search.distributed`), the upper level
   merges parameters with weights λ (the recipe's method; with ``density_search`` / ``scale_search``, every listed
   density × scale is merged and the best scalarized one kept), and the lower level searches an inference path over
   the K fine-tuned models plus that merged model with the PPO/Wolpertinger agent (``agent.mode: per_preference``:
   one agent per λ, ``agent.iterations`` new candidates each; ``conditioned``: one preference-conditioned agent
   trained across preferences on their own merges, rolled out for every λ). Each preference spends through its
   own budgeted evaluator (:mod:`hm3.search.budget`: its merges plus ``agent.iterations`` paths, or one rollout
   in ``conditioned`` mode, whose shared agent has ``agent.iterations`` of its own), and every scored candidate is
   appended to ``candidates.jsonl`` at once. The first preference is the probe: where its paths did not pay
   (added less to the front than merges would have), the others' path searches get ``agent.unpaid_patience``
   paths (:mod:`hm3.search.allocation`).
   Preferences whose searches start from the same merge run in index order, and a later one is not charged
   for what an earlier one scored (:func:`hm3.search.preference.merge_groups`).
   A finished preference is written to ``preferences/pNNN.json`` (atomically, with its ledger and greedy
   rollout) with its agent in ``policy/pNNN/``.
4. **The front** (:mod:`hm3.search.finish`): the non-dominated candidates of the whole log on the search split,
   scored on the held-out split with the references (the fine-tuned models and uniform TA / TIES / DARE-TIES
   merges).

**Resume.** Everything is deterministic given the recipe's seed, so a resumed run redoes the interrupted
preference exactly as the first attempt would have, answering every candidate already in
``candidates.jsonl`` from the log (no evaluation) — the agent sees the same rewards and takes the same steps.
Finished preferences are read back from ``preferences/``. A resumed run is the same run: the run store refuses
to resume one whose recipe, task or data files or models changed (:mod:`hm3.run_fingerprint`), and every
candidate key holds the run's scoring fingerprint (:attr:`hm3.search.session.Search.scoring`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hm3.merge.spec import MergeSpec
from hm3.recipe import Recipe, load_recipe, recipe_files
from hm3.routing.agent import MAX_EPISODES_PER_CANDIDATE
from hm3.search.allocation import Patience, path_level_paid
from hm3.search.budget import charged_documents
from hm3.search.distributed import RayWorkers, run_preferences_on_ray
from hm3.search.finish import finish_run, logged_candidates, run_folder
from hm3.search.log import CandidateLog
from hm3.search.preference import (
    CONDITIONED_POLICY,
    POLICY_DIR,
    conditioned_agent,
    conditioned_budget,
    conditioned_merge_choice,
    merge_groups,
    policy_updates,
    preference_budget,
    run_preference,
    untrained_policy_note,
)
from hm3.search.progress import SearchProgress
from hm3.search.references import score_finetuned
from hm3.search.session import Search, SearchInputs, load_inputs, open_search, preferences
from hm3.search.upper_level import UpperLevel, merge_for_preference, upper_level_budget
from hm3.store import RunStore
from hm3.validation import validate_recipe_file

if TYPE_CHECKING:
    from hm3.output_guard import InputPath
    from hm3.routing.agent import PathAgent

PREFERENCES_DIR = "preferences"


def start_search(
    recipe_file: str | Path,
    out: str | Path | None = None,
    *,
    force: bool = False,
    default_folder: str | Path | None = None,
) -> tuple[RunStore, Recipe, SearchInputs]:
    """Start a new run of a recipe file: check where it goes, validate and load, and only then create its
    folder (locked), so that a refused or failed start leaves no folder and replaces nothing.

    Args:
        recipe_file: The recipe.
        out: The run folder; None: ``default_folder``, else the recipe's ``output.dir``, else
            ``runs/<recipe name>``.
        force: Replace the run hm3 wrote in the folder (never an input, never anything else).
        default_folder: The folder when ``out`` is None (``hm3 baseline``: ``runs/<recipe>-<method>``).

    Returns:
        The run store (locked; close it when done), the validated recipe, and its loaded inputs.

    Raises:
        UserError: the folder overlaps an input, holds something ``force`` may not replace, or is in use
            (checked first, before anything loads); the recipe does not validate; an input does not load.
    """
    recipe = load_recipe(recipe_file)
    folder = Path(out or default_folder or run_folder(recipe_file, None, recipe.output.dir))
    sources: list[InputPath] = [
        ("recipe" if index == 0 else "recipe's include", file)
        for index, file in enumerate(recipe_files(recipe_file))
    ]
    RunStore.check_new(folder, recipe, force, sources)
    recipe = validate_recipe_file(recipe_file).recipe
    loaded = load_inputs(recipe)
    return RunStore.create(folder, recipe, force, sources), recipe, loaded


def run_search(
    recipe: Recipe,
    store: RunStore,
    progress: SearchProgress,
    method: str = "hm3",
    parameter_level: bool = True,
    details: dict[str, Any] | None = None,
    ray_address: str | None = None,
    workers: int | None = None,
    inputs: SearchInputs | None = None,
) -> dict[str, Any]:
    """Run (or finish) the search of ``recipe`` in ``store``; returns the summary (also in summary.json).

    The steps: the fine-tuned models scored, the optimised upper level's first round
    (:func:`upper_level_merges`), the conditioned agent where the recipe has one, the preferences' path searches
    (:func:`search_preferences`, here or on Ray), what the path level left unspent given back to the upper level
    (:func:`give_back_unspent`), and the front (:func:`hm3.search.finish.finish_run`).

    Args:
        recipe: The recipe (``architecture_level.enabled: false`` gives the parameter-only ablation).
        store: The run directory.
        progress: The live display.
        method: Name recorded in the summary (``hm3``, ``param_only``, ``arch_only``).
        parameter_level: False: no parameter merge, paths over the fine-tuned models and the base.
        details: More facts for the summary (a baseline's budget).
        ray_address: Run the preferences on Ray (``local``, ``auto``, ``HOST:PORT``); None: the recipe's
            ``distributed.ray_address``, else in this process.
        workers: Ray actors (None: the recipe's ``distributed.workers``, else one per cluster CPU).
        inputs: The loaded inputs (:func:`start_search`); None: loaded now.
    """
    started = time.perf_counter()
    search = open_search(recipe, store, progress, inputs)
    if search.log.loaded:
        progress.print(f"resuming: {search.log.loaded} candidates already scored in {store.candidates_path}")
    store.log(f"search started ({search.log.loaded} candidates in the log)")
    score_finetuned(search)
    vectors = preferences(recipe)
    progress.print(budget_line(recipe, len(vectors), parameter_level))
    done = [store.subdirectory(PREFERENCES_DIR) / f"p{i:03d}.json" for i in range(len(vectors))]
    pending = [(i, v) for i, (v, file) in enumerate(zip(vectors, done, strict=True)) if not file.is_file()]
    upper = UpperLevel(search, method) if parameter_level and recipe.parameter_level.optimised else None
    address = ray_address or recipe.distributed.ray_address
    distributed = None
    if address:  # as many workers as a batch of merges or the preferences left can use
        needed = max(len(pending), upper.batch if upper is not None else 1)
        distributed = RayWorkers(
            search, parameter_level, address, workers or recipe.distributed.workers, needed
        )
    try:
        archive = upper_level_merges(search, upper, distributed, bool(pending))
        merges = (
            {i: merge_for_preference(search, archive, v) for i, v in enumerate(vectors)}
            if archive is not None
            else {}
        )
        progress.start_preferences(len(vectors), len(vectors) - len(pending))
        agent = None
        needs_agent = recipe.architecture_level.enabled and recipe.agent.mode == "conditioned"
        if needs_agent and pending:
            # trained across the preferences on their own merges (without a parameter level: over the centre's)
            choose = conditioned_merge_choice(search, archive, vectors) if parameter_level else None
            agent = conditioned_agent(search, choose)
        search_preferences(search, pending, len(vectors), agent, parameter_level, merges, distributed)
        results = [store.read_json(f"{PREFERENCES_DIR}/{file.name}") for file in done]
        ledgers = [r.get("ledger", {}) for r in results]
        training: float | None = None  # what the conditioned agent's training spent, in full scorings
        if needs_agent and (store.directory / POLICY_DIR / CONDITIONED_POLICY / "ledger.json").is_file():
            ledgers.append(store.read_json(f"{POLICY_DIR}/{CONDITIONED_POLICY}/ledger.json"))
            training = charged_documents(ledgers[-1]) / search.documents("search")
        allocation = budget_allocation(recipe, results, training) if parameter_level else None
        give_back_unspent(upper, allocation)
    finally:
        if distributed is not None:
            distributed.close()
    summary_details = {
        "budget": hm3_budget(recipe),
        **(details or {}),
        "preferences": len(results),
        "evaluations_used": len({r["key"] for r in logged_candidates(search)}),
        **({"allocation": allocation} if allocation is not None else {}),
        **(conditioned_policy_facts(search) if needs_agent else {}),
        "ledgers": ledgers,
        "search_seconds_per_preference": [r["seconds"] for r in results],
    }
    return finish_run(search, time.perf_counter() - started, method, summary_details)


def conditioned_policy_facts(search: Search) -> dict[str, Any]:
    """The summary's facts about the run's conditioned policy: its PPO updates (``conditioned_ppo_updates``;
    none where an older run did not record them) and, when it made none, ``notes`` saying it is the untrained
    prior (printed and logged here too)."""
    updates = policy_updates(search.store.directory / POLICY_DIR / CONDITIONED_POLICY)
    if updates is None:
        return {}
    note = untrained_policy_note(updates)
    if note is not None:
        search.progress.print(f"note: {note}")
        search.store.log(f"note: {note}")
    return {"conditioned_ppo_updates": updates, **({"notes": [note]} if note is not None else {})}


def upper_level_merges(
    search: Search, upper: UpperLevel | None, distributed: RayWorkers | None, preferences_left: bool
) -> list[tuple[MergeSpec, dict[str, float]]] | None:
    """The optimised upper level's first round, run while a preference is left to search; its archive of scored
    merges, or None (no optimised upper level, or every preference already searched: a resumed run past this
    step). In a distributed run its merges — the give-back's too — are scored on the Ray workers."""
    if upper is None:
        return None
    if distributed is not None:
        upper.score_new = distributed.score  # a batch of merges scored together on the workers
    if not preferences_left:
        return None
    level = search.recipe.parameter_level
    if distributed is not None and level.optimiser == "gp" and level.batch == 1:
        search.progress.print(
            "the upper level proposes one merge at a time (parameter_level.batch: 1) and scores it here; "
            "set batch to the number of workers to score that many at once on Ray"
        )
    return upper.run()


def search_preferences(
    search: Search,
    pending: list[tuple[int, np.ndarray]],
    count: int,
    agent: PathAgent | None,
    parameter_level: bool,
    merges: dict[int, MergeSpec],
    distributed: RayWorkers | None,
) -> None:
    """The path searches of the ``pending`` (index, λ) preferences of ``count``, here in index order or on the Ray
    workers, each written to ``preferences/pNNN.json`` as it finishes. The probe goes first; where its paths did
    not pay, the others get the short window (:mod:`hm3.search.allocation`). Preferences that search the
    same merge run in index order, sharing charges (:func:`hm3.search.preference.merge_groups`)."""
    store, progress = search.store, search.progress

    def save(record: dict) -> None:
        store.write_json(f"{PREFERENCES_DIR}/p{record['index']:03d}.json", record)
        best = max(record["candidates"], key=lambda c: c["reward"])
        store.log(
            f"preference {record['index']} {record['preference']}: {len(record['candidates'])} candidates, "
            f"best R {best['reward']:.4f}, {record['seconds']:.1f} s"
        )
        progress.finish_preference()

    groups = merge_groups(merges)
    probe = PROBE if adapts_path_budget(search.recipe) and count > 1 else None

    def paid() -> bool:  # the probe preference's verdict (read once it is written)
        return probe is None or path_level_paid(store.read_json(f"{PREFERENCES_DIR}/p{probe:03d}.json"))

    if distributed is not None:
        if pending:
            initial = search.log.loaded
            agent_folder = store.directory / POLICY_DIR / CONDITIONED_POLICY if agent is not None else None
            run_preferences_on_ray(
                search, distributed, pending, agent_folder, save, merges, probe, paid, groups
            )
            search.log = CandidateLog(store)  # the workers appended their candidates to the file
            search.log.new, search.log.loaded = search.log.loaded - initial, initial
        return
    for index, preference in pending:
        progress.start_preference(index, count, preference, search.recipe.agent.iterations)
        verdict = True if index == probe else paid()
        record = run_preference(
            search,
            index,
            preference,
            agent,
            parameter_level,
            merges.get(index),
            verdict,
            shares_with=groups.get(index, []),
        )
        save(record)


def give_back_unspent(upper: UpperLevel | None, allocation: dict[str, Any] | None) -> None:
    """Hand what the path level left unspent back to the upper level: its optimiser continues the first round
    (a resumed run asks the same points again, and the log answers them)."""
    if upper is not None and allocation is not None and allocation["given_back"] > 0:
        upper.run(upper.first_round + allocation["given_back"])


PROBE = 0
"""The preference whose path search decides whether the path level pays in this run (the first searched)."""


def adapts_path_budget(recipe: Recipe) -> bool:
    """Whether later preferences' path windows depend on the probe's verdict (``agent.unpaid_patience``)."""
    agent = recipe.agent
    return (
        recipe.architecture_level.enabled
        and agent.mode == "per_preference"
        and agent.patience is not None
        and agent.unpaid_patience is not None
    )


def budget_allocation(
    recipe: Recipe, results: list[dict], conditioned_spent: float | None = None
) -> dict[str, Any] | None:
    """How the optimised upper level and the path level split the budget (:mod:`hm3.search.allocation`):
    the upper level's first round, what the path level spent on paths (a preference's search stops when its
    paths stop paying; the conditioned agent's training when its policy has converged), and what they left
    unspent — given back to the upper level, at most its first round's size again (an agent that converged
    leaves most of a large ``iterations`` unspent; the upper level at most doubles). Spending is counted in
    full scorings, a screened path at its screen's share, in both modes. None without the optimised level or
    without a path level.

    Args:
        conditioned_spent: With ``agent.mode: conditioned``, what its agent's training spent, in full scorings
            (its ledger's charged documents: paths scored fully and screens at their share; its rollouts, one
            per preference, are the preferences' own budget). The summary's ``conditioned_training_paths``.
    """
    if not (recipe.parameter_level.optimised and recipe.architecture_level.enabled):
        return None
    first_round = upper_level_budget(recipe)
    if recipe.agent.mode == "conditioned":
        budgeted, paths = conditioned_budget(recipe), [round(conditioned_spent or 0.0, 6)]
        split = {"conditioned_training_paths": paths[0], "stopped_early": paths[0] < budgeted}
    else:
        # - the upper level's merge; screens count their share, and the total unspent rounds down, so what is
        # given back was not spent
        paths = [round(max(0.0, r.get("used", r["budget"]) - 1), 6) for r in results]
        budgeted = len(results) * recipe.agent.iterations
        split = {
            "paths_per_preference": paths,
            "stopped_early": [bool(r.get("stopped_early")) for r in results],
        }
    return {
        "upper_level_first_round": first_round,
        "path_budget": budgeted,
        **split,
        "unspent": round(budgeted - sum(paths), 6),
        "given_back": min(math.floor(budgeted - sum(paths) + 1e-9), first_round),
    }


def budget_line(recipe: Recipe, preference_count: int, parameter_level: bool = True) -> str:
    """What the search will run, in one line (``make demo`` prints it first); ``parameter_level`` False: the
    architecture-only ablation, whose paths start from the base model."""
    merges = recipe.parameter_level.merges_per_preference
    share = f"{merges} merge{'s' * (merges != 1)}" if parameter_level else "the base model"
    upper = ""
    if recipe.parameter_level.optimised:
        share = "the upper level's best merge for it"
        upper = f"{upper_level_budget(recipe)} merges searched by the upper level ({recipe.parameter_level.optimiser}), "
    if recipe.architecture_level.enabled and recipe.agent.mode == "conditioned":
        share += f" + 1 rollout of a conditioned agent trained on up to {recipe.agent.iterations} paths"
        if recipe.parameter_level.optimised:
            share += ", what its training leaves unspent given back to the upper level"
    elif recipe.architecture_level.enabled:
        share += f" + up to {recipe.agent.iterations} agent paths"
        window = Patience.from_recipe(recipe, recipe.agent.iterations).window
        if window is not None:
            optimised = recipe.parameter_level.optimised
            off_front = " off the upper level's front" if optimised else ""
            back = ", given back to the upper level" if optimised else ""
            share += f", fewer if {window} in a row do not improve it{off_front}{back}"
            if adapts_path_budget(recipe):
                share += (
                    f" ({min(recipe.agent.unpaid_patience or window, window)} if the first preference's paths "
                    "did not pay)"
                )
    screened = ""
    if recipe.architecture_level.enabled and recipe.architecture_level.screen_paths:
        fraction = recipe.split.screen_fraction
        screened = (
            f"; a new path is scored on {fraction:.0%} of the search split first (costing about {fraction:g} of a "
            "candidate) and on all of it only if it is as good there as the best path"
        )
    agents = ""
    if recipe.architecture_level.enabled:
        agents = (
            f"; a path an agent revisits is free, and its training ends after {MAX_EPISODES_PER_CANDIDATE} "
            "episodes per path of its budget"
        )
    count = f"{preference_count} preference{'s' * (preference_count != 1)}"
    return f"budget: {hm3_budget(recipe)} new candidates: {upper}{count} x ({share}){screened}{agents}"


def hm3_budget(recipe: Recipe) -> int:
    """New search-split candidates HM3 may score on ``recipe``: P × the preference's share
    (:func:`~hm3.search.preference.preference_budget`) plus the conditioned agent's training."""
    if recipe.parameter_level.optimised:  # each preference's merge is one of the upper level's
        per_preference = preference_budget(recipe) - 1
        return (
            upper_level_budget(recipe)
            + len(preferences(recipe)) * per_preference
            + conditioned_budget(recipe)
        )
    return len(preferences(recipe)) * preference_budget(recipe) + conditioned_budget(recipe)
