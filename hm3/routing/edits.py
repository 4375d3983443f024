"""The edit agent (``agent.actions: edit``): each PPO episode makes one edit of the best path so far.

Why a second action space. The paper's agent builds a path one layer at a time (:mod:`hm3.routing.env` with
Wolpertinger, ``agent.actions: path``). At the budgets of a search — tens to hundreds of paths — that agent does
not learn: on the deep toy zoo the trained agent found less than its own untrained prior and than random local
search (``benchmarks/results/agent_learning.md``). Two reasons were measured: its reward (the gain over the best
path, 0 for every path that is not better) is zero for ~24 of 25 episodes and says nothing about *how bad* an
edit was, and what it learns about a step of one incumbent does not carry over once the incumbent changes. Here
an action *is* an edit of the incumbent, named relative to it, and the reward is signed:

* **Actions** (``Discrete(T_max × (K + 3))``): a position p of the incumbent and an operation — replace step p
  by model m's layer at the same depth (m = 0..K, K the merged model; its own model is no edit), delete step p,
  or repeat it (a copy inserted after it). Edits that are no edit or would leave a length of 1..T_max are masked
  (sb3-contrib's ``MaskablePPO``: the policy never samples them), and so are edits whose path is already
  scored or screened (``known``): its outcome is known, and a free revisit teaches the policy nothing — a
  trained policy would otherwise repeat its favourite edit. The untrained agent (its logits start at zero)
  draws uniformly among the new valid edits: structured random local search without repeats.
* **Observation**: the incumbent as :class:`~hm3.routing.env.InferencePathEnv` observes a path (each step's model,
  layer and weight summary, its length) and λ.
* **The incumbent** is the best path scored so far whose edits are not all known (``ranked``): once every
  single edit of the best path is scored — a local optimum of this neighbourhood — the search goes on from the
  next best path, as a beam would, instead of revisiting; once no scored path has an untried edit, the search
  has nothing new to try and its training ends.
* **T_max below the depth** (``architecture_level.max_path_length`` < L): every path an edit makes has at most
  T_max steps, as every path the path agent builds does. The merge itself (its identity path, L steps) stays a
  candidate — the one the search starts from, as the path agent's empty path is — but it is not edited as it
  is: in its place the incumbent is its fitted form (:meth:`EditSpace.fit`), T_max of its layers spread evenly
  from the first to the last (the fixed first and last ones kept), a shallower merge that is scored in full
  when an episode first edits it (:func:`edit_reward`) and is then a path like any other. Since a replacement
  keeps a step's depth, such a search routes over the depths the fitted merge keeps (at T_max = 1: which
  model's first layer); the path agent, which builds paths layer by layer, may pick any.
* **Reward**: R(edited) − R(incumbent), signed, on the documents the edited path was scored on — the screen's
  when it was screened out (``architecture_level.screen_paths``: a new path is scored fully only if it is at
  least as good as the best path there), else the whole search split's (then a better path becomes the best).
  A destructive edit teaches as much as a good one, so the agent learns which positions and sources hurt from
  the many paths that do not pay.
* **Policy**: a bidirectional GRU over the incumbent's steps and, per position, a head that scores each
  operation from that position's state and λ (:class:`EditEncoder`); the logits of every edit come out of the
  same head, so what is learnt about one position and source carries over to others and to the next
  incumbent. The critic (its own encoder) estimates the mean reward of an edit of this incumbent.

An episode is one decision (a contextual bandit solved with PPO's clipped policy gradient); γ plays no role.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.policies import MaskableMultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from hm3.errors import BudgetSpent
from hm3.recipe import AgentConfig
from hm3.routing.env import InferencePathEnv, PoolView
from hm3.routing.path import InferencePath
from hm3.routing.ppo_arguments import ppo_arguments, without_log_folder

DELETE, REPEAT = "delete", "repeat"
REDRAWS = 16
"""With several pools (``views``), the λ a reset draws until one's pool has an untried edit: the environment is
exhausted (its training ends) only when none of them has."""
EditReward = Callable[[InferencePath, np.ndarray, InferencePath], tuple[float, dict[str, float]]]
"""``(edited path, λ, the incumbent it edits) -> (reward, scores)``."""


class EditSpace:
    """The edits of a path over ``num_models`` models (the merged one last) of ``num_layers`` layers, paths of at
    most ``max_length`` steps: action ``a`` is position ``a // ops`` and operation ``a % ops``
    (``0..num_models-1``: replace by that model's same layer; then delete; then repeat). ``frame``: the first and
    last so many steps of every path stay the merged model's own first and last layers (``architecture_level.
    fixed_first`` / ``fixed_last``): an edit that would change them is no edit."""

    def __init__(
        self, num_models: int, num_layers: int, max_length: int, frame: tuple[int, int] = (0, 0)
    ) -> None:
        self.num_models = int(num_models)
        self.num_layers = int(num_layers)
        self.max_length = int(max_length)
        first, last = self.frame = (int(frame[0]), int(frame[1]))
        merged = self.num_models - 1
        self.prefix = tuple((merged, layer) for layer in range(first))
        self.suffix = tuple((merged, layer) for layer in range(self.num_layers - last, self.num_layers))

    def keeps_frame(self, steps: Sequence[tuple[int, int]]) -> bool:
        """Whether ``steps`` begin with the fixed first layers and end with the fixed last ones, with at least
        one step between them."""
        fixed = len(self.prefix) + len(self.suffix)
        return (
            len(steps) > fixed
            and tuple(steps[: len(self.prefix)]) == self.prefix
            and tuple(steps[len(steps) - len(self.suffix) :]) == self.suffix
        )

    @property
    def ops(self) -> int:
        return self.num_models + 2

    @property
    def size(self) -> int:
        return self.max_length * self.ops

    def decode(self, action: int) -> tuple[int, int | str]:
        """``(position, model)`` for a replacement, ``(position, "delete" | "repeat")`` otherwise."""
        position, op = divmod(int(action), self.ops)
        if op < self.num_models:
            return position, op
        return position, DELETE if op == self.num_models else REPEAT

    def fit(self, path: InferencePath) -> InferencePath:
        """``path`` within T_max: ``path`` itself when it fits; else (the merge's identity path when T_max is
        below its depth) its fixed first and last steps and, between them, as many of its other steps as fit,
        spread evenly from the first to the last (T_max = 1: its first step). A path whose fixed steps alone
        fill T_max cannot fit and is returned as it is (it has no edit)."""
        if len(path) <= self.max_length:
            return path
        head, tail = len(self.prefix), len(self.suffix)
        room = self.max_length - head - tail
        if room < 1:
            return path
        steps = path.steps
        middle = steps[head : len(steps) - tail]
        kept = np.linspace(0, len(middle) - 1, room).round().astype(int)
        return InferencePath(steps[:head] + tuple(middle[i] for i in kept) + steps[len(steps) - tail :])

    def apply(self, path: InferencePath, action: int) -> InferencePath | None:
        """The path after edit ``action``; None when it is no edit of ``path`` or leaves 1..T_max."""
        position, op = self.decode(action)
        steps = list(path.steps)
        if position >= len(steps):
            return None
        if op == DELETE:
            if len(steps) <= 1:
                return None
            del steps[position]
        elif op == REPEAT:
            if len(steps) >= self.max_length:
                return None
            steps.insert(position + 1, steps[position])
        else:
            model, layer = steps[position]
            if op == model:
                return None
            steps[position] = (int(op), layer)
        if len(steps) > self.max_length:  # an edit of a path longer than T_max (the merge's identity path)
            return None
        if (self.prefix or self.suffix) and not self.keeps_frame(steps):
            return None
        return InferencePath(tuple(steps))

    def mask(self, path: InferencePath) -> np.ndarray:
        """Which actions are edits of ``path`` (the valid ones: True)."""
        return np.array([self.apply(path, a) is not None for a in range(self.size)], dtype=bool)


class EditEnv(gym.Env):
    """One episode = one edit of the incumbent (``start(λ)``: the best path so far under λ), fitted into T_max
    (:meth:`EditSpace.fit`).

    Args:
        summaries: ``[K+1, L, S]`` weight summaries.
        max_length: T_max.
        num_objectives: Length of preference vectors.
        reward_fn: ``(path, λ, incumbent) -> (reward, scores)`` (:func:`edit_reward`); None gives 0 (greedy
            rollouts).
        preference: A fixed λ, or None to draw one from Dirichlet(1, …, 1) at each reset.
        start: ``λ -> incumbent`` at each reset (default: the merged model's identity path).
        known: Whether a path's outcome is known already (scored or screened): its edit is masked while any
            new edit is left.
        ranked: ``λ -> paths scored so far, best first``: the incumbent is the first with a new edit (default:
            ``start``).
        frame: ``(fixed first, fixed last)`` steps that stay the merged model's (:class:`EditSpace`).
        views: ``λ -> PoolView``: the pool an episode of λ edits a path over, chosen at each reset (its
            summaries, ``reward_fn``, ``start``, ``known`` and ``ranked`` replace these; see
            :class:`~hm3.routing.env.InferencePathEnv`).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        summaries: np.ndarray,
        max_length: int,
        num_objectives: int,
        reward_fn: EditReward | None = None,
        preference: np.ndarray | None = None,
        start: Callable[[np.ndarray], InferencePath] | None = None,
        known: Callable[[InferencePath], bool] | None = None,
        ranked: Callable[[np.ndarray], Sequence[InferencePath]] | None = None,
        frame: tuple[int, int] = (0, 0),
        views: Callable[[np.ndarray], PoolView] | None = None,
    ) -> None:
        self.paths = InferencePathEnv(
            summaries, max_length, num_objectives, preference=preference, start=start, views=views
        )
        self.summaries = self.paths.summaries
        self.num_models, self.num_layers = self.paths.num_models, self.paths.num_layers
        self.max_length, self.num_objectives = self.paths.max_length, self.paths.num_objectives
        self.space = EditSpace(self.num_models, self.num_layers, self.max_length, frame)
        self.observation_space = self.paths.observation_space
        self.action_space = spaces.Discrete(self.space.size)
        self.reward_fn = reward_fn
        self.known = known
        self.ranked = ranked
        self.exhausted = False
        """Whether, at the last reset, every edit of every ranked path was known — with ``views``, in the pool of
        each of :data:`REDRAWS` drawn λ: nothing new to try (a search ends there:
        :func:`hm3.routing.agent.train_agent`)."""
        self.preference = self.paths.preference
        self.incumbent = self.space.fit(self.paths.identity())

    @property
    def frame(self) -> tuple[int, int]:
        """The fixed first and last steps of its edit space."""
        return self.space.frame

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        drawn = self.paths.views is not None and self.paths.fixed_preference is None
        given = options is not None and ("preference" in options or "incumbent" in options)
        for draw in range(REDRAWS if drawn and not given else 1):  # a pool with nothing new: draw another λ
            # the episode's λ (and with views its pool) and, by default, its incumbent
            self.paths.reset(seed=seed if draw == 0 else None, options=options)
            self.preference, self.incumbent = self.paths.preference, self.space.fit(self.paths.incumbent)
            view = self.paths.view
            if view is not None:
                self.summaries, self.reward_fn = self.paths.summaries, view.reward_fn
                self.known, self.ranked = view.known, view.ranked
            if self.ranked is not None and not (options and "incumbent" in options):
                paths = self.fitted(self.ranked(self.preference))
                editable = next((p for p in paths if self.new_edits(p).any()), None)
                self.exhausted = editable is None
                self.incumbent = paths[0] if editable is None else editable
            if not self.exhausted:
                break
        return self.observation(), {}

    def fitted(self, paths: Sequence[InferencePath]) -> list[InferencePath]:
        """``paths`` (best first) fitted into T_max (:meth:`EditSpace.fit`), in order, each once: the
        incumbents an episode may edit (the paths themselves whenever T_max is at least the depth)."""
        return list(dict.fromkeys(self.space.fit(path) for path in paths))

    def new_edits(self, path: InferencePath) -> np.ndarray:
        """The valid edits of ``path`` whose outcome is not known (all valid ones without ``known``)."""
        valid = self.space.mask(path)
        if self.known is not None:
            for action in np.flatnonzero(valid):
                valid[action] = not self.known(self.space.apply(path, int(action)))
        return valid

    def observation(self) -> dict[str, np.ndarray]:
        """The incumbent under the current preference, as the path environment observes a path."""
        self.paths.preference = self.preference
        return self.paths.observation(list(self.incumbent.steps))

    def action_masks(self) -> np.ndarray:
        """The valid edits of the incumbent whose outcome is not known yet — all valid edits once none is new
        (sb3-contrib's masking hook)."""
        new = self.new_edits(self.incumbent)
        return new if new.any() else self.space.mask(self.incumbent)

    def step(self, action: int):
        path = self.space.apply(self.incumbent, int(action))
        if path is None:  # masked out: never sampled; a caller passing one gets the incumbent back
            path = self.incumbent
        reward, scores = (
            (0.0, {}) if self.reward_fn is None else self.reward_fn(path, self.preference, self.incumbent)
        )
        info = {"path": path, "scores": scores, "episode_reward": reward, "decisions": 1}
        return self.observation(), float(reward), True, False, info


