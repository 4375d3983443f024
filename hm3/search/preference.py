"""One preference λ of the HM3 search: the upper-level merge, then the lower-level path search over it.

:func:`run_preference` is what the sequential search (:mod:`hm3.search.run`) and each Ray worker
(:mod:`hm3.search.distributed`) call for a preference, with the same per-preference seed; it spends through
its own :class:`~hm3.search.budget.BudgetedEvaluator` with the preference's share of the budget
(:func:`preference_budget`), so every candidate is logged as it is scored and none past the share.
:func:`conditioned_agent` is the one preference-conditioned agent of ``agent.mode: conditioned``, trained with
a budget of its own (``agent.iterations``) across preferences on their own merges (:class:`MergeViews`).
"""

from __future__ import annotations

import itertools
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hm3.errors import BudgetSpent
from hm3.folder_swap import fsync_tree
from hm3.merge.spec import MergeSpec
from hm3.placement import PoolSizes, free_bytes
from hm3.recipe import Recipe
from hm3.routing.agent import BestPaths, PathAgent, pool_view, search_path, train_conditioned_agent
from hm3.routing.env import PoolReward, PoolView
from hm3.routing.path import InferencePath
from hm3.routing.pool import RoutingPool
from hm3.routing.scoring import PathScorer
from hm3.search.allocation import IMPROVEMENT, FrontGain, Patience, TrainingPatience, front_gain
from hm3.search.budget import BudgetedEvaluator, charged_keys, shared_keys
from hm3.search.candidate import Candidate
from hm3.search.session import Search
from hm3.search.upper_level import UPPER_LEVEL, merge_for_preference, upper_level_budget, upper_level_keys

POLICY_DIR = "policy"
CONDITIONED_POLICY = "conditioned"
TRAINING_FILE = "training.json"
"""What the conditioned agent's training did (``ppo_updates``), saved with its policy."""
HM3 = "hm3"


def preference_budget(recipe: Recipe) -> int:
    """New search-split candidates one preference may score: its merges, plus ``agent.iterations`` paths
    (``per_preference``: the agent's training and its greedy rollout) or one path (``conditioned``: the shared
    agent's rollout)."""
    merges = recipe.parameter_level.merges_per_preference
    if recipe.parameter_level.optimised:
        merges = 1  # the upper level's merge it starts from: scored already, a log answer, never a new one
    if not recipe.architecture_level.enabled:
        return merges
    return merges + (1 if recipe.agent.mode == "conditioned" else recipe.agent.iterations)


def conditioned_budget(recipe: Recipe) -> int:
    """New candidates the shared conditioned agent's training may score (0 without one)."""
    conditioned = recipe.architecture_level.enabled and recipe.agent.mode == "conditioned"
    return recipe.agent.iterations if conditioned else 0


def merge_for(
    search: Search, preference: np.ndarray, density: float | None = None, scale: float = 1.0
) -> MergeSpec:
    """The parameter-level merge of preference λ (weights mapped from objectives to models)."""
    recipe = search.recipe
    return MergeSpec.from_recipe(
        recipe.parameter_level,
        recipe.model_weights(list(preference)),
        recipe.seed,
        density=density,
        scale=scale,
    )


def budgeted_path_scorer(
    search: Search, spec: MergeSpec | None, evaluations: BudgetedEvaluator
) -> tuple[RoutingPool, PathScorer]:
    """The routing pool of ``spec``'s merge and a path scorer over it that spends through ``evaluations``
    (the identity path is the plain merge, charged as the upper level's; any other path as the lower's); with
    ``architecture_level.screen_paths`` (and a screen smaller than the search split) it screens new paths."""
    alignment = search.recipe.architecture_level.alignment
    routing = search.models.routing_pool(spec)

    def scoring(split: str):
        def evaluate(path: InferencePath, build) -> dict[str, float]:
            candidate = Candidate.routed(spec, path, alignment, routing)
            level = "merge" if candidate.is_plain else "path"
            return evaluations.score(candidate, level=level, split=split, build=build)

        return evaluate

    scorer = search.models.path_scorer(routing, scoring("search"))
    if screens_paths(search):
        scorer.screen_evaluate = scoring("screen")
    return routing, scorer


