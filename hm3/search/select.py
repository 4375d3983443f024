"""`hm3 select RUN --preference λ`: serve a preference after the search — no new search.

* **Select** (default): the front member the run's own reward ranks best for λ (the recipe's scalarization
  and length penalty, on the search-split scores the search saw; the first of equals).
* **Roll out** (``--rollout``): a run with a preference-conditioned policy (``agent.mode: conditioned``,
  saved in ``policy/conditioned``) gives a fresh path for a λ the search never saw: the policy's greedy
  rollout for λ over the merge λ starts from (the optimised upper level's best for λ, else the merge with
  weights λ), editing the best path the run scored over that merge for λ (else the merge itself), scored on
  the search split and appended to the run's log like any candidate — one candidate, seconds instead of a
  search. A rollout that scores below the path it starts from is reported, and that start is selected (a
  policy's guess never replaces a better candidate the run already has).

Either can be written as a model folder (``--export DIR``, as ``hm3 export`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hm3.errors import UserError
from hm3.front import ParetoFront
from hm3.merge.spec import MergeSpec
from hm3.moo.preferences import parse_preference
from hm3.routing.agent import PathAgent, rollout
from hm3.routing.path import InferencePath
from hm3.routing.pool import RoutingPool
from hm3.routing.scoring import PathScorer
from hm3.routing.summary import layer_summaries
from hm3.search.budget import BudgetedEvaluator
from hm3.search.candidate import SEARCHED_LEVELS, Candidate
from hm3.search.export import check_export_folder, export_candidate
from hm3.search.finish import member_candidate
from hm3.search.preference import CONDITIONED_POLICY, POLICY_DIR, budgeted_path_scorer, merge_for
from hm3.search.progress import SearchProgress
from hm3.search.references import set_scale
from hm3.search.session import Search, open_search
from hm3.search.upper_level import UPPER_LEVEL, merge_for_preference
from hm3.store import FRONT_FILE, RunStore

SELECT = "select"
"""The method name a rollout's candidate is logged under."""


@dataclass
class Selection:
    """What ``hm3 select`` chose for λ."""

    preference: list[float]
    candidate: Candidate
    scores: dict[str, Any]
    reward: float
    member_id: str | None
    exported: Path | None = None
    below_start: tuple[InferencePath, float] | None = None
    """A rollout that scored below the path it started from: its path and reward (the start is selected)."""


def _preference(text: str, objectives: int) -> np.ndarray:
    try:
        return parse_preference(text, objectives)
    except ValueError as error:
        raise UserError(f"--preference: {error}") from None


def select(
    run: str | Path,
    preference: str,
    *,
    roll_out: bool = False,
    export: str | Path | None = None,
    force: bool = False,
) -> Selection:
    """Choose (or, with ``roll_out``, build and score) the candidate for ``preference`` in ``run``.

    Raises:
        UserError: no run there, a bad preference, ``roll_out`` without a conditioned policy, a bad
            ``export`` folder (checked before anything loads).
    """
    store, recipe = RunStore.resume(
        run, lock=roll_out, use="select from"
    )  # a rollout appends to the run's log
    try:
        lam = _preference(preference, len(recipe.objectives))
        folder = store.directory / POLICY_DIR / CONDITIONED_POLICY
        if roll_out and not PathAgent.saved_in(folder):
            raise UserError(
                f"{run}: no preference-conditioned policy to roll out (the run's agent.mode is "
                f"{recipe.agent.mode!r}; --rollout needs a run of agent.mode: conditioned)"
            )
        front = None if roll_out else ParetoFront.from_json(store.read_json(FRONT_FILE))
        if export is not None:
            check_export_folder(run, recipe, export, force)
        search = open_search(recipe, store, SearchProgress(enabled=False))
        _read_scale(search)
        if roll_out:
            selection = _rolled_out(search, lam, PathAgent.load(folder, allow_pickle=recipe.allow_pickle))
        else:
            assert front is not None
            selection = _best_member(search, front, lam)
        if export is not None:
            title = f"hm3 selection for λ = {[round(v, 4) for v in selection.preference]}"
            selection.exported = export_candidate(
                search, run, selection.candidate, export, force, title, selection.preference, selection.scores
            )
        return selection
    finally:
        store.close()


def _read_scale(search: Search) -> None:
    """The reward's normalisation from the fine-tuned models' search-split scores in the run's log (read, not
    looked up by key: a run an older hm3 wrote is read as it is)."""
    for record in search.log.records:
        if record.get("level") == "finetuned" and record.get("split") == "search":
            search.finetuned_scores.setdefault(str(record.get("label")), dict(record["scores"]))
    missing = [name for name in search.pool.model_names if name not in search.finetuned_scores]
    if missing:
        raise UserError(f"the run's log has no search-split scores of {', '.join(missing)}")
    search.finetuned_scores = {name: search.finetuned_scores[name] for name in search.pool.model_names}
    set_scale(search)


def _best_member(search: Search, front: ParetoFront, lam: np.ndarray) -> Selection:
    if not front.members:
        raise UserError("the run's front is empty")
    rewards = search.rewards()
    weights = [float(v) for v in lam]

    def reward(member) -> float:
        length = len(member.path) if member.path is not None else search.pool.num_layers
        return rewards.reward(member.scores["search"], weights, length)

    best = max(front.members, key=lambda m: (reward(m), -front.members.index(m)))
    return Selection(weights, member_candidate(best), dict(best.scores), reward(best), best.id)


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
    return Selection(
        weights, candidate, {"search": scores}, search.rewards().reward(scores, weights, len(path)), None
    )
