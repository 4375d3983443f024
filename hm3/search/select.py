"""`hm3 select RUN --preference λ`: the front member best for λ — nothing loaded, nothing written.

The front member the run's own reward ranks best for λ: the recipe's scalarization and length penalty, on the
search-split scores the search saw, normalised by the fine-tuned models' scores in its log (the first of
equals). It reads the run's recipe, front and log and the base model's ``config.json`` (a plain merge's length
is the model's depth): no model, no scorer, no torch, so a preference is served in about a second, and the run
is left as it was (no lock: a search may be running in it).

A fresh path for a preference the search never saw is :mod:`hm3.search.rollout` (``--rollout``); writing the
choice as a model folder is ``hm3 export`` (``--export``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hm3.arch import detect_family
from hm3.checkpoint import read_model_config, resolve_model_folder
from hm3.errors import UserError
from hm3.front import FrontMember, ParetoFront
from hm3.moo.preferences import parse_preference
from hm3.moo.reward import Reward, objective_scale, reward_from_recipe
from hm3.recipe import Recipe
from hm3.routing.path import InferencePath
from hm3.search.candidate import Candidate, member_candidate
from hm3.search.log import CandidateLog
from hm3.store import FRONT_FILE, RunStore


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
    note: str | None = None
    """One line the user should read with the choice (a rollout of an untrained conditioned policy)."""


def read_preference(text: str, objectives: int) -> np.ndarray:
    """λ from ``--preference`` text (UserError naming the option)."""
    try:
        return parse_preference(text, objectives)
    except ValueError as error:
        raise UserError(f"--preference: {error}") from None


def finetuned_search_scores(
    recipe: Recipe, records: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, float]]:
    """The fine-tuned models' search-split scores in a run's log, by model name (read as they are, not looked up
    by key: a run an older hm3 wrote is read as it is)."""
    found: dict[str, dict[str, float]] = {}
    for record in records:
        if record.get("level") == "finetuned" and record.get("split") == "search":
            found.setdefault(str(record.get("label")), dict(record["scores"]))
    names = [model.name for model in recipe.models]
    missing = [name for name in names if name not in found]
    if missing:
        raise UserError(f"the run's log has no search-split scores of {', '.join(missing)}")
    return {name: found[name] for name in names}


def model_depth(recipe: Recipe) -> int:
    """The base model's layers (a plain merge's path length), from its ``config.json`` alone."""
    folder = resolve_model_folder(recipe.base_model)
    config = read_model_config(folder, recipe.base_model.name)
    return detect_family(config, where=f"base model {recipe.base_model.name}").num_layers(config)


def best_member(front: ParetoFront, rewards: Reward, lam: np.ndarray, depth: int) -> Selection:
    """The member of ``front`` with the highest reward for λ (the first of equals)."""
    if not front.members:
        raise UserError("the run's front is empty")
    weights = [float(v) for v in lam]

    def reward(member: FrontMember) -> float:
        length = len(member.path) if member.path is not None else depth
        return rewards.reward(member.scores["search"], weights, length)

    best = max(front.members, key=lambda m: (reward(m), -front.members.index(m)))
    return Selection(weights, member_candidate(best), dict(best.scores), reward(best), best.id)


def select_member(run: str | Path, preference: str) -> Selection:
    """The front member of ``run`` best for ``preference``.

    Raises:
        UserError: no run there, a bad preference, an empty front, a log without the fine-tuned models' scores.
    """
    store, recipe = RunStore.resume(run, lock=False, use="select from")
    try:
        lam = read_preference(preference, len(recipe.objectives))
        front = ParetoFront.from_json(store.read_json(FRONT_FILE))
        recipe = recipe.with_directions(dict(zip(front.objectives, front.higher_is_better, strict=True)))
        scale = objective_scale(recipe, finetuned_search_scores(recipe, CandidateLog(store).records))
        return best_member(front, reward_from_recipe(recipe, scale), lam, model_depth(recipe))
    finally:
        store.close()