def screens_paths(search: Search) -> bool:
    """Whether the search screens new paths: ``architecture_level.screen_paths``, and a screen that is smaller
    than the search split (objectives of a few documents have none)."""
    screened = search.recipe.architecture_level.screen_paths
    return screened and search.documents("screen") < search.documents("search")


def run_preference(
    search: Search,
    index: int,
    preference: np.ndarray,
    agent: PathAgent | None,
    parameter_level: bool = True,
    merge: MergeSpec | None = None,
    path_level_paid: bool = True,
    shares_with: Sequence[int] = (),
) -> dict:
    """Search one preference: the upper-level merge, then the lower-level path search. Returns its record.

    ``path_level_paid`` False: the run's probe preference found no path better than its merge, so this path
    search has ``agent.unpaid_patience`` until one of its own paths pays (:mod:`hm3.search.allocation`).
    ``shares_with``: the preferences searched before this one from the same merge (:func:`merge_groups`); what
    they charged is free here (:func:`hm3.search.budget.shared_keys`). With a conditioned ``agent``, so is what
    its training charged (:func:`training_keys`: the merges it routed over, the paths it screened or scored).

    With ``parameter_level`` False (the architecture-only ablation) there is no merge: slot K of the pool holds
    the base model, whose embeddings and head the paths use. ``merge``: the optimised upper level's choice for
    this preference (:mod:`hm3.search.upper_level`), which replaces the merges of ``weights: preference``.
    """
    recipe = search.recipe
    rewards = search.rewards()
    started = time.perf_counter()
    lam = [float(v) for v in preference]
    evaluations = BudgetedEvaluator(search, HM3, preference_budget(recipe), lam, index)
    evaluations.prepaid = shared_keys(search.log.records, shares_with)
    if agent is not None:  # the conditioned agent's rollout: what its training charged is paid for
        evaluations.prepaid |= training_keys(search.log.records)
    evaluations.on_new = lambda candidate, scores, split: search.progress.candidate(
        None
        if split == "screen"
        else rewards.reward(scores, lam, len(candidate.path or ()) or search.pool.num_layers),
        evaluations.cost(split),
    )
    patience = Patience.from_recipe(
        recipe,
        recipe.agent.iterations if agent is None else 0,
        path_level_paid or agent is not None,
        upper_level_gain(search) if merge is not None else None,
    )
    evaluations.on_charge = lambda candidate, scores, split, cost: patience.see(
        rewards.reward(scores, lam, len(candidate.path or ()) or search.pool.num_layers),
        cost,
        screen=split == "screen",
        point=None if split == "screen" else rewards.normalised(scores),
    )

    level = recipe.parameter_level
    settings = itertools.product(level.density_search or [None], level.scale_search or [1.0])
    best: tuple[float, MergeSpec | None] | None = None
    if merge is not None:  # charged to this preference too, so that the paths get exactly what is left
        evaluations.score(Candidate.of_merge(merge), level="merge")
        best = (0.0, merge)
        settings = iter(())
    for density, scale in settings if parameter_level else []:
        spec = merge_for(search, preference, density, scale)
        scores = evaluations.score(Candidate.of_merge(spec), level="merge")
        reward = rewards.reward(scores, lam, search.pool.num_layers)
        if best is None or reward > best[0]:
            best = (reward, spec)
    spec = best[1] if best is not None else None
    routing, scorer = budgeted_path_scorer(search, spec, evaluations)
    identity = scorer.identity
    rollout: dict | None = None
    updates: int | None = None
    if recipe.architecture_level.enabled:
        result = search_path(
            routing,
            scorer,
            lam,
            recipe,
            seed=recipe.seed + index,
            scale=search.scale,
            agent=agent,
            candidates=evaluations.left,
            spent=lambda: evaluations.used,
            stop=patience.stalled,
            horizon=patience.window,
        )
        candidates = result.candidates
        rollout = {
            "path": result.rollout_path.to_data(),
            "reward": result.rollout_reward,
            "split": result.rollout_split,
        }
        if agent is None and result.agent is not None:
            updates = result.agent.updates
            result.agent.save(search.store.subdirectory(f"{POLICY_DIR}/p{index:03d}"))
    else:
        scores = scorer.score(identity)
        candidates = [(identity, scores, rewards.reward(scores, lam, len(identity)))]
    return {
        "index": index,
        "preference": lam,
        "merge": None if spec is None else spec.model_dump(mode="json"),
        "alignment": recipe.architecture_level.alignment,
        "merged_path": identity.to_data(),
        "candidates": [
            {"path": path.to_data(), "scores": scores, "reward": reward}
            for path, scores, reward in candidates
        ],
        "greedy_rollout": rollout,
        "ppo_updates": updates,
        "budget": evaluations.budget,
        "used": evaluations.used,
        "stopped_early": patience.stalled() and evaluations.used < (evaluations.budget or 0),
        "paid": patience.paid,
        "path_window": patience.window
        if patience.paid or patience.unpaid_window is None
        else patience.unpaid_window,
        "ledger": evaluations.ledger.to_json(),
        "seconds": round(time.perf_counter() - started, 3),
    }


