"""Wolpertinger discretization: a continuous proto-action becomes one of the (K+1)·L discrete layer actions.

The actor (SB3's Gaussian policy) acts in a Box: the first ``K+2`` coordinates are a point in the
**action-embedding space**, where layer ``l`` of model ``m`` sits at ``e(m, l) = (onehot(m), l / (L−1))`` —
layers of one model lie on a line, neighbouring layers are close, the same depth of another model is √2 away —
and the last coordinate is the **stop score**. The wrapper then

1. stops if the stop score exceeds ``stop_threshold`` — Φ⁻¹(1 − 1/L) by default, so that the untrained
   actor (mean 0, std 1) stops with probability 1/L per step and its first paths are about L layers long;
2. otherwise takes the M' layer actions nearest the proto-action (Euclidean, in the embedding space);
3. with probability 1 − ε picks the one the critic ranks highest, else one of the M' uniformly.

**The critic's estimate of a candidate.** PPO's critic is V(s), not Q(s, a). The transition is deterministic
(s ⊕ a appends (m, l) to the path) and every layer action of a step earns the same immediate reward (the
episode's R/n, the same whichever layer is appended), so Q(s, a) = r + γ·V(s ⊕ a) ranks candidates exactly
as V(s ⊕ a) does: the wrapper evaluates V on the M' successor observations (``critic``, set by the agent to
its value network). Stopping is not ranked by the critic: the value of a terminal state is not learnt by PPO;
the stop decision is the actor's own, through the stop score, and is trained by the policy gradient.

PPO stores and trains on the proto-action (its log-probability under the Gaussian); the mapping to a
discrete action is part of the environment from PPO's point of view.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import NormalDist

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hm3.routing.env import InferencePathEnv

Critic = Callable[[dict[str, np.ndarray]], np.ndarray]
"""Batched observations (each key stacked along axis 0) -> value estimates, one per row."""

PROTO_BOUND = 3.0


def action_embeddings(num_models: int, num_layers: int) -> np.ndarray:
    """``[(K+1)·L, K+2]`` embedding of every layer action, in action-index order."""
    out = np.zeros((num_models * num_layers, num_models + 1), np.float32)
    for m in range(num_models):
        for layer in range(num_layers):
            row = m * num_layers + layer
            out[row, m] = 1.0
            out[row, num_models] = layer / max(num_layers - 1, 1)
    return out


class WolpertingerWrapper(gym.Wrapper):
    """Exposes a Box proto-action space over an :class:`InferencePathEnv`.

    Args:
        env: The discrete path environment.
        neighbours: M', the nearest discrete actions ranked by the critic.
        epsilon: Probability of a uniform pick among the M' instead of the critic's choice.
        stop_threshold: Stop when the proto-action's last coordinate exceeds it (default Φ⁻¹(1 − 1/L)).
        critic: Value estimates of batched observations; None ranks by distance (nearest first).
    """

    def __init__(
        self,
        env: InferencePathEnv,
        neighbours: int = 8,
        epsilon: float = 0.1,
        stop_threshold: float | None = None,
        critic: Critic | None = None,
    ) -> None:
        super().__init__(env)
        self.path_env = env
        self.embeddings = action_embeddings(env.num_models, env.num_layers)
        self.neighbours = max(1, min(int(neighbours), len(self.embeddings)))
        self.epsilon = float(epsilon)
        if stop_threshold is None:
            stop_threshold = NormalDist().inv_cdf(1 - 1 / max(env.num_layers, 2))
        self.stop_threshold = float(stop_threshold)
        self.critic = critic
        dim = self.embeddings.shape[1] + 1
        self.action_space = spaces.Box(-PROTO_BOUND, PROTO_BOUND, (dim,), np.float32)

    def candidates(self, proto: np.ndarray) -> np.ndarray:
        """The M' layer actions nearest ``proto``'s embedding part, nearest first."""
        distances = np.linalg.norm(
            self.embeddings - np.asarray(proto, np.float32)[: self.embeddings.shape[1]], axis=1
        )
        nearest = np.argpartition(distances, self.neighbours - 1)[: self.neighbours]
        return nearest[np.argsort(distances[nearest], kind="stable")]

    def discrete_action(self, proto: np.ndarray, greedy: bool = False) -> int:
        """The discrete action for a proto-action (``greedy``: no ε exploration)."""
        proto = np.asarray(proto, np.float32)
        if proto[-1] > self.stop_threshold:
            return self.path_env.stop_action
        options = self.candidates(proto)
        if not greedy and self.np_random.random() < self.epsilon:
            return int(options[self.np_random.integers(len(options))])
        if self.critic is None or len(options) == 1:
            return int(options[0])
        successors = [self.path_env.peek(int(a)) for a in options]
        batch = {key: np.stack([obs[key] for obs in successors]) for key in successors[0]}
        values = np.asarray(self.critic(batch)).reshape(-1)
        return int(options[int(np.argmax(values))])

    def step(self, action):
        discrete = self.discrete_action(action)
        obs, reward, terminated, truncated, info = self.env.step(discrete)
        info = {**info, "discrete_action": discrete}
        return obs, reward, terminated, truncated, info
