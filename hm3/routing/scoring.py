"""Scoring inference paths: build the routed model, align it, score it once, and the reward of a score.

:class:`PathScorer` scores the paths of one routing pool, each once (a per-scorer memo). How a *new* path gets
its scores is pluggable: by default the routed model is built and handed to ``scorer``; a search passes
``evaluate``, which answers from the run's log, charges its budget and logs what is new
(:class:`hm3.search.budget.BudgetedEvaluator`) — the path scorer itself knows nothing of logs or budgets.
``screen_evaluate`` (optional, same form) scores a path on the ``screen`` part of the search split: the first
round of successive halving (:func:`hm3.routing.agent.training_reward` decides who goes on to a full scoring).

Reward of a path of length T under preference λ (:class:`Reward`, ``recipe.preferences.scalarization``), on
objectives normalised by the fine-tuned models' ideal and nadir (:class:`hm3.moo.scalarization.ObjectiveScale`):

* ``weighted_sum``: R = Σ_k λ_k f̂_k − β1·T
* ``tchebycheff``: R = −max_k λ_k (1 + ε − f̂_k) − β1·T (the shortfall from the utopia point; the length
  penalty is kept so that both forms prefer the shorter of two equally good paths)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hm3.errors import UserError
from hm3.moo.scalarization import ObjectiveScale, scalarize
from hm3.routing.builder import build_routed_model
from hm3.routing.path import InferencePath
from hm3.routing.pool import RoutingPool

if TYPE_CHECKING:
    import torch

    from hm3.routing.alignment import StatsAligner

Scorer = Callable[[Any], Mapping[str, float]]
PathEvaluation = Callable[[InferencePath, Callable[[], Any]], Mapping[str, float]]
"""``evaluate(path, build) -> scores``: the scores of a path not scored by this scorer yet (``build()`` makes
its model)."""


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


@dataclass
class PathScorer:
    """Scores paths over one routing pool, once each.

    Attributes:
        pool: The routing pool.
        scorer: ``score(model) -> {objective: value}`` (used when ``evaluate`` is None).
        aligner: A fitted-per-path alignment (``stats``) or None (``none``).
        evaluate: How a new path gets its scores (a search's budgeted, logged evaluation); None: build it and
            call ``scorer``.
        screen_evaluate: How a path gets its scores on the ``screen`` documents; None: no screening.
        scored: Every path scored by this scorer, in order, with its scores.
        screened: Every path screened, in order, with its screen scores.
    """

    pool: RoutingPool
    scorer: Scorer | None = None
    aligner: StatsAligner | None = None
    evaluate: PathEvaluation | None = None
    screen_evaluate: PathEvaluation | None = None
    scored: dict[InferencePath, dict[str, float]] = field(default_factory=dict)
    screened: dict[InferencePath, dict[str, float]] = field(default_factory=dict)
    build_seconds: list[float] = field(default_factory=list)
    score_seconds: list[float] = field(default_factory=list)

    @property
    def alignment_mode(self) -> str:
        return "none" if self.aligner is None else "stats"

    @property
    def identity(self) -> InferencePath:
        """The merged model itself (slot K, every layer in order)."""
        return InferencePath.identity(self.pool.merged_index, self.pool.num_layers)

    def build(self, path: InferencePath) -> torch.nn.Module:
        """The routed (and, off the identity path, aligned) model of ``path``."""
        if self.aligner is None or path == self.identity:
            return build_routed_model(self.pool, path)
        return build_routed_model(self.pool, path, alignment=self.aligner.fit(path))

    def score(self, path: InferencePath) -> dict[str, float]:
        """Scores of ``path`` (computed once, then remembered)."""
        known = self.scored.get(path)
        if known is not None:
            return known
        if self.evaluate is not None:
            scores = dict(self.evaluate(path, lambda: self.build(path)))
        else:
            scores = self._score_here(path)
        self.scored[path] = {name: float(value) for name, value in scores.items()}
        return self.scored[path]

    def knows(self, path: InferencePath) -> bool:
        """Whether ``path`` was scored or screened already (its outcome is known)."""
        return path in self.scored or path in self.screened

    @property
    def screens(self) -> bool:
        """Whether new paths are screened first."""
        return self.screen_evaluate is not None

    def screen(self, path: InferencePath) -> dict[str, float]:
        """Scores of ``path`` on the screen documents (computed once, then remembered)."""
        if self.screen_evaluate is None:
            raise ValueError("this PathScorer does not screen")
        known = self.screened.get(path)
        if known is None:
            scores = self.screen_evaluate(path, lambda: self.build(path))
            known = self.screened[path] = {name: float(value) for name, value in scores.items()}
        return known

    def _score_here(self, path: InferencePath) -> dict[str, float]:
        if self.scorer is None:
            raise ValueError("a PathScorer needs a scorer or an evaluate function")
        start = time.perf_counter()
        model = self.build(path)
        built = time.perf_counter()
        scores = {name: float(value) for name, value in self.scorer(model).items()}
        self.build_seconds.append(built - start)
        self.score_seconds.append(time.perf_counter() - built)
        return scores


def random_paths(
    count: int, num_models: int, num_layers: int, max_length: int, seed: int
) -> list[InferencePath]:
    """``count`` paths with uniform lengths 1..T_max and uniform steps (the random-search baseline)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        length = int(rng.integers(1, max_length + 1))
        steps = zip(rng.integers(0, num_models, length), rng.integers(0, num_layers, length), strict=True)
        out.append(InferencePath(tuple(steps)))
    return out