def upper_level_gain(search: Search) -> FrontGain | None:
    """What paying means for a path search after the optimised upper level's first round (its merges in the log;
    :class:`hm3.search.allocation.FrontGain`)."""
    rewards = search.rewards()
    return front_gain(search.log.records, upper_level_budget(search.recipe), rewards.normalised, UPPER_LEVEL)


def training_keys(records: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The keys of the candidates the conditioned agent's training charged at the searched levels — logged by
    :data:`HM3` with no preference index and no label (the upper level's merges carry its label, a preference's
    candidates their index): a preference whose rollout meets one again answers it free, so that every
    candidate is charged once (:attr:`~hm3.search.budget.BudgetedEvaluator.prepaid`)."""
    return charged_keys(
        records,
        lambda r: r.get("method") == HM3 and r.get("preference_index") is None and r.get("label") is None,
    )


def merge_groups(merges: Mapping[int, MergeSpec]) -> dict[int, list[int]]:
    """For each preference, the preferences before it (lower index) whose path searches start from the same
    merge: they search one routing pool, so they run in index order and a later one gets free what an earlier
    one charged (on Ray too: :func:`hm3.search.distributed.run_preferences_on_ray` waits for them)."""
    settings = {index: Candidate.of_merge(spec).content_key() for index, spec in merges.items()}
    return {
        index: [other for other in sorted(settings) if other < index and settings[other] == setting]
        for index, setting in settings.items()
    }


CONDITIONED_MERGES = 8
"""Merges whose routing pools a conditioned agent's training keeps in memory at once (least recently used out:
one that returns is merged again, its paths answered from the log), at most; fewer where memory is short
(:func:`merges_kept`)."""


def merges_kept(search: Search) -> int:
    """How many merges a conditioned agent's training keeps at once: :data:`CONDITIONED_MERGES`, or as many more
    merged models as half the free memory where they live holds (host memory when the pool is offloaded, else
    its device), at least 1 — a 7B group resident on one GPU keeps one, and merges again when the drawn λ's merge
    changes."""
    pool = search.pool
    free = free_bytes("cpu" if pool.device_memory is not None else pool.compute_device)
    if free is None:
        return CONDITIONED_MERGES
    model = PoolSizes.of(pool, search.recipe.dtype).model
    return max(1, min(CONDITIONED_MERGES, 1 + free // (2 * max(model, 1))))


class MergeViews:
    """The pool each λ of a conditioned agent's training routes over: the merge ``choose(λ)`` names — the one
    the run gives λ (:func:`conditioned_merge_choice`) —, its routing pool and a path scorer spending through
    ``evaluations`` (one budget for the whole training), and what the agent sees of it
    (:func:`~hm3.routing.agent.pool_view`: its layer summaries, the best path so far over it as the start).
    Built once per merge; the last ``kept`` are kept (:func:`merges_kept`)."""

    def __init__(
        self,
        search: Search,
        evaluations: BudgetedEvaluator,
        choose: Callable[[np.ndarray], MergeSpec],
        kept: int = CONDITIONED_MERGES,
    ) -> None:
        self.search = search
        self.evaluations = evaluations
        self.choose = choose
        self.kept = kept
        """Views (each holding its merged model) kept at once, least recently used out."""
        self.views: OrderedDict[str, PoolView] = OrderedDict()
        self.merges: list[str] = []
        """The content keys of every merge an episode routed over, in first-use order."""
        self.patience = TrainingPatience.from_recipe(search.recipe, conditioned_budget(search.recipe))
        """Whether the training still raises some λ's best (``agent.patience``; its ``stalled`` ends it)."""

    def watched(self, reward_fn: PoolReward, best_paths: BestPaths) -> PoolReward:
        """``reward_fn`` telling :attr:`patience` what each episode cost and whether it raised its λ's best
        (and its paths logged with that λ: :func:`scored_for`)."""
        reward_fn = scored_for(self.evaluations, reward_fn)

        def reward(path: InferencePath, weights: np.ndarray, *incumbent: InferencePath):
            used, best = self.evaluations.used, best_paths.best(weights)[1]
            paid = reward_fn(path, weights, *incumbent)
            raised = best_paths.best(weights)[1] > best + IMPROVEMENT
            self.patience.see(raised, self.evaluations.used - used)
            return paid

        return reward

    def __call__(self, weights: np.ndarray) -> PoolView:
        spec = self.choose(weights)
        key = Candidate.of_merge(spec).content_key()
        view = self.views.get(key)
        if view is not None:
            self.views.move_to_end(key)
            return view
        search = self.search
        routing, scorer = budgeted_path_scorer(search, spec, self.evaluations)
        identity = InferencePath.identity(routing.merged_index, routing.num_layers)
        self.evaluations.preference = [float(v) for v in weights]  # logged with the λ that chose it
        try:
            scorer.score(identity)  # the merge itself: where its paths start (the upper level's: prepaid)
        except BudgetSpent:  # a merge not scored yet, and no budget left to: stay on the last pool
            if self.views:
                return next(reversed(self.views.values()))
            raise
        while len(self.views) >= self.kept:
            self.views.popitem(last=False)
        best_paths = BestPaths(scorer, search.rewards(), identity)
        view = pool_view(search.recipe.agent, best_paths)
        view = replace(view, reward_fn=self.watched(view.reward_fn, best_paths))
        self.views[key] = view
        if key not in self.merges:
            self.merges.append(key)
        return view


