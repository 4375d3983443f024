"""The reward of a candidate: its scores and its path's length under a preference λ.

Reward of a path of length T under preference λ (:class:`Reward`, ``recipe.preferences.scalarization``), on
objectives normalised by the fine-tuned models' ideal and nadir (:class:`hm3.moo.scalarization.ObjectiveScale`):

* ``weighted_sum``: R = Σ_k λ_k f̂_k − β1·T
* ``tchebycheff``: R = −max_k λ_k (1 + ε − f̂_k) − β1·T (the shortfall from the utopia point; the length
  penalty is kept so that both forms prefer the shorter of two equally good paths)

A plain merge has the model's depth as its length. Only numbers here (no model, no torch): ``hm3 select`` ranks
a run's front with it without loading anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hm3.errors import UserError
from hm3.moo.scalarization import ObjectiveScale, oriented, scalarize
from hm3.recipe import Recipe


@dataclass(frozen=True)
class Reward:
    """How a score vector and a path length become a reward.

    Attributes:
        objectives: Objective names, the order of preference vectors.
        scalarization: ``weighted_sum`` or ``tchebycheff``.
        length_penalty: β1, per layer, on the normalised scale.
        scale: The fine-tuned models' ideal and nadir (oriented); None only outside a search (scores are then
            used as they come, and ``tchebycheff`` needs ``scale``).
        higher_is_better: Direction of each objective's metric; lower-is-better scores are negated.
    """

    objectives: tuple[str, ...]
    scalarization: str = "weighted_sum"
    length_penalty: float = 0.0
    scale: ObjectiveScale | None = None
    higher_is_better: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        if self.scalarization == "tchebycheff" and self.scale is None:
            raise UserError(
                "the tchebycheff scalarization needs the ideal point z* (the best fine-tuned scores)"
            )

    def oriented(self, scores: Mapping[str, float]) -> list[float]:
        """The scores in objective order, each turned so that higher is better."""
        missing = [name for name in self.objectives if name not in scores]
        if missing:
            raise UserError(f"the scorer returned no score for objective(s) {missing}")
        directions = self.higher_is_better or (True,) * len(self.objectives)
        return [
            float(scores[n]) if up else -float(scores[n])
            for n, up in zip(self.objectives, directions, strict=True)
        ]

    def normalised(self, scores: Mapping[str, float]) -> np.ndarray:
        """The oriented scores on the fine-tuned models' scale (as they come without a scale)."""
        values = np.asarray(self.oriented(scores), dtype=np.float64)
        return values if self.scale is None else self.scale.normalise(values)

    def utility(self, scores: Mapping[str, float], preference: Sequence[float]) -> float:
        """The scalarized normalised scores, without the length penalty."""
        ideal = None if self.scale is None else np.ones(len(self.objectives))
        return scalarize(self.normalised(scores), preference, self.scalarization, ideal)

    def reward(self, scores: Mapping[str, float], preference: Sequence[float], length: int) -> float:
        """R for ``scores`` of a path of ``length`` layers under ``preference``."""
        return self.utility(scores, preference) - self.length_penalty * length


def objective_directions(recipe: Recipe) -> tuple[bool, ...]:
    """Each objective's direction, in recipe order. A recipe may leave one to its task; a search's recipe has
    them resolved (:meth:`hm3.recipe.Recipe.with_directions`), and a direction left open here is a bug, not
    "higher"."""
    unresolved = [o.name for o in recipe.objectives if o.higher_is_better is None]
    if unresolved:
        raise ValueError(f"the direction of objective(s) {unresolved} is the task's and was not resolved")
    return tuple(bool(o.higher_is_better) for o in recipe.objectives)


def reward_from_recipe(recipe: Recipe, scale: ObjectiveScale | None = None) -> Reward:
    """The reward of a recipe (objective order and directions, scalarization, β1) on ``scale`` — the
    fine-tuned models' ideal and nadir, which a search always has (:func:`hm3.search.references.set_scale`)."""
    return Reward(
        objectives=tuple(recipe.objective_names),
        scalarization=recipe.preferences.scalarization,
        length_penalty=recipe.architecture_level.length_penalty,
        scale=scale,
        higher_is_better=objective_directions(recipe),
    )


def objective_scale(recipe: Recipe, finetuned: Mapping[str, Mapping[str, float]]) -> ObjectiveScale:
    """The objectives' normalisation: the ideal point z* and the nadir of the fine-tuned models' search-split
    scores (``finetuned``: model name -> scores), oriented so that higher is better."""
    directions = objective_directions(recipe)
    points = [
        [oriented(scores[name], up) for name, up in zip(recipe.objective_names, directions, strict=True)]
        for scores in finetuned.values()
    ]
    return ObjectiveScale.from_points(points)
