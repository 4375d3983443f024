"""One preference λ of the HM3 search: the upper-level merge, then the lower-level path search over it.

:func:`run_preference` is what the sequential search (:mod:`hm3.search.run`) and each Ray worker
(:mod:`hm3.search.distributed`) call for a preference, with the same per-preference seed; every candidate it
scores is appended to the run's log as it is scored. :func:`conditioned_agent` is the one preference-conditioned
agent of ``agent.mode: conditioned``.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

import numpy as np

from hm3.routing.path import InferencePath
from hm3.search.session import Search

if TYPE_CHECKING:
    from hm3.merge.spec import MergeSpec
    from hm3.routing.agent import PathAgent

POLICY_DIR = "policy"
CONDITIONED_POLICY = "conditioned"


def merge_for(
    search: Search, preference: np.ndarray, density: float | None = None, scale: float = 1.0
) -> MergeSpec:
    """The parameter-level merge of preference λ (weights mapped from objectives to models)."""
    from hm3.merge.spec import MergeSpec

    recipe = search.recipe
    return MergeSpec.from_recipe(
        recipe.parameter_level,
        recipe.model_weights(list(preference)),
        recipe.seed,
        density=density,
        scale=scale,
    )


def logged_scorer(search: Search, spec: MergeSpec | None, preference, index: int | None):
    """The routing pool of ``spec``'s merge and a path scorer over it that answers from the run's log and
    appends every new candidate to it (and to the live display) as it is scored."""
    recipe = search.recipe
    rewards = search.rewards()
    lam = [float(v) for v in preference]
    merge = None if spec is None else spec.model_dump(mode="json")

    def on_candidate(path: InferencePath, scores: dict[str, float]) -> None:
        search.log.record(
            scorer.key_of(path),
            scores,
            split="search",
            kind="path",
            preference=index,
            merge=merge,
            path=path.to_data(),
            alignment=recipe.architecture_level.alignment,
        )
        search.progress.candidate(rewards.reward(scores, lam, len(path)))

    routing = search.models.routing_pool(spec)
    scorer = search.models.path_scorer(
        routing,
        search.score_search,
        on_candidate=on_candidate,
        cache=search.log,
        cache_spec={"merge": merge, "scoring": search.scoring},
    )
    return routing, scorer


def run_preference(
    search: Search, index: int, preference: np.ndarray, agent: PathAgent | None, parameter_level: bool = True
) -> dict:
    """Search one preference: the upper-level merge, then the lower-level path search. Returns its record.

    With ``parameter_level`` False (the architecture-only ablation) there is no merge: slot K of the pool holds
    the base model, whose embeddings and head the paths use.
    """
    from hm3.routing.agent import search_path

    recipe = search.recipe
    rewards = search.rewards()
    started = time.perf_counter()
    lam = [float(v) for v in preference]

    level = recipe.parameter_level
    settings = itertools.product(level.density_search or [None], level.scale_search or [1.0])
    best: tuple[float, MergeSpec | None] | None = None
    for density, scale in settings if parameter_level else []:
        spec = merge_for(search, preference, density, scale)
        routing, scorer = logged_scorer(search, spec, lam, index)
        identity = InferencePath.identity(routing.merged_index, routing.num_layers)
        reward = rewards.reward(scorer.score(identity), lam, len(identity))
        if best is None or reward > best[0]:
            best = (reward, spec)
    spec = best[1] if best is not None else None
    routing, scorer = logged_scorer(search, spec, lam, index)
    identity = InferencePath.identity(routing.merged_index, routing.num_layers)
    if recipe.architecture_level.enabled:
        result = search_path(
            routing, scorer, lam, recipe, seed=recipe.seed + index, ideal=search.ideal, agent=agent
        )
        candidates = result.candidates
        if agent is None and result.agent is not None:
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
        "seconds": round(time.perf_counter() - started, 3),
    }


def conditioned_agent(search: Search, vectors: np.ndarray) -> PathAgent:
    """The shared preference-conditioned agent: loaded from ``policy/conditioned``, or trained on the centre
    preference's merge (its candidates are logged like any other) and saved there."""
    from hm3.folder_swap import fsync_tree
    from hm3.routing.agent import PathAgent, train_conditioned_agent

    folder = search.store.directory / POLICY_DIR / CONDITIONED_POLICY
    if PathAgent.saved_in(folder):
        return PathAgent.load(folder, allow_pickle=search.recipe.allow_pickle)
    centre = np.full(len(search.objectives), 1.0 / len(search.objectives))
    spec = merge_for(search, centre)
    routing, scorer = logged_scorer(search, spec, centre, None)
    search.progress.start_preference(0, 1, centre, search.recipe.agent.iterations)
    search.progress.print("training the preference-conditioned agent on the centre merge")
    agent = train_conditioned_agent(
        routing, scorer, search.recipe, seed=search.recipe.seed, ideal=search.ideal
    )
    staging = search.store.subdirectory(f"{POLICY_DIR}/.{CONDITIONED_POLICY}.tmp")
    agent.save(staging)
    fsync_tree(staging)  # durable before it is published
    staging.rename(folder)
    return agent