def edit_reward(best_paths) -> EditReward:
    """The edit agent's reward: R(path) − R(incumbent), signed, on the documents ``path`` was scored on.

    With a screening path scorer a new path is scored on the screen documents first; it is scored fully only if
    its reward there is at least the best path's (successive halving, as
    :func:`hm3.routing.agent.training_reward`), else its reward is its screen reward minus the incumbent's. A
    path the budget cannot pay for earns 0. An incumbent not scored yet — the merge fitted into a T_max below
    its depth (:meth:`EditSpace.fit`), the start of such a search — is scored in full first.
    """

    def reward_fn(
        path: InferencePath, weights: np.ndarray, incumbent: InferencePath | None = None
    ) -> tuple[float, dict[str, float]]:
        incumbent = best_paths.best(weights)[0] if incumbent is None else incumbent
        scorer, rewards = best_paths.path_scorer, best_paths.rewards
        try:
            if incumbent not in scorer.scored:  # the fitted merge: the start, scored like the merge is
                scorer.score(incumbent)
            screened = best_paths.screened_out(path, weights)
            if screened is not None:
                start = scorer.screen(incumbent)
                return rewards.reward(screened, weights, len(path)) - rewards.reward(
                    start, weights, len(incumbent)
                ), screened
            scores = scorer.score(path)
            start = scorer.score(incumbent)
        except BudgetSpent:
            return 0.0, {}
        return rewards.reward(scores, weights, len(path)) - rewards.reward(
            start, weights, len(incumbent)
        ), scores

    return reward_fn


