"""Scoring inference paths: build the routed model, align it, score it, cache the scores, compute the reward.

The scorer is any callable ``score(model) -> dict[str, float]`` (one higher-is-better value per objective;
:meth:`hm3.evaluate.Evaluator.score` with ``split="search"`` fits). Scores are cached per path in memory and,
when a :class:`hm3.evaluate.cache.ScoreCache` is given, on disk under
``candidate_key({**cache_spec, "path": ..., "alignment": ..., "split": "search", "objectives": ...})`` —
``cache_spec`` carries the rest of the candidate (the merge spec), so a resumed search never re-scores.

Reward of a path of length T under preference λ (``recipe.preferences.scalarization``):

* ``weighted_sum``: R = Σ_k λ_k f_k − β1·T
* ``tchebycheff``: R = −max_k λ_k |f_k − z*_k| − β1·T (z* the ideal point; the length penalty is kept so
  that both forms prefer the shorter of two equally good paths)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hm3.errors import UserError
from hm3.routing.path import InferencePath
from hm3.routing.pool import RoutingPool

if TYPE_CHECKING:
    import torch

    from hm3.routing.alignment import StatsAligner

Scorer = Callable[[Any], Mapping[str, float]]
CandidateCallback = Callable[[InferencePath, dict[str, float]], None]


@dataclass(frozen=True)
class RewardSpec:
    """How a score vector and a path length become a reward.

    Attributes:
        objectives: Objective names, the order of preference vectors.
        scalarization: ``weighted_sum`` or ``tchebycheff``.
        length_penalty: β1, per layer.
        ideal: z*, needed by ``tchebycheff`` (oriented: higher is better).
        higher_is_better: Direction of each objective's metric; lower-is-better scores are negated.
    """

    objectives: tuple[str, ...]
    scalarization: str = "weighted_sum"
    length_penalty: float = 0.0
    ideal: tuple[float, ...] | None = None
    higher_is_better: tuple[bool, ...] | None = None

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

    def reward(self, scores: Mapping[str, float], preference: Sequence[float], length: int) -> float:
        """R for ``scores`` of a path of ``length`` layers under ``preference``."""
        from hm3.moo.scalarization import scalarize

        return (
            scalarize(self.oriented(scores), preference, self.scalarization, self.ideal)
            - self.length_penalty * length
        )


@dataclass
class PathScorer:
    """Scores paths over one routing pool, once each.

    Attributes:
        pool: The routing pool.
        scorer: ``score(model) -> {objective: value}``.
        aligner: A fitted-per-path alignment (``stats``) or None (``none``).
        on_candidate: Called with ``(path, scores)`` the first time a path is scored.
        cache: Optional persistent :class:`~hm3.evaluate.cache.ScoreCache`.
        cache_spec: The rest of the candidate spec (merge method and weights) for the cache key.
        objectives: Objective names (part of the cache key).
    """

    pool: RoutingPool
    scorer: Scorer
    aligner: StatsAligner | None = None
    on_candidate: CandidateCallback | None = None
    cache: Any = None
    cache_spec: dict[str, Any] = field(default_factory=dict)
    objectives: tuple[str, ...] = ()
    scored: dict[InferencePath, dict[str, float]] = field(default_factory=dict)
    build_seconds: list[float] = field(default_factory=list)
    score_seconds: list[float] = field(default_factory=list)

    @property
    def alignment_mode(self) -> str:
        return "none" if self.aligner is None else "stats"

    def build(self, path: InferencePath) -> torch.nn.Module:
        """The routed (and aligned) model of ``path``."""
        from hm3.routing.builder import build_routed_model

        alignment = self.aligner.fit(path) if self.aligner is not None else None
        return build_routed_model(self.pool, path, alignment=alignment)

    def key_of(self, path: InferencePath) -> str:
        """The cache key of ``path``'s search-split scores (merge spec, path, alignment, split, objectives)."""
        from hm3.evaluate.cache import candidate_key

        return candidate_key(
            {
                **self.cache_spec,
                "path": path.to_data(),
                "alignment": self.alignment_mode,
                "split": "search",
                "objectives": list(self.objectives),
            }
        )

    def score(self, path: InferencePath) -> dict[str, float]:
        """Scores of ``path`` (computed once, then cached)."""
        import time

        known = self.scored.get(path)
        if known is not None:
            return known
        key = None
        if self.cache is not None:
            key = self.key_of(path)
            cached = self.cache.get(key)
            if cached is not None:
                self.scored[path] = dict(cached)
                return self.scored[path]
        start = time.perf_counter()
        model = self.build(path)
        built = time.perf_counter()
        scores = {name: float(value) for name, value in self.scorer(model).items()}
        self.build_seconds.append(built - start)
        self.score_seconds.append(time.perf_counter() - built)
        if key is not None:
            self.cache.put(key, scores)
        self.scored[path] = scores
        if self.on_candidate is not None:
            self.on_candidate(path, scores)
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
