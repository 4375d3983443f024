"""Scoring inference paths: build the routed model, align it, score it once, and the reward of a score.

:class:`PathScorer` scores the paths of one routing pool, each once (a per-scorer memo). How a *new* path gets
its scores is pluggable: by default the routed model is built and handed to ``scorer``; a search passes
``evaluate``, which answers from the run's log, charges its budget and logs what is new
(:class:`hm3.search.budget.BudgetedEvaluator`) — the path scorer itself knows nothing of logs or budgets.
``screen_evaluate`` (optional, same form) scores a path on the ``screen`` part of the search split: the first
round of successive halving (:func:`hm3.routing.agent.training_reward` decides who goes on to a full scoring).

A path's scores become its reward in :class:`hm3.moo.reward.Reward`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

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
