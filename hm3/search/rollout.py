"""`hm3 select RUN --preference λ --rollout`: a fresh path for a preference the search never saw — no new search.

A run with a preference-conditioned policy (``agent.mode: conditioned``, saved in ``policy/conditioned``) gives
the policy's greedy rollout for λ over the merge λ starts from (the optimised upper level's best for λ, else the
merge with weights λ), editing the best path the run scored over that merge for λ (else the merge itself),
scored on the search split and appended to the run's log like any candidate — one candidate, seconds instead of
a search. A rollout that scores below the path it starts from is reported, and that start is selected (a
policy's guess never replaces a better candidate the run already has). A policy whose training made no PPO
update is its untrained prior: the selection carries a note saying so. The rollout holds the run's lock: it
appends to the log.

Its choice can be written as a model folder (``export``, as ``hm3 export`` does) from the models it loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hm3.errors import UserError
from hm3.front import FrontMember, ParetoFront
from hm3.merge.spec import MergeSpec
from hm3.routing.agent import PathAgent, rollout
from hm3.routing.path import InferencePath
from hm3.routing.pool import RoutingPool
from hm3.routing.scoring import PathScorer
from hm3.routing.summary import layer_summaries
from hm3.search.budget import BudgetedEvaluator
from hm3.search.candidate import SEARCHED_LEVELS, Candidate, member_candidate
from hm3.search.export import check_export_folder, export_candidate
from hm3.search.preference import (
    CONDITIONED_POLICY,
    POLICY_DIR,
    budgeted_path_scorer,
    merge_for,
    policy_updates,
    untrained_policy_note,
)
from hm3.search.progress import SearchProgress
from hm3.search.references import set_scale
from hm3.search.select import Selection, finetuned_search_scores, read_preference
from hm3.search.session import Search, open_search
from hm3.search.upper_level import UPPER_LEVEL, merge_for_preference
from hm3.store import FRONT_FILE, RunStore

SELECT = "select"
"""The method name a rollout's candidate is logged under."""


def roll_out(
    run: str | Path, preference: str, *, export: str | Path | None = None, force: bool = False
) -> Selection:
    """Build, score and log the conditioned policy's path for ``preference`` in ``run`` (and write it to
    ``export``).

    Raises:
        UserError: no run there, a bad preference, a run without a conditioned policy, a bad ``export`` folder
            (checked before anything loads).
    """
    store, recipe = RunStore.resume(run, use="roll out in")  # appends to the run's log
    try:
        lam = read_preference(preference, len(recipe.objectives))
        folder = store.directory / POLICY_DIR / CONDITIONED_POLICY
        if not PathAgent.saved_in(folder):
            raise UserError(
                f"{run}: no preference-conditioned policy to roll out (the run's agent.mode is "
                f"{recipe.agent.mode!r}; --rollout needs a run of agent.mode: conditioned)"
            )
        if export is not None:
            check_export_folder(run, recipe, export, force)
        search = open_search(recipe, store, SearchProgress(enabled=False))
        search.finetuned_scores = finetuned_search_scores(recipe, search.log.records)
        set_scale(search)
        selection = _rolled_out(search, lam, PathAgent.load(folder, allow_pickle=recipe.allow_pickle))
        selection.note = untrained_policy_note(policy_updates(folder))
        if export is not None:
            title = f"hm3 selection for λ = {[round(v, 4) for v in selection.preference]}"
            selection.exported = export_candidate(
                search.models,
                recipe,
                run,
                selection.candidate,
                export,
                force,
                title,
                selection.preference,
                selection.scores,
            )
        return selection
    finally:
        store.close()


def _merge_for(search: Search, lam: np.ndarray) -> MergeSpec:
    """The merge a rollout for λ routes over: the upper level's best for λ, else the merge with weights λ."""
    archive = [
        (Candidate.from_record(r).merge_spec(), dict(r["scores"]))
        for r in search.log.records
        if r.get("label") == UPPER_LEVEL and r.get("split") == "search"
    ]
    if archive:
        return merge_for_preference(search, archive, lam)
    return merge_for(search, lam)


def _incumbent(search: Search, spec: MergeSpec, routing: RoutingPool, lam: list[float]) -> InferencePath:
    """The best path the run scored over ``spec``'s merge for λ (search split; the first of equals), else the
    merge's identity path: where the rollout starts."""
    rewards = search.rewards()
    best: tuple[float, InferencePath] | None = None
    for record in search.log.records:
        if record.get("split") != "search" or record.get("level") not in SEARCHED_LEVELS:
            continue
        candidate = Candidate.from_record(record)
        if candidate.merge_spec() != spec:
            continue
        path = candidate.inference_path(routing)
        reward = rewards.reward(record["scores"], lam, len(path))
        if best is None or reward > best[0]:
            best = (reward, path)
    return InferencePath.identity(routing.merged_index, routing.num_layers) if best is None else best[1]


def _rolled_out(search: Search, lam: np.ndarray, agent: PathAgent) -> Selection:
    weights = [float(v) for v in lam]
    spec = _merge_for(search, lam)
    evaluations = BudgetedEvaluator(search, SELECT, None, weights)
    routing, scorer = budgeted_path_scorer(search, spec, evaluations)
    start = _incumbent(search, spec, routing, weights)
    path = rollout(agent, weights, start, layer_summaries(routing))  # shown the pool it routes over
    rolled = _scored(search, scorer, spec, routing, path, weights)
    search.store.log(f"select: rollout for λ {weights}: {path}, R {rolled.reward:.4f}")
    if path != start:
        begun = _scored(search, scorer, spec, routing, start, weights)  # from the log where the run scored it
        if begun.reward > rolled.reward:
            search.store.log(
                f"select: the rollout is below its start {start} (R {begun.reward:.4f}); selected"
            )
            begun.below_start = (path, rolled.reward)
            return begun
    return rolled


def _scored(
    search: Search,
    scorer: PathScorer,
    spec: MergeSpec,
    routing: RoutingPool,
    path: InferencePath,
    weights: list[float],
) -> Selection:
    """``path`` over ``spec``'s merge scored on the search split (from the log when the run has it) for λ."""
    scores = scorer.score(path)
    candidate = Candidate.routed(spec, path, search.recipe.architecture_level.alignment, routing)
    member = _front_member(search, candidate)  # a start the run already holds: its id and held-out scores too
    return Selection(
        weights,
        candidate,
        {"search": scores} if member is None else dict(member.scores),
        search.rewards().reward(scores, weights, len(path)),
        None if member is None else member.id,
    )


def _front_member(search: Search, candidate: Candidate) -> FrontMember | None:
    """The run's front member that is ``candidate``, if any."""
    front = ParetoFront.from_json(search.store.read_json(FRONT_FILE))
    key = candidate.content_key()
    return next((m for m in front.members if member_candidate(m).content_key() == key), None)
