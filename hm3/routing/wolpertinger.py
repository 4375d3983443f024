"""Wolpertinger discretization: a continuous proto-action becomes one of the (K+1)·L discrete layer actions.

**Action-embedding space.** Layer ``l`` of model ``m`` sits at ``e(m, l) = (onehot(m), l)``: the layers of one
model lie on a line one unit apart, the same depth of another model is √2 away.

**Proto-action, relative to the natural continuation.** The actor (SB3's Gaussian policy, initial std
:data:`INITIAL_STD`) outputs a Box vector ``(Δ, s)``. ``Δ`` is an offset from the *anchor* — the embedding of the
step that continues the path unchanged: the next layer of the last step's model (for an empty path, layer 0
of the merged model); the proto-action is ``anchor + Δ``. So the untrained agent (Δ ≈ 0) walks along the
merged model or a fine-tuned one, with random detours to other models' layers and skips or repeats, and the
identity paths are what it has to improve on; any path stays reachable (Δ can be large). ``s`` is the stop
score: the wrapper stops when ``s > τ``, or — when the last step is a model's final layer, where stopping *is*
the natural continuation — when ``s > −τ``, with ``τ = INITIAL_STD · Φ⁻¹(1 − 1/L)``: the untrained agent
stops with probability 1/L mid-model and 1 − 1/L at a model's end.

Then (Dulac-Arnold et al.'s Wolpertinger step) the wrapper takes the M' layer actions nearest the proto-action
(Euclidean, in the embedding space) and, with probability 1 − ε, picks the one the critic ranks highest, else
one of the M' uniformly.

**The critic's estimate of a candidate.** PPO's critic is V(s), not Q(s, a). The transition is deterministic
(s ⊕ a appends (m, l) to the path) and every layer action of a step earns the same immediate reward (the
episode's R/n, the same whichever layer is appended), so Q(s, a) = r + γ·V(s ⊕ a) ranks candidates exactly
as V(s ⊕ a) does: the wrapper evaluates V on the M' successor observations (``critic``, set by the agent to
its value network). The agent starts its value head at zero, so the untrained critic ties every candidate
and the nearest one (the proto-action's own discretization) is taken until the critic has learnt something.
Stopping is not ranked by the critic: the value of a terminal state is not learnt by PPO;
the stop decision is the actor's own, through the stop score, trained by the policy gradient.

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

INITIAL_STD = 0.5
"""Initial standard deviation of the actor's Gaussian (SB3 ``log_std_init = log(INITIAL_STD)``)."""

MODEL_BOUND = 2.0
STOP_BOUND = 3.0


def embed(model: int, layer: float, num_models: int) -> np.ndarray:
    """``e(m, l)``: one-hot model coordinates, then the layer index."""
    out = np.zeros(num_models + 1, np.float32)
    out[model] = 1.0
    out[num_models] = layer
    return out


def action_embeddings(num_models: int, num_layers: int) -> np.ndarray:
    """``[(K+1)·L, K+2]`` embedding of every layer action, in action-index order."""
    return np.stack([embed(m, layer, num_models) for m in range(num_models) for layer in range(num_layers)])


class WolpertingerWrapper(gym.Wrapper):
    """Exposes a Box proto-action space over an :class:`InferencePathEnv`.

    Args:
        env: The discrete path environment.
        neighbours: M', the nearest discrete actions ranked by the critic.
        epsilon: Probability of a uniform pick among the M' instead of the critic's choice.
        stop_threshold: τ of the stop rule (default ``INITIAL_STD · Φ⁻¹(1 − 1/L)``).
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
            stop_threshold = INITIAL_STD * NormalDist().inv_cdf(1 - 1 / max(env.num_layers, 2))
        self.stop_threshold = float(stop_threshold)
        self.critic = critic
        k1, layers = env.num_models, env.num_layers
        high = np.array([MODEL_BOUND] * k1 + [float(layers), STOP_BOUND], np.float32)
        self.action_space = spaces.Box(-high, high, dtype=np.float32)

    def anchor(self) -> tuple[np.ndarray, bool]:
        """The embedding of the natural continuation, and whether the last step is a model's final layer."""
        steps = self.path_env.steps
        if not steps:
            return embed(self.path_env.num_models - 1, 0, self.path_env.num_models), False
        model, layer = steps[-1]
        return embed(model, layer + 1, self.path_env.num_models), layer == self.path_env.num_layers - 1

    def candidates(self, point: np.ndarray) -> np.ndarray:
        """The M' layer actions nearest ``point`` in the embedding space, nearest first."""
        distances = np.linalg.norm(self.embeddings - np.asarray(point, np.float32), axis=1)
        nearest = np.argpartition(distances, self.neighbours - 1)[: self.neighbours]
        return nearest[np.argsort(distances[nearest], kind="stable")]

    def discrete_action(self, proto: np.ndarray, greedy: bool = False) -> int:
        """The discrete action for the actor's output ``(Δ, s)`` (``greedy``: no ε exploration)."""
        proto = np.asarray(proto, np.float32)
        anchor, at_end = self.anchor()
        if proto[-1] > (-self.stop_threshold if at_end else self.stop_threshold):
            return self.path_env.stop_action
        options = self.candidates(anchor + proto[:-1])
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
