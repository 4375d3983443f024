"""Wolpertinger discretization: a continuous proto-action becomes one of the (K+1)·L discrete layer actions.

**Action-embedding space.** Layer ``l`` of model ``m`` sits at ``e(m, l) = (onehot(m), l)``: the layers of one
model lie on a line one unit apart, the same depth of another model is √2 away.

**Proto-action, relative to the natural continuation.** The actor (SB3's Gaussian policy, initial std
:func:`exploration_std`) outputs a Box vector ``(Δ, s)``. ``Δ`` is an offset from the *anchor* — the embedding of the
step that continues the path unchanged: the incumbent's step at the environment's pointer
(:meth:`~hm3.routing.env.InferencePathEnv.anchor_step`; the incumbent is the best path scored so far, at first
the merged model's identity path); the proto-action is ``anchor + Δ``. So the untrained agent (Δ ≈ 0) rebuilds
the incumbent with random single-step detours — another model's layer, a skipped or repeated layer — after
each of which the path rejoins the incumbent: it samples edits of the best path, and any path stays reachable
(Δ can be large). ``s`` is the stop score: the wrapper stops when ``s > τ``, or — once the incumbent is rebuilt,
where stopping *is* the natural continuation — when ``s > −τ``, with ``τ = σ · Φ⁻¹(1 − 1/L²)``.

**How much the untrained agent explores.** The initial std σ is the one at which the proto-action's nearest
layer action differs from the anchor with probability 1/L (:func:`exploration_std`), and τ makes an early stop,
or a layer appended past the incumbent's end, a 1/L² event per step: the untrained agent makes about one edit
per path, as random local search does. (A fixed σ = 0.5 deviated at 44% of the steps of a 12-layer pool: 5
edits per path, and 65% of the paths cut short by the 1/L stop rule; none was better than the merge.)

Agents saved by hm3 before the incumbent (``anchor: last_step`` in their settings) anchor at the next layer of
the last step's model instead (for an empty path, layer 0 of the merged model), and stop naturally at a model's
final layer; they are reloaded with that rule, so their rollouts are what they were.

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

import functools
from collections.abc import Callable
from statistics import NormalDist

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hm3.routing.env import InferencePathEnv

Critic = Callable[[dict[str, np.ndarray]], np.ndarray]
"""Batched observations (each key stacked along axis 0) -> value estimates, one per row."""

EDITS_PER_PATH = 1.0
"""Expected edits of the incumbent per path by the untrained agent (sets σ and τ)."""
_SAMPLES = np.random.default_rng(0).standard_normal((4096, 64)).astype(np.float32)
"""Fixed draws for :func:`exploration_std` (deterministic: the same σ for the same pool shape everywhere)."""

ANCHORS = ("incumbent", "last_step")
"""Anchor rules: the incumbent's next step (the agent's), or the last step's next layer (agents saved before)."""

MODEL_BOUND = 2.0
STOP_BOUND = 3.0


def embed(model: int, layer: float, num_models: int) -> np.ndarray:
    """``e(m, l)``: one-hot model coordinates, then the layer index."""
    out = np.zeros(num_models + 1, np.float32)
    out[model] = 1.0
    out[num_models] = layer
    return out


def deviation_probability(std: float, num_models: int, num_layers: int) -> float:
    """How often ``anchor + N(0, std²)`` is nearer another layer action than the anchor's own (a middle layer
    of the last model), over :data:`_SAMPLES`."""
    embeddings = action_embeddings(num_models, num_layers)
    anchor_index = (num_models - 1) * num_layers + num_layers // 2
    noise = _SAMPLES[:, : num_models + 1] * std
    points = embeddings[anchor_index] + noise
    distances = ((points[:, None, :] - embeddings[None, :, :]) ** 2).sum(axis=2)
    return float((distances.argmin(axis=1) != anchor_index).mean())


@functools.lru_cache(maxsize=64)
def exploration_std(num_models: int, num_layers: int) -> float:
    """σ at which the untrained agent leaves the anchor with probability ``EDITS_PER_PATH / L`` per step
    (bisection on :func:`deviation_probability`, which grows with σ; computed once per pool shape: every
    wrapper — each rollout, each reloaded agent — asks for it)."""
    if num_models * num_layers < 2:
        return 0.5
    target = min(0.5, EDITS_PER_PATH / max(num_layers, 2))
    low, high = 0.01, 2.0
    for _ in range(30):
        middle = (low + high) / 2
        if deviation_probability(middle, num_models, num_layers) < target:
            low = middle
        else:
            high = middle
    return round((low + high) / 2, 6)


def stop_threshold_for(std: float, num_layers: int) -> float:
    """τ: an early stop (or a step past the incumbent's end) has probability ``(EDITS_PER_PATH / L)²`` per step."""
    rate = min(0.5, EDITS_PER_PATH / max(num_layers, 2)) ** 2
    return std * NormalDist().inv_cdf(1 - rate)


def action_embeddings(num_models: int, num_layers: int) -> np.ndarray:
    """``[(K+1)·L, K+2]`` embedding of every layer action, in action-index order."""
    return np.stack([embed(m, layer, num_models) for m in range(num_models) for layer in range(num_layers)])


class WolpertingerWrapper(gym.Wrapper):
    """Exposes a Box proto-action space over an :class:`InferencePathEnv`.

    Args:
        env: The discrete path environment.
        neighbours: M', the nearest discrete actions ranked by the critic.
        epsilon: Probability of a uniform pick among the M' instead of the critic's choice.
        stop_threshold: τ of the stop rule (default :func:`stop_threshold_for` the initial std).
        critic: Value estimates of batched observations; None ranks by distance (nearest first).
        anchor: One of :data:`ANCHORS`.
    """

    def __init__(
        self,
        env: InferencePathEnv,
        neighbours: int = 8,
        epsilon: float = 0.1,
        stop_threshold: float | None = None,
        critic: Critic | None = None,
        anchor: str = "incumbent",
    ) -> None:
        super().__init__(env)
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
        self.anchor_rule = anchor
        self.path_env = env
        self.embeddings = action_embeddings(env.num_models, env.num_layers)
        self.neighbours = max(1, min(int(neighbours), len(self.embeddings)))
        self.epsilon = float(epsilon)
        self.initial_std = exploration_std(env.num_models, env.num_layers)
        if stop_threshold is None:
            stop_threshold = stop_threshold_for(self.initial_std, env.num_layers)
        self.stop_threshold = float(stop_threshold)
        self.critic = critic
        k1, layers = env.num_models, env.num_layers
        high = np.array([MODEL_BOUND] * k1 + [float(layers), STOP_BOUND], np.float32)
        self.action_space = spaces.Box(-high, high, dtype=np.float32)

    def anchor(self) -> tuple[np.ndarray, bool]:
        """The embedding of the natural continuation, and whether stopping is natural now."""
        env = self.path_env
        if self.anchor_rule == "incumbent":
            step = env.anchor_step()
            if step is not None:
                return embed(step[0], step[1], env.num_models), False
            model, layer = env.incumbent.steps[-1]  # rebuilt: past its last step, where stopping is natural
            return embed(model, layer + 1, env.num_models), True
        if not env.steps:
            return embed(env.num_models - 1, 0, env.num_models), False
        model, layer = env.steps[-1]
        return embed(model, layer + 1, env.num_models), layer == env.num_layers - 1

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