class EditEncoder(BaseFeaturesExtractor):
    """Per-edit features of an incumbent: a bidirectional GRU over its steps (model, layer, weight summary and
    position embeddings), then per position one head over that position's state, λ and the path length that
    scores each operation. The features are those scores, ``[T_max × ops]``: the actor uses them as its logits
    (:class:`EditPolicy`). The head's last layer starts at zero, so the untrained actor is uniform over the
    valid edits.
    """

    def __init__(self, observation_space: spaces.Dict, hidden_size: int = 64) -> None:
        num_models = int(observation_space["models"].high.max())
        num_layers = int(observation_space["layers"].high.max())
        max_length = observation_space["models"].shape[0]
        summary_size = observation_space["summaries"].shape[-1]
        num_objectives = observation_space["preference"].shape[0]
        ops = num_models + 2
        super().__init__(observation_space, features_dim=max_length * ops)
        self.model_embedding = nn.Embedding(num_models + 1, hidden_size, padding_idx=0)
        self.layer_embedding = nn.Embedding(num_layers + 1, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_length, hidden_size)
        self.summary_projection = nn.Linear(summary_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.preference_projection = nn.Sequential(nn.Linear(num_objectives, hidden_size), nn.Tanh())
        self.head = nn.Sequential(
            nn.Linear(3 * hidden_size + 1, hidden_size), nn.Tanh(), nn.Linear(hidden_size, ops)
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        models = observations["models"].round().long()
        layers = observations["layers"].round().long()
        real = (models > 0).unsqueeze(-1)
        positions = torch.arange(models.shape[1], device=models.device).expand_as(models)
        steps = self.model_embedding(models) + self.layer_embedding(layers)
        steps = (
            steps
            + (self.summary_projection(observations["summaries"]) + self.position_embedding(positions)) * real
        )
        lengths = (models > 0).sum(dim=1).clamp(min=1)
        packed = nn.utils.rnn.pack_padded_sequence(
            steps, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        states, _ = self.gru(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=models.shape[1])
        context = torch.cat(
            [self.preference_projection(observations["preference"]), observations["length"]], dim=1
        )
        context = context.unsqueeze(1).expand(-1, models.shape[1], -1)
        scores = self.head(torch.cat([states, context], dim=2)) * real  # padding: no edit there (masked)
        return scores.flatten(start_dim=1)


class EditPolicy(MaskableMultiInputActorCriticPolicy):
    """sb3-contrib's maskable actor-critic with :class:`EditEncoder`'s per-edit scores as the actor's logits (no
    action layer after them); the critic has its own encoder and an MLP."""

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self.action_net = nn.Identity()
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)


def build_edit_ppo(env: EditEnv, config: AgentConfig, seed: int) -> MaskablePPO:
    """The maskable PPO of ``config`` on ``env`` (rewards normalised), its networks freshly initialised."""
    model = MaskablePPO(
        EditPolicy,
        policy_kwargs={
            "features_extractor_class": EditEncoder,
            "features_extractor_kwargs": {"hidden_size": config.hidden_size},
            "net_arch": {"pi": [], "vf": [config.hidden_size]},
            "share_features_extractor": False,
            "ortho_init": False,
        },
        **ppo_arguments(env, config, seed),
    )
    return without_log_folder(model)


def greedy_edit(model: MaskablePPO, env: EditEnv, preference, incumbent: InferencePath) -> InferencePath:
    """The policy's most likely edit of ``incumbent`` (fitted into T_max: :meth:`EditSpace.fit`) under
    ``preference`` (the fitted incumbent itself when it has no valid edit)."""
    observation, _ = env.reset(seed=0, options={"preference": preference, "incumbent": incumbent})
    incumbent = env.incumbent
    mask = env.space.mask(incumbent)  # its favourite edit, known or not
    if not mask.any():
        return incumbent
    action, _ = model.predict(observation, action_masks=mask, deterministic=True)
    return env.space.apply(incumbent, int(action)) or incumbent