def scored_for(evaluations: BudgetedEvaluator, reward_fn: PoolReward) -> PoolReward:
    """``reward_fn`` logging each path it scores with the λ of the call (a conditioned agent's episodes draw
    their own; logged with one λ for all, the centre, its candidates reached the front, the model cards and
    ``hm3 pareto`` under a λ they were never scored for)."""

    def reward(path: InferencePath, weights: np.ndarray, *incumbent: InferencePath):
        evaluations.preference = [float(v) for v in weights]
        return reward_fn(path, weights, *incumbent)

    return reward


def conditioned_merge_choice(
    search: Search,
    archive: Sequence[tuple[MergeSpec, dict[str, float]]] | None,
    vectors: Sequence[np.ndarray],
) -> Callable[[np.ndarray], MergeSpec]:
    """The merge a conditioned agent's training routes λ over: with the optimised upper level, the scored merge
    its scalarization ranks best for λ (``archive``; what ``hm3 select --rollout`` routes a new λ over); with
    ``weights: preference``, the merge of the run's preference nearest λ (its own merge; a merge per drawn λ
    would cost a merge scoring per episode)."""
    if archive:
        return lambda weights: merge_for_preference(search, archive, weights)
    merges = [merge_for(search, vector) for vector in vectors]
    points = np.asarray(vectors, dtype=np.float64)
    return lambda weights: merges[int(np.argmin(np.linalg.norm(points - np.asarray(weights), axis=1)))]


