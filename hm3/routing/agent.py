"""The path-search agent: stable-baselines3 PPO (actor-critic, clipped objective, GAE) with Wolpertinger.

Pieces, each at one of SB3's own hooks:

* :class:`~hm3.routing.policy.TrajectoryEncoder` — the features extractor (GRU over the trajectory);
* :class:`~hm3.routing.wolpertinger.WolpertingerWrapper` — the environment wrapper mapping the actor's
  Gaussian proto-action, an offset from the incumbent's next step, to a discrete layer action (the critic
  ranks the M' nearest when ``agent.wolpertinger_neighbours`` > 1);
* :class:`~hm3.routing.buffer.SpreadRewardRolloutBuffer` — the rollout buffer (``rollout_buffer_class``) that spreads each
  episode's reward R evenly over its steps before GAE (see :mod:`hm3.routing.env`).

What the agent learns: every episode edits the best path scored so far for its λ (:class:`BestPaths`; see
:mod:`hm3.routing.env`), and is paid the gain over it (:func:`training_reward`). PPO's rollout is scaled to the
budget (:func:`scaled_to_budget`).

Two modes (``recipe.agent.mode``):

``per_preference``
    The paper's Algorithm 1: a fresh agent per preference λ, trained for ``agent.iterations`` episodes (each
    episode = one scored path); the result is the best path scored, its greedy rollout included.
``conditioned``
    One agent with λ in its observation, trained over λ ~ Dirichlet(1, …, 1) for ``agent.iterations``
    episodes; :func:`rollout` then answers any new λ with a greedy rollout and no retraining.

Example::

    scorer = PathScorer(routing_pool, Evaluator.from_recipe(recipe).score)
    result = search_path(routing_pool, scorer, preference=[0.7, 0.3], recipe=recipe, seed=0)
    result.best_path, result.best_scores, result.best_reward
    result.agent.save(run_dir / "policy")           # safetensors + JSON, no pickle; PathAgent.load reloads it

Saved agents hold no pickle: see :mod:`hm3.routing.ppo` for the folder format.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from hm3.errors import BudgetSpent, UserError
from hm3.moo.reward import Reward, reward_from_recipe
from hm3.moo.scalarization import ObjectiveScale
from hm3.recipe import AgentConfig, Recipe
from hm3.routing.alignment import make_aligner
from hm3.routing.edits import EditEnv, build_edit_ppo, edit_reward, greedy_edit
from hm3.routing.env import InferencePathEnv, PoolReward, PoolView
from hm3.routing.path import InferencePath
from hm3.routing.pool import RoutingPool
from hm3.routing.ppo import build_ppo, load_policy, policy_saved_in, save_policy
from hm3.routing.scoring import PathEvaluation, PathScorer, Scorer
from hm3.routing.summary import layer_summaries
from hm3.routing.wolpertinger import WolpertingerWrapper

MAX_EPISODES_PER_CANDIDATE = 10
"""Training also stops after this many episodes per requested candidate (a converged policy repeats itself)."""


@dataclass
class PathAgent:
    """A trained PPO path agent and what it needs to act.

    Attributes:
        model: The SB3 PPO model (policy and value networks); sb3-contrib's maskable PPO for an edit agent.
        summaries: The ``[K+1, L, S]`` layer summaries of the pool it was built on (part of every observation; a
            rollout over another pool is given that pool's: :func:`rollout`).
        max_length: T_max.
        num_objectives: Length of a preference vector.
        neighbours: Wolpertinger M'.
        stop_threshold: The wrapper's stop threshold.
        config: The ``agent`` settings the PPO was built with (None only for a legacy ``policy.zip``).
        anchor: The Wolpertinger anchor rule it was trained with (:data:`~hm3.routing.wolpertinger.ANCHORS`).
        frame: An edit agent's fixed first and last steps (``architecture_level.fixed_first`` / ``fixed_last``).
    """

    model: PPO | MaskablePPO
    summaries: np.ndarray
    max_length: int
    num_objectives: int
    neighbours: int
    stop_threshold: float
    config: AgentConfig | None = None
    anchor: str = "incumbent"
    frame: tuple[int, int] = (0, 0)

    @property
    def updates(self) -> int:
        """PPO updates this agent has made (rollouts trained on; SB3 counts an epoch of minibatches per update
        in ``_n_updates``). An agent loaded from a saved policy counts from 0."""
        return int(getattr(self.model, "_n_updates", 0)) // max(1, int(getattr(self.model, "n_epochs", 1)))

    def critic(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """V(s) for a batch of observations (the Wolpertinger ranking)."""
        policy = self.model.policy
        obs, _ = policy.obs_to_tensor(batch)
        with torch.no_grad():
            return policy.predict_values(obs).cpu().numpy().reshape(-1)

    def save(self, folder: str | Path) -> Path:
        """Write the agent into ``folder`` as safetensors, JSON and ``.npy`` (see :mod:`hm3.routing.ppo`)."""
        if self.config is None:
            raise UserError("an agent loaded from a legacy policy.zip cannot be saved again; retrain it")
        settings = {
            "max_length": self.max_length,
            "num_objectives": self.num_objectives,
            "neighbours": self.neighbours,
            "stop_threshold": self.stop_threshold,
            "anchor": self.anchor,
            "frame": list(self.frame),
        }
        return save_policy(Path(folder), self.model, self.summaries, settings, self.config)

    @staticmethod
    def saved_in(folder: str | Path) -> bool:
        """Whether ``folder`` holds a saved agent."""
        return policy_saved_in(Path(folder))

    @classmethod
    def load(cls, folder: str | Path, allow_pickle: bool = False) -> PathAgent:
        """The agent :meth:`save` wrote; a legacy ``policy.zip`` (pickle) only with ``allow_pickle``.

        Raises:
            UserError: no agent there, a legacy zip without ``allow_pickle``, or files that do not fit together.
        """
        saved = load_policy(Path(folder), allow_pickle)
        return cls(model=saved.model, summaries=saved.summaries, config=saved.config, **saved.settings)


def _candidate_budget(
    candidates: float, scored: Callable[[], float], max_episodes: int, stop: Callable[[], bool] | None = None
):
    class CandidateBudget(BaseCallback):
        """Stops PPO's learn() once ``candidates`` new paths have been scored (repeats are free: the scores
        are cached), after ``max_episodes`` episodes, or once ``stop()`` holds (a search that stopped
        improving)."""

        def __init__(self) -> None:
            super().__init__()
            self.start = scored()
            self.episodes = 0

        def _on_step(self) -> bool:
            self.episodes += int(np.sum(self.locals["dones"]))
            if stop is not None and stop():
                return False
            return scored() - self.start < candidates and self.episodes < max_episodes

    return CandidateBudget()


def make_env(
    view: PoolView,
    max_length: int,
    num_objectives: int,
    config: AgentConfig,
    preference: Sequence[float] | None = None,
    frame: tuple[int, int] = (0, 0),
    views: Callable[[np.ndarray], PoolView] | None = None,
) -> WolpertingerWrapper | EditEnv:
    """The agent's environment over ``view``'s pool (:func:`pool_view`): the Wolpertinger-wrapped path
    environment, or with ``agent.actions: edit`` the edit environment (:mod:`hm3.routing.edits`; ``frame``: its
    fixed first and last steps). ``views``: the pool of each episode's λ (a conditioned agent trained across
    merges); ``view`` is then the pool it starts on."""
    fixed = None if preference is None else np.asarray(preference, np.float32)
    arguments = (view.summaries, max_length, num_objectives)
    if config.actions == "edit":
        return EditEnv(
            *arguments,
            view.reward_fn,
            fixed,
            view.start,
            known=view.known,
            ranked=view.ranked,
            frame=frame,
            views=views,
        )
    env = InferencePathEnv(
        *arguments, reward_fn=view.reward_fn, preference=fixed, start=view.start, views=views
    )
    return WolpertingerWrapper(env, config.wolpertinger_neighbours, config.wolpertinger_epsilon)


def pool_view(config: AgentConfig, best_paths: BestPaths) -> PoolView:
    """What an agent of ``config`` sees of and earns over the pool of ``best_paths``' path scorer: the pool's
    layer summaries, :func:`agent_reward`, the best path so far as the start, the scorer's known paths and its
    ranking (the edit agent's)."""
    scorer = best_paths.path_scorer
    return PoolView(
        summaries=layer_summaries(scorer.pool),
        reward_fn=agent_reward(config, best_paths),
        start=lambda weights: best_paths.best(weights)[0],
        known=scorer.knows,
        ranked=best_paths.ranked,
    )


UPDATES = 8
"""PPO updates a search makes when ``agent.n_steps`` is left to the budget (:func:`scaled_to_budget`)."""
MIN_ROLLOUT = 16
MAX_ROLLOUT = 1024
"""Bounds on the scaled rollout (environment steps): a tiny search still updates on a few episodes; a large one
(1000 paths) updates more often than :data:`UPDATES` times."""


def scaled_to_budget(
    config: AgentConfig, candidates: float, episode_length: int, horizon: float | None = None
) -> AgentConfig:
    """``config`` with PPO's rollout scaled to the budget: ``agent.n_steps`` when set; otherwise the expected
    steps of ``candidates`` episodes of ``episode_length`` decisions divided into :data:`UPDATES` rollouts, within
    [:data:`MIN_ROLLOUT`, :data:`MAX_ROLLOUT`]. The minibatch (``agent.batch_size``, default: the whole
    rollout) is at most one rollout.

    ``horizon``: what the search is sure to spend before it may stop (its patience window,
    :func:`hm3.search.allocation.stall_window`), when that is less than ``candidates``: the rollout is scaled to
    it, so that a search which stops once its window passes without progress has made its updates by then — and
    one that goes on keeps updating at that pace. Sized to a budget of 1000 paths, a window of 24 would end the
    search before PPO's first update (its policy the prior alone).

    Why few, large updates: the reward is sparse (most paths improve nothing), and a PPO update on a handful of
    episodes is mostly noise; with SB3's usual 64-step rollouts and minibatches of 32 (320 Adam steps over 200
    paths) the actor's mean drifted by a random walk until the agent made 4-5 edits per path instead of one, and
    found less than its untrained prior (``benchmarks/results/agent_learning.md``). At 200 paths on a 12-layer
    pool this gives 8 updates of ~25 episodes, one gradient step per epoch; at 14 paths, 8 updates of ~2.
    """
    n_steps = config.n_steps
    if n_steps is None:
        sure = candidates if horizon is None else min(candidates, horizon)
        expected = int(max(sure, 1) * episode_length)
        n_steps = min(MAX_ROLLOUT, max(MIN_ROLLOUT, expected // UPDATES))
    batch_size = min(config.batch_size or n_steps, n_steps)
    return config.model_copy(update={"n_steps": n_steps, "batch_size": batch_size})


def train_agent(
    env: WolpertingerWrapper | EditEnv,
    config: AgentConfig,
    candidates: float,
    seed: int,
    scored: Callable[[], float],
    progress: bool = False,
    stop: Callable[[], bool] | None = None,
    carried: PathAgent | None = None,
    horizon: float | None = None,
) -> PathAgent:
    """Train a fresh PPO agent on ``env`` until ``candidates`` new paths are scored — or, given ``carried`` (an
    edit agent trained on another preference's pool), go on training that one (:func:`carry_agent`).

    Args:
        env: The wrapped environment (its reward function scores the paths).
        config: ``recipe.agent``.
        candidates: New paths to score (``agent.iterations``); an episode that revisits a path costs no
            evaluation and does not count. At most ``MAX_EPISODES_PER_CANDIDATE × candidates`` episodes run.
        scored: What has been spent so far: paths scored (``len(path_scorer.scored)``), or a search's budget
            used, in full scorings (a screen counts its share).
        seed: Seeds PPO, the environment and the Wolpertinger ε draws.
        progress: Show SB3's progress bar.
        stop: Ends training early when it returns True (checked at every step).
        carried: An edit agent to continue instead of a fresh one (its settings, rollout length included).
        horizon: What ``stop`` lets the training spend at least (its patience window): PPO's rollout is scaled to
            it where it is less than ``candidates`` (:func:`scaled_to_budget`).
    """
    if carried is not None and not isinstance(env, EditEnv):
        raise UserError("only an edit agent (agent.actions: edit) can be carried to another preference")
    if isinstance(env, EditEnv):  # one decision per episode
        config = scaled_to_budget(config, candidates, 1, horizon)
        agent = (
            carry_agent(carried, env, seed)
            if carried is not None
            else PathAgent(
                model=build_edit_ppo(env, config, seed),
                summaries=env.summaries,
                max_length=env.max_length,
                num_objectives=env.num_objectives,
                neighbours=1,
                stop_threshold=0.0,
                config=config,
                frame=env.frame,
            )
        )

        def ended() -> bool:  # stopped by the search, or no untried edit of any scored path is left
            return env.exhausted or (stop is not None and stop())

        keep_training(agent, candidates, scored, progress, ended)
        return agent
    path_env = env.path_env
    config = scaled_to_budget(config, candidates, len(path_env.incumbent) + 1, horizon)
    model = build_ppo(env, config, seed)
    with torch.no_grad():  # an untrained critic ties every candidate: the nearest one wins (see wolpertinger)
        model.policy.value_net.weight.zero_()
        model.policy.value_net.bias.zero_()
    agent = PathAgent(
        model=model,
        summaries=path_env.summaries,
        max_length=path_env.max_length,
        num_objectives=path_env.num_objectives,
        neighbours=env.neighbours,
        stop_threshold=env.stop_threshold,
        config=config,
        anchor=env.anchor_rule,
    )
    env.critic = agent.critic
    keep_training(agent, candidates, scored, progress, stop)  # none to spend: the prior is the agent
    return agent


def carry_agent(agent: PathAgent, env: EditEnv, seed: int) -> PathAgent:
    """``agent``, an edit agent trained on one pool, moved onto ``env`` (another preference's pool of the same
    zoo) to go on learning there: the same policy, optimiser and reward normalisation, PPO's random state reseeded
    with ``seed`` (so the search is reproducible on its own). What it learnt about positions and sources carries;
    what it knew of the old pool's paths (the edits already tried) does not — ``env`` brings its own."""
    if not isinstance(agent.model, MaskablePPO) or agent.model.observation_space != env.observation_space:
        raise UserError(
            "only an edit agent over a pool of the same shape can be carried to another preference"
        )
    previous = agent.model.get_env()
    wrapped = VecNormalize(DummyVecEnv([lambda: env]), norm_obs=False, norm_reward=True, gamma=previous.gamma)
    wrapped.ret_rms = copy.deepcopy(previous.ret_rms)
    agent.model.set_env(wrapped)  # resets the new environment before the next rollout
    agent.model.set_random_seed(seed)
    return replace(agent, summaries=env.summaries, frame=env.frame)


def keep_training(
    agent: PathAgent,
    candidates: float,
    scored: Callable[[], float],
    progress: bool = False,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Train ``agent`` (on the environment it was built with) until ``candidates`` more new paths are scored,
    at most ``MAX_EPISODES_PER_CANDIDATE × candidates`` episodes, or ``stop()``; PPO continues where it was."""
    if candidates <= 0:
        return
    episodes = math.ceil(MAX_EPISODES_PER_CANDIDATE * candidates)
    steps = episodes * (agent.max_length + 1) + agent.model.n_steps
    callback = _candidate_budget(candidates, scored, episodes, stop)
    agent.model.learn(
        total_timesteps=steps, callback=callback, progress_bar=progress, reset_num_timesteps=False
    )


def rollout(
    agent: PathAgent,
    preference: Sequence[float],
    incumbent: InferencePath | None = None,
    summaries: np.ndarray | None = None,
) -> InferencePath:
    """The agent's greedy path for ``preference``: mean proto-actions, the critic's pick, no ε; it edits
    ``incumbent`` (default: the merged model's identity path). An edit agent's: its most likely edit of
    ``incumbent``. ``summaries``: the layer summaries of the pool the path is over (default: those of the pool
    the agent was saved with; a conditioned agent is shown the pool of the merge it routes over)."""
    summaries = agent.summaries if summaries is None else summaries
    if agent.config is not None and agent.config.actions == "edit":
        env = EditEnv(summaries, agent.max_length, agent.num_objectives, frame=agent.frame)
        return greedy_edit(agent.model, env, np.asarray(preference, np.float32), incumbent or env.incumbent)
    env = InferencePathEnv(
        summaries, agent.max_length, agent.num_objectives, preference=np.asarray(preference, np.float32)
    )
    wrapper = WolpertingerWrapper(
        env, agent.neighbours, 0.0, agent.stop_threshold, critic=agent.critic, anchor=agent.anchor
    )
    obs, _ = wrapper.reset(seed=0, options=None if incumbent is None else {"incumbent": incumbent})
    while True:
        proto, _ = agent.model.predict(obs, deterministic=True)
        low, high = wrapper.action_space.low, wrapper.action_space.high
        action = wrapper.discrete_action(np.clip(proto, low, high), greedy=True)
        obs, _, terminated, _, info = env.step(action)
        if terminated:
            return info["path"]


@dataclass
class PathSearchResult:
    """What one path search found for one preference.

    Attributes:
        preference: λ.
        best_path: The highest-reward path scored.
        best_scores: Its scores.
        best_reward: Its reward R.
        rollout_path: The agent's greedy path for λ after training.
        rollout_reward: Its reward R on ``rollout_split`` (None if the budget left no room to score it).
        rollout_split: Where the rollout was scored: ``search`` (fully), ``screen`` (successive halving: it lost
            to the best path on the screen documents, so its reward is on those and it is not a candidate), or
            None (not scored).
        candidates: Every path scored, with its scores and reward under λ, in scoring order.
        agent: The trained agent.
    """

    preference: tuple[float, ...]
    best_path: InferencePath
    best_scores: dict[str, float]
    best_reward: float
    rollout_path: InferencePath
    rollout_reward: float | None
    rollout_split: str | None = "search"
    candidates: list[tuple[InferencePath, dict[str, float], float]] = field(default_factory=list)
    agent: PathAgent | None = None


def path_scorer_from_recipe(
    pool: RoutingPool,
    scorer: Scorer | None,
    recipe: Recipe,
    calibration: dict[str, Any] | None = None,
    evaluate: PathEvaluation | None = None,
) -> PathScorer:
    """A :class:`PathScorer` with the recipe's alignment mode (``stats`` needs ``calibration``)."""
    return PathScorer(
        pool=pool,
        scorer=scorer,
        aligner=make_aligner(recipe.architecture_level.alignment, pool, calibration),
        evaluate=evaluate,
    )


class BestPaths:
    """The best path scored so far under a preference, kept up to date incrementally as paths are scored.

    Args:
        path_scorer: Whose ``scored`` paths count (insertion-ordered: new paths are appended).
        rewards: The reward R(λ).
        reference: Scored first, so that there is always a best (the merged model's identity path).
    """

    def __init__(self, path_scorer: PathScorer, rewards: Reward, reference: InferencePath) -> None:
        self.path_scorer = path_scorer
        self.rewards = rewards
        self.reference = reference
        self._best: dict[bytes, tuple[int, InferencePath, float]] = {}
        self._ranking: tuple[int, list[tuple[float, int, InferencePath]], bytes] = (0, [], b"")

    def best(self, weights: np.ndarray) -> tuple[InferencePath, float]:
        """The highest-reward path scored so far under ``weights`` (ties: the first scored), and its reward."""
        self.path_scorer.score(self.reference)
        key = np.asarray(weights, np.float64).tobytes()
        seen, path, reward = self._best.get(key, (0, self.reference, -math.inf))
        scored = self.path_scorer.scored
        for candidate, scores in itertools.islice(scored.items(), seen, None):
            value = self.rewards.reward(scores, weights, len(candidate))
            if value > reward:
                path, reward = candidate, value
        self._best[key] = (len(scored), path, reward)
        return path, reward

    def screened_out(self, path: InferencePath, weights: np.ndarray) -> dict[str, float] | None:
        """Successive halving's verdict on a new ``path``: its screen scores when the path scorer screens and
        its reward there is below the best path's on the same documents (it is not to be scored fully), else
        None. A path the budget cannot screen raises :class:`~hm3.errors.BudgetSpent`."""
        scorer = self.path_scorer
        if not scorer.screens or path in scorer.scored:
            return None
        best_path, _ = self.best(weights)
        screened = scorer.screen(path)
        bar = self.rewards.reward(scorer.screen(best_path), weights, len(best_path))
        return screened if self.rewards.reward(screened, weights, len(path)) < bar else None

    def ranked(self, weights: np.ndarray) -> list[InferencePath]:
        """Every path scored so far, best first under ``weights`` (ties: the first scored).

        The ranking under the last ``weights`` asked for is kept and only the paths scored since are inserted
        (an edit search asks once per episode under its one λ: re-ranking every path each time made a search
        quadratic in its paths); other weights rank afresh."""
        self.path_scorer.score(self.reference)
        key = np.asarray(weights, np.float64).tobytes()
        seen, order, _ = self._ranking if self._ranking[2] == key else (0, [], key)
        scored = self.path_scorer.scored
        for index, (path, scores) in enumerate(itertools.islice(scored.items(), seen, None), start=seen):
            bisect.insort(order, (-self.rewards.reward(scores, weights, len(path)), index, path))
        self._ranking = (len(scored), order, key)
        return [path for _, _, path in order]


def training_reward(best_paths: BestPaths):
    """The reward the agent trains on: how much a path raises the best reward scored so far under the episode's
    λ — ``max(0, R(path) − R(best))``, 0 for a path scored before.

    Summed over the episodes of a search, these rewards are the search's own result: the best path's reward
    minus the reward of the merge it started from. So the agent is paid for exactly what the search is for,
    and nothing else: a revisit (free, since scores are cached) or a step back earns nothing, and an edit that
    finds a better path earns its gain. The earlier form, R(path) − R(merge), paid the incumbent's revisit 0 and
    nearly every edit less: PPO learnt to return to the merge, and on the deep zoo found nothing better in 9
    of 9 searches (``benchmarks/results/agent_learning.md``). SB3's ``VecNormalize`` scales the reward;
    candidates are still reported and ranked by the plain R.

    **Successive halving** (a path scorer that screens: ``architecture_level.screen_paths``): a new path is
    scored first on the screen documents, and fully only if its reward there is at least the best path's on the
    same documents — a path that would lose there pays nothing, like any path that raises nothing, for a share
    of a full scoring. A path the budget cannot pay for (:class:`~hm3.errors.BudgetSpent`) pays nothing.
    """

    def reward_fn(path: InferencePath, weights: np.ndarray) -> tuple[float, dict[str, float]]:
        _, best = best_paths.best(weights)
        try:
            screened = best_paths.screened_out(path, weights)
            if screened is not None:
                return 0.0, screened
            scores = best_paths.path_scorer.score(path)
        except BudgetSpent:
            return 0.0, {}
        gain = best_paths.rewards.reward(scores, weights, len(path)) - best
        return max(gain, 0.0), scores

    return reward_fn


def agent_reward(config: AgentConfig, best_paths: BestPaths):
    """The reward the agent of ``config`` trains on: :func:`training_reward` for the path agent,
    :func:`~hm3.routing.edits.edit_reward` for the edit agent."""
    return edit_reward(best_paths) if config.actions == "edit" else training_reward(best_paths)


def max_path_length(pool: RoutingPool, recipe: Recipe) -> int:
    """T_max: ``architecture_level.max_path_length``, else 1.5 × L."""
    return recipe.architecture_level.max_path_length or pool.default_max_length()


def search_path(
    pool: RoutingPool,
    scorer: Scorer | PathScorer,
    preference: Sequence[float],
    recipe: Recipe,
    seed: int | None = None,
    scale: ObjectiveScale | None = None,
    agent: PathAgent | None = None,
    calibration: dict[str, Any] | None = None,
    candidates: float | None = None,
    spent: Callable[[], float] | None = None,
    stop: Callable[[], bool] | None = None,
    carried: PathAgent | None = None,
    horizon: float | None = None,
) -> PathSearchResult:
    """Search the inference path for one preference (the lower level of HM3).

    Args:
        pool: The K fine-tuned models and the merged one.
        scorer: ``score(model) -> {objective: value}``, or a ready :class:`PathScorer` (a search's, which
            logs and budgets every new path).
        preference: λ, one weight per objective.
        recipe: Supplies ``agent``, ``architecture_level``, ``preferences.scalarization`` and the objectives'
            directions, resolved (:meth:`hm3.recipe.Recipe.with_directions`: a search's recipe is).
        seed: Seeds the agent (default: the recipe's seed).
        scale: The fine-tuned models' ideal and nadir (the reward's normalisation; needed by ``tchebycheff``).
        agent: A trained preference-conditioned agent: no training, its greedy rollout is scored.
        calibration: The calibration batch of ``stats`` alignment.
        candidates: What the search may spend on new paths, in full scorings (a screen counts its share), the
            greedy rollout included (default ``agent.iterations``): training stops one short of it, so that the
            rollout fits (unless the last path promoted from its screen took that room: the rollout is then not
            scored); the rollout is screened like any new path (scored fully only if it is as good as the best
            path on the screen documents); a rollout that is a path already scored leaves that slot to more training (the greedy
            rollout reported is the policy's before it).
        spent: What has been charged so far, in full scorings (a search's budget; default: the paths this
            path scorer has scored).
        stop: Ends the training early when it returns True (a search that stopped improving:
            :class:`hm3.search.allocation.Patience`); the greedy rollout is scored all the same.
        carried: An edit agent trained on an earlier preference's pool, to go on training here instead of a fresh
            one (:func:`carry_agent`; ``benchmarks/agent_learning.py``'s ``ppo_edit_carried``).
        horizon: What ``stop`` lets the search spend at least (its patience window; :func:`train_agent`).

    Returns:
        The best path scored (over this search's candidates and any the scorer already knew) and the agent.
    """
    if len(preference) != len(recipe.objectives):
        raise UserError(f"a preference has {len(recipe.objectives)} weights; got {len(preference)}")
    seed = recipe.seed if seed is None else seed
    if isinstance(scorer, PathScorer):
        path_scorer = scorer
    else:
        path_scorer = path_scorer_from_recipe(pool, scorer, recipe, calibration)
    rewards = reward_from_recipe(recipe, scale)
    lam = np.asarray(preference, dtype=np.float32)
    t_max = max_path_length(pool, recipe)
    allowed = recipe.agent.iterations if candidates is None else candidates
    counter = spent or (lambda: len(path_scorer.scored))
    start = counter()

    best_paths = BestPaths(path_scorer, rewards, InferencePath.identity(pool.merged_index, pool.num_layers))
    if agent is None:
        conditioned = recipe.agent.mode == "conditioned"
        env = make_env(
            pool_view(recipe.agent, best_paths),
            t_max,
            len(lam),
            recipe.agent,
            preference=None if conditioned else lam,
            frame=recipe.architecture_level.frame,
        )
        agent = train_agent(
            env,
            recipe.agent,
            allowed - 1 - (counter() - start),
            seed,
            counter,
            stop=stop,
            carried=carried,
            horizon=horizon,
        )
        greedy = rollout(agent, lam, best_paths.best(lam)[0])
        exhausted = isinstance(env, EditEnv) and env.exhausted  # no untried edit left: nothing to train on
        if greedy in path_scorer.scored and not exhausted and not (stop is not None and stop()):
            # the slot kept for the rollout is free (its path is known, usually the best one): train on
            keep_training(agent, allowed - (counter() - start), counter, stop=stop)
    else:  # a trained conditioned agent, shown this pool
        greedy = rollout(agent, lam, best_paths.best(lam)[0], layer_summaries(pool))
    screen_scores: dict[str, float] | None = None
    if greedy in path_scorer.scored or counter() - start + 1 <= allowed:
        try:  # a budget shared with others (a search's preference) may have less left than this count
            screen_scores = best_paths.screened_out(greedy, lam)  # screened like any new path
            if screen_scores is None:
                path_scorer.score(greedy)
        except BudgetSpent:
            pass
    known = path_scorer.scored.get(greedy)
    rollout_split = "search" if known is not None else "screen" if screen_scores is not None else None
    rollout_scores = known if known is not None else screen_scores
    scored = [(p, s, rewards.reward(s, lam, len(p))) for p, s in path_scorer.scored.items()]
    best_path, best_scores, best_reward = max(scored, key=lambda c: c[2])
    return PathSearchResult(
        preference=tuple(float(v) for v in lam),
        best_path=best_path,
        best_scores=best_scores,
        best_reward=best_reward,
        rollout_path=greedy,
        rollout_reward=None if rollout_scores is None else rewards.reward(rollout_scores, lam, len(greedy)),
        rollout_split=rollout_split,
        candidates=scored,
        agent=agent,
    )


def train_conditioned_agent(
    pool: RoutingPool,
    scorer: Scorer | PathScorer,
    recipe: Recipe,
    seed: int | None = None,
    scale: ObjectiveScale | None = None,
    calibration: dict[str, Any] | None = None,
    spent: Callable[[], float] | None = None,
    views: Callable[[np.ndarray], PoolView] | None = None,
    stop: Callable[[], bool] | None = None,
    horizon: float | None = None,
    watch: Callable[[PoolReward], PoolReward] | None = None,
) -> PathAgent:
    """Train one preference-conditioned agent over λ ~ Dirichlet(1, …, 1) until ``agent.iterations`` new
    paths are scored (counted by ``spent``, default: the paths the path scorer has scored), or ``stop()`` (a
    training that stopped paying).

    ``views``: the pool each episode's λ routes over (``λ -> PoolView``, :func:`pool_view`: a search gives each
    λ its own merge, :func:`hm3.search.preference.conditioned_agent`); None: every λ routes over ``pool``, which
    is otherwise only where the environment starts. ``horizon``: what ``stop`` lets the training spend at least
    (its patience window; :func:`train_agent`). ``watch``: wraps the reward function of ``pool``'s view (a
    search records the λ each path is scored for; with ``views``, their reward functions are theirs to wrap)."""
    seed = recipe.seed if seed is None else seed
    path_scorer = (
        scorer
        if isinstance(scorer, PathScorer)
        else path_scorer_from_recipe(pool, scorer, recipe, calibration)
    )
    rewards = reward_from_recipe(recipe, scale)
    best_paths = BestPaths(path_scorer, rewards, InferencePath.identity(pool.merged_index, pool.num_layers))
    view = pool_view(recipe.agent, best_paths)
    if watch is not None:
        view = replace(view, reward_fn=watch(view.reward_fn))
    env = make_env(
        view,
        max_path_length(pool, recipe),
        len(recipe.objectives),
        recipe.agent,
        frame=recipe.architecture_level.frame,
        views=views,
    )
    counter = spent or (lambda: len(path_scorer.scored))
    return train_agent(env, recipe.agent, recipe.agent.iterations, seed, counter, stop=stop, horizon=horizon)
