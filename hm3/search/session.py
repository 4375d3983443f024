"""An open search: what it holds (the recipe, the run store, the pool, the scorer, the candidate log, the
objectives' normalisation), how it is opened, and the preferences it searches.

The HM3 search (:mod:`hm3.search.run`), its Ray workers (:mod:`hm3.search.distributed`), the end of a run
(:mod:`hm3.search.finish`), the baselines and a policy's rollout all work on a :class:`Search`; ``hm3 export``
builds a member again from the models alone (:func:`load_candidate_models`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

import hm3.evaluate
from hm3.moo.preferences import preference_vectors
from hm3.moo.reward import Reward, reward_from_recipe
from hm3.moo.scalarization import ObjectiveScale
from hm3.placement import (
    MemoryPlan,
    Placement,
    PoolSizes,
    candidate_length,
    check_frame,
    free_bytes,
    plan_memory,
    resolve_device,
)
from hm3.pool import ModelPool
from hm3.recipe import Recipe
from hm3.search.calibration import calibration_batch
from hm3.search.log import CandidateLog
from hm3.search.models import CandidateModels
from hm3.search.progress import SearchProgress
from hm3.store import RunStore

if TYPE_CHECKING:
    from hm3.evaluate import Evaluator


@dataclass
class Search:
    """Everything one search holds: the recipe, the run store, the models, the scorer, the candidate log."""

    recipe: Recipe
    store: RunStore
    pool: ModelPool
    evaluator: Evaluator
    log: CandidateLog
    models: CandidateModels
    progress: SearchProgress
    ideal: list[float] = field(default_factory=list)
    """z*: the best fine-tuned score per objective on the search split (oriented: higher is better)."""
    nadir: list[float] = field(default_factory=list)
    """The worst fine-tuned score per objective (oriented); with ``ideal``, the objectives' normalisation."""
    finetuned_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    scoring: str = ""
    """What decides a score in this run (:mod:`hm3.run_fingerprint`); part of every candidate key."""
    _documents: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def objectives(self) -> list[str]:
        return list(self.recipe.objective_names)

    @property
    def scale(self) -> ObjectiveScale | None:
        """The objectives' normalisation (None before the fine-tuned models are scored)."""
        if not self.ideal:
            return None
        return ObjectiveScale(tuple(self.ideal), tuple(self.nadir))

    def rewards(self) -> Reward:
        """The recipe's reward on the normalised objectives."""
        return reward_from_recipe(self.recipe, self.scale)

    def documents(self, split: str) -> int:
        """Documents (or images) one full scoring covers on ``split``, all objectives together (the split is
        fixed for the search: counted once)."""
        known = self._documents.get(split)
        if known is None:
            known = self._documents[split] = sum(self.evaluator.document_count(split).values())
        return known


@dataclass
class SearchInputs:
    """What a search loads before it touches its run folder: the objectives, the placed pool, the calibration
    batch. Loading them runs every check that can fail before work starts (no such device, a model that does
    not load or fit, a task that does not load), so a failed start leaves no run folder behind."""

    evaluator: Evaluator
    pool: ModelPool
    calibration: dict[str, Any] | None
    memory: MemoryPlan | None = None
    """Resident or offloaded (:func:`hm3.placement.plan_memory`)."""


def load_inputs(recipe: Recipe) -> SearchInputs:
    """Load and check the objectives and the pool (checked before any model weight is read), then place it:
    resident, or offloaded with a device cache (:func:`hm3.placement.plan_memory`)."""
    placement = Placement(resolve_device(recipe.device), recipe.dtype)  # the quick checks first
    preferences(recipe)  # the preference vectors are drawn here too, so a seed they refuse fails now
    pool, memory = _planned_pool(recipe, placement)
    evaluator = hm3.evaluate.Evaluator.from_recipe(recipe)
    pool.place(placement.device, placement.torch_dtype, memory.device_memory)
    calibration = None
    if needs_calibration(recipe):
        batch = calibration_batch(evaluator, recipe.architecture_level.calibration_samples)
        calibration = {
            name: value.to(placement.device, placement.torch_dtype if value.is_floating_point() else None)
            for name, value in batch.items()
        }
    return SearchInputs(evaluator, pool, calibration, memory)


def load_candidate_models(recipe: Recipe) -> CandidateModels:
    """What building a candidate again needs (``hm3 export``): the placed pool, and the calibration batch where
    ``stats`` alignment fits its maps on one — the objectives (tokenizer, task documents) are loaded only then."""
    if needs_calibration(recipe):
        inputs = load_inputs(recipe)
        return CandidateModels(inputs.pool, recipe, inputs.calibration)
    placement = Placement(resolve_device(recipe.device), recipe.dtype)
    pool, memory = _planned_pool(recipe, placement)
    pool.place(placement.device, placement.torch_dtype, memory.device_memory)
    return CandidateModels(pool, recipe, None)


def needs_calibration(recipe: Recipe) -> bool:
    """Whether candidates of ``recipe`` fit ``stats`` alignment maps on a calibration batch."""
    level = recipe.architecture_level
    return level.enabled and level.alignment == "stats"


def _planned_pool(recipe: Recipe, placement: Placement) -> tuple[ModelPool, MemoryPlan]:
    """The recipe's pool (configs checked, no weight placed yet) and what of it the device keeps."""
    pool = ModelPool.from_recipe(recipe)
    check_frame(recipe, pool.num_layers)
    memory = plan_memory(
        PoolSizes.of(pool, recipe.dtype),
        candidate_length(recipe, pool.num_layers),
        placement,
        recipe.device_memory,
        free_bytes(placement.device),
    )
    return pool, memory


def open_search(
    recipe: Recipe, store: RunStore, progress: SearchProgress, inputs: SearchInputs | None = None
) -> Search:
    """The search of ``recipe`` in ``store``: its inputs (loaded now when not given) and the run's log.

    The search's recipe has every objective's direction set: those the recipe leaves to the task come from the
    loaded tasks (a perplexity is minimised), so that the reward, the normalisation and the front all use the
    direction the scores are reported in. What decides a score is the run's own (``fingerprint.json``)."""
    loaded = inputs if inputs is not None else load_inputs(recipe)
    if loaded.memory is not None and loaded.memory.offload:
        progress.print(loaded.memory.line)
    return Search(
        recipe=recipe.with_directions(loaded.evaluator.higher_is_better),
        store=store,
        pool=loaded.pool,
        evaluator=loaded.evaluator,
        log=CandidateLog(store),
        models=CandidateModels(loaded.pool, recipe, loaded.calibration),
        progress=progress,
        scoring=store.scoring_key(recipe),
    )


def preferences(recipe: Recipe) -> np.ndarray:
    """The preference vectors of the run, in the order they are searched."""
    config = recipe.preferences
    return preference_vectors(
        len(recipe.objectives),
        config.count,
        recipe.seed if config.seed is None else config.seed,
        include_corners=config.include_corners,
        include_centre=config.include_centre,
        centre=[objective.weight for objective in recipe.objectives],
    )