def conditioned_agent(search: Search, choose: Callable[[np.ndarray], MergeSpec] | None = None) -> PathAgent:
    """The shared preference-conditioned agent: loaded from ``policy/conditioned``, or trained within
    :func:`conditioned_budget` (its candidates are logged like any other, and are eligible for the front) and
    saved there. ``choose``: the merge each λ it trains on routes over (:func:`conditioned_merge_choice`: across
    preferences on their own merges); None (no parameter level): every λ over the centre's merge with weights λ."""
    folder = search.store.directory / POLICY_DIR / CONDITIONED_POLICY
    if PathAgent.saved_in(folder):
        return PathAgent.load(folder, allow_pickle=search.recipe.allow_pickle)
    centre = np.full(len(search.objectives), 1.0 / len(search.objectives))
    evaluations = BudgetedEvaluator(
        search, HM3, conditioned_budget(search.recipe), [float(v) for v in centre]
    )
    evaluations.prepaid = upper_level_keys(search.log.records)  # the merges it routes over, charged there
    kept = search.models.kept_merges
    views = None if choose is None else MergeViews(search, evaluations, choose, merges_kept(search))
    start = choose(centre) if choose is not None else merge_for(search, centre)
    search.models.kept_merges = kept if views is None else views.kept
    if views is not None and views.kept < CONDITIONED_MERGES:
        search.progress.print(
            f"the conditioned agent's training keeps {views.kept} merged model(s) in memory at once (what is "
            "free holds no more): a drawn λ whose merge is not among them is merged again"
        )
    try:
        routing, scorer = budgeted_path_scorer(search, start, evaluations)
        search.progress.start_preference(0, 1, centre, search.recipe.agent.iterations)
        search.progress.print(
            "training the preference-conditioned agent "
            + ("across the preferences' merges" if views is not None else "on the centre merge")
        )
        agent = train_conditioned_agent(
            routing,
            scorer,
            search.recipe,
            seed=search.recipe.seed,
            scale=search.scale,
            spent=lambda: evaluations.used,
            views=views,
            stop=None if views is None else views.patience.stalled,
            horizon=None if views is None else views.patience.window,
            watch=lambda reward_fn: scored_for(evaluations, reward_fn),
        )
    finally:
        search.models.kept_merges = kept
    if views is not None:
        search.store.log(
            f"conditioned agent trained over {len(views.merges)} merges; {views.patience.raised} episodes "
            f"raised their λ's best; {agent.updates} PPO updates"
            + (" (stopped: no longer paying)" if views.patience.stalled() else "")
        )
    staging = search.store.subdirectory(f"{POLICY_DIR}/.{CONDITIONED_POLICY}.tmp")
    agent.save(staging)
    search.store.write_json(
        f"{POLICY_DIR}/.{CONDITIONED_POLICY}.tmp/ledger.json", evaluations.ledger.to_json()
    )
    search.store.write_json(
        f"{POLICY_DIR}/.{CONDITIONED_POLICY}.tmp/{TRAINING_FILE}", {"ppo_updates": agent.updates}
    )
    fsync_tree(staging)  # durable before it is published
    staging.rename(folder)
    return agent


def policy_updates(folder: Path) -> int | None:
    """The PPO updates the conditioned policy saved in ``folder`` made while it trained (its
    :data:`TRAINING_FILE`); None where a run did not record them (an older hm3's)."""
    try:
        return int(json.loads((folder / TRAINING_FILE).read_text())["ppo_updates"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def untrained_policy_note(updates: int | None) -> str | None:
    """One line saying that a conditioned policy of ``updates`` PPO updates is the untrained prior (its training
    stopped before PPO's first update: every rollout is the prior's guess); None for a trained one."""
    if updates != 0:
        return None
    return (
        "the preference-conditioned policy made 0 PPO updates (its training ended before the first one): it is "
        "the untrained prior, and its rollouts are that prior's guesses"
    )
