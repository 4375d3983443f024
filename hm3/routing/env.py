"""The inference-path environment: build a path one ``(model, layer)`` at a time, get the reward at the end.

Actions (``Discrete((K+1)·L + 1)``): ``a < (K+1)·L`` appends layer ``a % L`` of model ``a // L``; the last
action stops. The episode ends at stop or when the path reaches T_max layers. Stopping on an empty path
means "keep the merged model as it is" (its identity path): routing is allowed to change nothing.

The incumbent. Each episode edits a path known to be good: the *incumbent* (``start(λ)`` at reset: the best
path scored so far for the episode's λ; without ``start``, the merged model's identity path). The environment
keeps a pointer into it: the incumbent's step at the pointer is the *anchor*, the natural next step
(:meth:`InferencePathEnv.anchor_step`). Appending a step of layer ``l`` moves the pointer past the incumbent's
next step of layer ``l`` at or after it — following the anchor, or replacing it by another model's same layer,
advances by one; a deeper layer skips the steps between (a deletion); a shallower one leaves the pointer
where it was (an insertion or repeat). So a path that deviates at one step rejoins the incumbent at the next,
and an agent that follows its anchors rebuilds the incumbent: the episodes are edits of the best path, the
structure under which random local search improves on a merge (``benchmarks/results/agent_learning.md``).

Observation (a ``Dict``), padded to T_max:

* ``models`` / ``layers``: model index + 1 and layer index + 1 of each step (0 = padding),
* ``summaries``: each chosen layer's weight summary (:mod:`hm3.routing.summary`), zeros for padding,
* ``length``: T / T_max,
* ``preference``: λ (fixed per environment, or drawn from Dirichlet(1, …, 1) at each reset for the
  preference-conditioned agent).

Several pools. A preference-conditioned agent trains across preferences on their own merges: with ``views``
(``λ -> PoolView``) each reset draws λ first and then routes over the pool ``views(λ)`` names — its layer
summaries become the observation's (so the observation describes the pool the path is over), its reward, start
and knowledge of scored paths the episode's.

Reward. R (see :mod:`hm3.moo.reward`) is known only once the path is complete and scored, so the
environment returns the whole R on the final step and 0 before, with ``info["episode_reward"] = R`` and
``info["decisions"]`` (steps taken, stop included). The paper spreads R evenly, R_t = R/T; with γ = 0.99 the
discounted returns of the two differ (terminal-only discounts R by γ^{T−1−t}, which favours short paths more
than the spread does). The agent therefore trains on the paper's form: its rollout buffer
(:class:`hm3.routing.buffer.SpreadRewardRolloutBuffer`) rewrites each finished episode's rewards to R/n over its
n decisions before GAE — exact for episodes that lie within one PPO rollout; an episode that straddles two
rollouts gets R/n on its later part only (its earlier steps were already used, with reward 0 and a
bootstrapped value). The undiscounted return Σ_t R_t = R is the same in both forms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hm3.routing.path import InferencePath
from hm3.routing.summary import SUMMARY_CLIP

RewardFunction = Callable[[InferencePath, np.ndarray], tuple[float, dict[str, float]]]
PoolReward = Callable[..., tuple[float, dict[str, float]]]
"""A pool's reward: the path environment's :data:`RewardFunction`, or the edit environment's
``(path, λ, incumbent) -> (reward, scores)``."""


@dataclass(frozen=True)
class PoolView:
    """What an episode routes over: one pool's layer summaries and how paths over it are paid.

    Attributes:
        summaries: The pool's ``[K+1, L, S]`` layer summaries (:func:`hm3.routing.summary.layer_summaries`).
        reward_fn: The episode's reward (the environment's own signature; None: 0).
        start: ``λ -> incumbent`` (None: the merged model's identity path).
        known: Whether a path over this pool is scored already (the edit environment's mask).
        ranked: ``λ -> paths over this pool scored so far, best first`` (the edit environment's incumbent).
    """

    summaries: np.ndarray
    reward_fn: PoolReward | None = None
    start: Callable[[np.ndarray], InferencePath] | None = None
    known: Callable[[InferencePath], bool] | None = None
    ranked: Callable[[np.ndarray], Sequence[InferencePath]] | None = None


class InferencePathEnv(gym.Env):
    """Build an inference path over a pool of K + 1 models of L layers.

    Args:
        summaries: ``[K+1, L, S]`` weight summaries (:func:`hm3.routing.summary.layer_summaries`).
        max_length: T_max.
        num_objectives: Length of preference vectors.
        reward_fn: ``(path, preference) -> (R, scores)``; None gives R = 0 (greedy rollouts).
        preference: A fixed λ, or None to draw one from Dirichlet(1, …, 1) at each reset.
        start: ``λ -> incumbent`` at each reset (default: the merged model's identity path).
        views: ``λ -> PoolView``: the pool an episode of λ routes over, chosen at each reset after λ is drawn
            (it replaces ``summaries``, ``reward_fn`` and ``start``); None: always the one pool given.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        summaries: np.ndarray,
        max_length: int,
        num_objectives: int,
        reward_fn: RewardFunction | None = None,
        preference: np.ndarray | None = None,
        start: Callable[[np.ndarray], InferencePath] | None = None,
        views: Callable[[np.ndarray], PoolView] | None = None,
    ) -> None:
        self.summaries = np.asarray(summaries, dtype=np.float32)
        self.num_models, self.num_layers, summary_size = self.summaries.shape
        self.max_length = int(max_length)
        self.num_objectives = int(num_objectives)
        self.reward_fn = reward_fn
        self.fixed_preference = None if preference is None else np.asarray(preference, dtype=np.float32)
        self.stop_action = self.num_models * self.num_layers
        self.action_space = spaces.Discrete(self.stop_action + 1)
        t = self.max_length
        self.observation_space = spaces.Dict(
            {
                "models": spaces.Box(0, self.num_models, (t,), np.float32),
                "layers": spaces.Box(0, self.num_layers, (t,), np.float32),
                "summaries": spaces.Box(-SUMMARY_CLIP, SUMMARY_CLIP, (t, summary_size), np.float32),
                "length": spaces.Box(0, 1, (1,), np.float32),
                "preference": spaces.Box(0, 1, (self.num_objectives,), np.float32),
            }
        )
        self.start = start
        self.views = views
        self.view: PoolView | None = None
        """The pool view of the current episode (with ``views``)."""
        self.steps: list[tuple[int, int]] = []
        self.preference = self._uniform()
        self.decisions = 0
        self.incumbent = self.identity()
        self.pointer = 0

    def _uniform(self) -> np.ndarray:
        return np.full(self.num_objectives, 1.0 / self.num_objectives, dtype=np.float32)

    # -- gymnasium API ---------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.steps = []
        self.decisions = 0
        if options and "preference" in options:
            self.preference = np.asarray(options["preference"], dtype=np.float32)
        elif self.fixed_preference is not None:
            self.preference = self.fixed_preference
        else:
            self.preference = self.np_random.dirichlet(np.ones(self.num_objectives)).astype(np.float32)
        if self.views is not None:
            self.use(self.views(self.preference))
        if options and "incumbent" in options:
            self.incumbent = options["incumbent"]
        else:
            self.incumbent = self.identity() if self.start is None else self.start(self.preference)
        self.pointer = 0
        return self.observation(self.steps), {}

    def step(self, action: int):
        action = int(action)
        if not self.action_space.contains(action):
            raise ValueError(f"action {action} outside {self.action_space}")
        self.decisions += 1
        if action != self.stop_action:
            step = self.decode(action)
            self.steps.append(step)
            self.pointer = self.rejoin(step[1])
        done = action == self.stop_action or len(self.steps) >= self.max_length
        if not done:
            return self.observation(self.steps), 0.0, False, False, {}
        path = self.final_path()
        reward, scores = (0.0, {}) if self.reward_fn is None else self.reward_fn(path, self.preference)
        info = {"path": path, "scores": scores, "episode_reward": reward, "decisions": self.decisions}
        return self.observation(self.steps), float(reward), True, False, info

    # -- helpers ---------------------------------------------------------------------------------------------

    def use(self, view: PoolView) -> None:
        """Route over ``view``'s pool from now on (its summaries, reward and start)."""
        summaries = np.asarray(view.summaries, dtype=np.float32)
        if summaries.shape != self.summaries.shape:
            raise ValueError(
                f"a pool view of summaries {summaries.shape}; this environment's are {self.summaries.shape}"
            )
        self.view, self.summaries = view, summaries
        self.reward_fn, self.start = view.reward_fn, view.start

    def identity(self) -> InferencePath:
        """The merged model's identity path."""
        return InferencePath.identity(self.num_models - 1, self.num_layers)

    def anchor_step(self) -> tuple[int, int] | None:
        """The incumbent's step at the pointer (the natural next step); None once the incumbent is rebuilt."""
        if self.pointer < len(self.incumbent):
            return self.incumbent.steps[self.pointer]
        return None

    def rejoin(self, layer: int) -> int:
        """The pointer after appending a step of ``layer``: just past the incumbent's first step of that layer
        at or after the pointer; where there is none (a shallower layer: an insertion), unchanged."""
        steps = self.incumbent.steps
        for position in range(self.pointer, len(steps)):
            if steps[position][1] == layer:
                return position + 1
        return self.pointer

    def decode(self, action: int) -> tuple[int, int]:
        """The ``(model, layer)`` of a non-stop action."""
        return divmod(int(action), self.num_layers)

    def encode(self, model: int, layer: int) -> int:
        """The action that appends ``(model, layer)``."""
        return model * self.num_layers + layer

    def final_path(self) -> InferencePath:
        """The path built so far; an empty one means the merged model's identity path."""
        if not self.steps:
            return self.identity()
        return InferencePath(tuple(self.steps))

    def observation(self, steps: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        """The padded observation of a trajectory ``steps`` under the current preference."""
        t = self.max_length
        models = np.zeros(t, np.float32)
        layers = np.zeros(t, np.float32)
        summaries = np.zeros((t, self.summaries.shape[2]), np.float32)
        for position, (m, layer) in enumerate(steps[:t]):
            models[position] = m + 1
            layers[position] = layer + 1
            summaries[position] = self.summaries[m, layer]
        return {
            "models": models,
            "layers": layers,
            "summaries": summaries,
            "length": np.array([len(steps) / t], np.float32),
            "preference": self.preference.astype(np.float32),
        }

    def peek(self, action: int) -> dict[str, np.ndarray]:
        """The observation after ``action`` (a layer action), without taking it: s ⊕ a."""
        steps = list(self.steps)
        if int(action) != self.stop_action and len(steps) < self.max_length:
            steps.append(self.decode(action))
        return self.observation(steps)
