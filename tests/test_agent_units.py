"""Unit checks of the path agent's pieces, on hand-made inputs (no model, no training).

* reward spreading (:mod:`hm3.routing.buffer`): exact R/n values over several episodes, episodes carried over
  from the previous rollout or left open at the buffer's end, one-step episodes, and GAE on the spread rewards;
* the Wolpertinger pick (:mod:`hm3.routing.wolpertinger`): the M' nearest actions, the critic's choice among
  them, the nearest one under a tied critic, the stop rule, and ε = 1's uniform draw among the neighbours;
* the GRU trajectory encoder (:mod:`hm3.routing.policy`): padding is masked, real steps are not, and a row's
  features do not depend on the other rows of its batch;
* the incumbent (:mod:`hm3.routing.env`): the anchor follows the best path so far, a deviation rejoins it, a
  deeper layer skips and a shallower one inserts; the untrained agent's σ and τ make about one edit per path;
* the training reward (:func:`hm3.routing.agent.training_reward`): scores each path once and pays a path's
  gain over the best path scored so far under the episode's λ (length penalty included), nothing otherwise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from statistics import NormalDist
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hm3.errors import BudgetSpent
from hm3.moo.reward import Reward
from hm3.recipe import AgentConfig
from hm3.routing.agent import BestPaths, scaled_to_budget, training_reward
from hm3.routing.buffer import SpreadRewardRolloutBuffer, spread_rewards
from hm3.routing.env import InferencePathEnv
from hm3.routing.path import InferencePath
from hm3.routing.policy import TrajectoryEncoder
from hm3.routing.scoring import PathScorer
from hm3.routing.wolpertinger import (
    WolpertingerWrapper,
    action_embeddings,
    deviation_probability,
    embed,
    exploration_std,
)

MODELS, LAYERS, SUMMARY, T_MAX = 3, 4, 5, 6  # K + 1 = 3 models (index 2 is the merged one) of 4 layers


def _env(max_length: int = T_MAX) -> InferencePathEnv:
    summaries = np.random.default_rng(0).normal(size=(MODELS, LAYERS, SUMMARY)).astype(np.float32)
    return InferencePathEnv(summaries, max_length, 2, preference=np.array([0.4, 0.6], np.float32))


# -- reward spreading --------------------------------------------------------------------------------------


def test_spread_rewards_gives_each_finished_episode_r_over_n_and_keeps_open_ones_at_zero() -> None:
    # 6 steps, 4 environments; R sits on each episode's final step, 0 elsewhere
    rewards = np.zeros((6, 4), np.float32)
    starts = np.zeros((6, 4), np.float32)
    # env 0: a 2-step episode (R=4), a one-step episode (R=3), then one left open at the buffer's end
    starts[[0, 2, 3], 0] = 1
    rewards[1, 0], rewards[2, 0] = 4.0, 3.0
    # env 1: an episode carried over with 2 earlier steps ends at step 2 (R=10, n=5), then a 3-step one (R=6)
    starts[3, 1] = 1
    rewards[2, 1], rewards[5, 1] = 10.0, 6.0
    # env 2: carried over with 1 earlier step, no start in this rollout, ends on the last step (R=7, n=7)
    rewards[5, 2] = 7.0
    # env 3: carried over with 4 earlier steps, still open at the end (its rewards are left as they are)
    rewards[2, 3] = 0.5
    dones = np.array([False, True, True, False])
    open_steps = np.array([0, 2, 1, 4])

    remaining = spread_rewards(rewards, starts, dones, open_steps)

    expected = np.array(
        [
            [2.0, 2.0, 3.0, 0.0, 0.0, 0.0],
            [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],
            [1.0] * 6,
            [0.0, 0.0, 0.5, 0.0, 0.0, 0.0],
        ],
        np.float32,
    ).T
    np.testing.assert_allclose(rewards, expected, rtol=0, atol=1e-6)
    assert remaining.tolist() == [3, 0, 0, 10]


def test_spread_rewards_ignores_the_carried_count_once_a_new_episode_starts() -> None:
    # the open count of the previous rollout belongs to the episode it left open, not to a fresh one
    rewards = np.array([[5.0], [0.0], [9.0]], np.float32)
    starts = np.array([[0.0], [1.0], [0.0]], np.float32)
    remaining = spread_rewards(rewards, starts, np.array([True]), np.array([4]))
    np.testing.assert_allclose(rewards[:, 0], [5.0 / 5, 4.5, 4.5])
    assert remaining.tolist() == [0]


def test_spread_rewards_keeps_the_total_of_episodes_inside_the_rollout() -> None:
    rng = np.random.default_rng(1)
    size = 40
    starts = np.zeros((size, 1), np.float32)
    starts[0] = 1
    starts[rng.choice(np.arange(1, size), 12, replace=False)] = 1
    ends = [*(np.flatnonzero(starts[:, 0])[1:] - 1), size - 1]
    rewards = np.zeros((size, 1), np.float32)
    rewards[ends, 0] = rng.normal(size=len(ends))
    before = rewards.copy()
    spread_rewards(rewards, starts, np.array([True]), np.array([0]))
    begins = np.flatnonzero(starts[:, 0])
    for begin, end in zip(begins, ends, strict=True):
        episode = rewards[begin : end + 1, 0]
        assert np.allclose(episode, episode[0])  # even
        assert episode.sum() == pytest.approx(float(before[end, 0]), abs=1e-5)  # the same total R


def _buffer(size: int, envs: int, gamma: float, gae_lambda: float) -> SpreadRewardRolloutBuffer:
    env = WolpertingerWrapper(_env())
    return SpreadRewardRolloutBuffer(
        size,
        env.observation_space,
        env.action_space,
        device="cpu",
        gamma=gamma,
        gae_lambda=gae_lambda,
        n_envs=envs,
    )


def _gae(
    rewards: np.ndarray,
    values: np.ndarray,
    starts: np.ndarray,
    last_values: np.ndarray,
    dones: np.ndarray,
    gamma: float,
    lam: float,
) -> np.ndarray:
    """Reference GAE(λ) returns (advantage + value), written out per environment."""
    size, envs = rewards.shape
    returns = np.zeros_like(rewards, dtype=np.float64)
    for env in range(envs):
        advantage = 0.0
        for t in reversed(range(size)):
            if t == size - 1:
                alive, following = 1.0 - float(dones[env]), last_values[env]
            else:
                alive, following = 1.0 - starts[t + 1, env], values[t + 1, env]
            delta = rewards[t, env] + gamma * following * alive - values[t, env]
            advantage = delta + gamma * lam * alive * advantage
            returns[t, env] = advantage + values[t, env]
    return returns


def test_buffer_computes_gae_returns_on_the_spread_rewards() -> None:
    gamma, lam = 0.9, 0.8
    buffer = _buffer(5, 2, gamma, lam)
    env = WolpertingerWrapper(_env())
    obs = {key: np.stack([value, value]) for key, value in env.path_env.observation([]).items()}
    # env 0: R=6 over 2 steps, R=3 over 2, a one-step R=5; env 1: one 5-step episode, R=8
    raw = np.array([[0, 0], [6, 0], [0, 0], [3, 0], [5, 8]], np.float32)
    starts = np.array([[1, 1], [0, 0], [1, 0], [0, 0], [1, 0]], np.float32)
    values = np.random.default_rng(2).normal(size=(5, 2)).astype(np.float32)
    for t in range(5):
        buffer.add(
            obs,
            np.zeros((2, env.action_space.shape[0]), np.float32),
            raw[t],
            starts[t],
            torch.as_tensor(values[t]),
            torch.zeros(2),
        )
    last_values, dones = np.array([0.5, -0.7], np.float32), np.array([True, True])
    buffer.compute_returns_and_advantage(torch.as_tensor(last_values), dones)

    spread = np.array([[3, 1.6], [3, 1.6], [1.5, 1.6], [1.5, 1.6], [5, 1.6]], np.float32)
    np.testing.assert_allclose(buffer.rewards, spread, atol=1e-6)
    expected = _gae(spread, values, starts, last_values, dones, gamma, lam)
    np.testing.assert_allclose(buffer.returns, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(buffer.advantages, expected - values, rtol=1e-5, atol=1e-5)


def test_buffer_remembers_open_steps_across_rollouts_and_resets() -> None:
    buffer = _buffer(4, 1, 0.99, 0.95)
    # rollout 1: an episode starts at step 0 and is still open after 4 steps
    buffer.rewards[:] = 0.0
    buffer.episode_starts[:] = np.array([[1], [0], [0], [0]], np.float32)
    buffer.compute_returns_and_advantage(torch.zeros(1), np.array([False]))
    np.testing.assert_allclose(buffer.rewards[:, 0], 0.0)
    assert buffer.open_steps.tolist() == [4]

    buffer.reset()  # SB3 resets the buffer at each rollout; the open count must survive it
    buffer.rewards[:] = np.array([[0], [12], [0], [0]], np.float32)  # ends after 6 steps in all: R/n = 2
    buffer.episode_starts[:] = np.array([[0], [0], [1], [0]], np.float32)
    buffer.compute_returns_and_advantage(torch.zeros(1), np.array([False]))
    np.testing.assert_allclose(buffer.rewards[:, 0], [2.0, 2.0, 0.0, 0.0])
    assert buffer.open_steps.tolist() == [2]


# -- the Wolpertinger pick ----------------------------------------------------------------------------------


def _preferring(target: tuple[int, int], calls: list[int] | None = None) -> Callable:
    """A critic that values the successor whose newest step is ``target`` at 1, every other one at 0."""

    def critic(batch: dict[str, np.ndarray]) -> np.ndarray:
        if calls is not None:
            calls.append(len(batch["models"]))
        newest = np.rint(batch["length"][:, 0] * T_MAX).astype(int) - 1
        rows = np.arange(len(newest))
        models = batch["models"][rows, newest] - 1
        layers = batch["layers"][rows, newest] - 1
        return ((models == target[0]) & (layers == target[1])).astype(np.float32)

    return critic


def _tied(batch: dict[str, np.ndarray]) -> np.ndarray:
    return np.zeros(len(batch["models"]), np.float32)


def _proto(delta: list[float] | None = None, stop: float = -1.0) -> np.ndarray:
    return np.array([*(delta or [0.0] * (MODELS + 1)), stop], np.float32)


def test_action_embeddings_place_layers_one_apart_and_models_sqrt2_apart() -> None:
    table = action_embeddings(MODELS, LAYERS)
    assert table.shape == (MODELS * LAYERS, MODELS + 1)
    env = _env()
    for m in range(MODELS):
        for layer in range(LAYERS):
            np.testing.assert_array_equal(table[env.encode(m, layer)], embed(m, layer, MODELS))
    assert np.linalg.norm(table[env.encode(0, 1)] - table[env.encode(0, 2)]) == pytest.approx(1.0)
    assert np.linalg.norm(table[env.encode(0, 1)] - table[env.encode(2, 1)]) == pytest.approx(np.sqrt(2))


def test_candidates_are_the_m_nearest_actions_nearest_first() -> None:
    wrapper = WolpertingerWrapper(_env(), neighbours=5)
    rng = np.random.default_rng(3)
    for _ in range(20):
        point = rng.uniform(-1, LAYERS, size=MODELS + 1).astype(np.float32)
        distances = np.linalg.norm(wrapper.embeddings - point, axis=1)
        options = wrapper.candidates(point)
        assert len(options) == 5
        assert set(options.tolist()) == set(np.argsort(distances)[:5].tolist())
        assert np.all(np.diff(distances[options]) >= 0)


def test_candidates_are_ordered_nearest_first_in_a_large_pool() -> None:
    # a pool large enough that a bare partition (argpartition) leaves the M' out of order
    summaries = np.zeros((10, 100, 1), np.float32)
    wrapper = WolpertingerWrapper(InferencePathEnv(summaries, 8, 2), neighbours=100)
    rng = np.random.default_rng(9)
    for _ in range(30):
        point = np.concatenate([rng.uniform(0, 1, 10), rng.uniform(0, 100, 1)]).astype(np.float32)
        distances = np.linalg.norm(wrapper.embeddings - point, axis=1)
        options = wrapper.candidates(point)
        np.testing.assert_array_equal(distances[options], np.sort(distances)[:100])


def test_neighbour_count_is_clamped_to_the_number_of_layer_actions() -> None:
    assert WolpertingerWrapper(_env(), neighbours=100).neighbours == MODELS * LAYERS
    assert WolpertingerWrapper(_env(), neighbours=0).neighbours == 1


def test_the_anchor_follows_the_incumbent_and_a_deviation_rejoins_it() -> None:
    wrapper = WolpertingerWrapper(_env(), neighbours=4, epsilon=0.0)
    wrapper.reset(seed=0)  # no start function: the incumbent is the merged model's identity path
    env = wrapper.path_env
    assert env.incumbent == InferencePath.identity(MODELS - 1, LAYERS)
    anchor, at_end = wrapper.anchor()
    np.testing.assert_array_equal(anchor, embed(MODELS - 1, 0, MODELS))
    assert not at_end
    assert wrapper.discrete_action(_proto()) == env.encode(MODELS - 1, 0)  # Δ = 0: the natural continuation
    env.step(env.encode(0, 0))  # another model's layer 0 replaces the merged one's
    np.testing.assert_array_equal(wrapper.anchor()[0], embed(MODELS - 1, 1, MODELS))  # rejoined
    env.step(env.encode(MODELS - 1, 3))  # a deeper layer: layers 1-2 are skipped (deleted)
    anchor, at_end = wrapper.anchor()
    np.testing.assert_array_equal(anchor, embed(MODELS - 1, LAYERS, MODELS))
    assert at_end  # the incumbent is rebuilt: stopping is the natural continuation


def test_a_shallower_layer_is_an_insertion_and_the_incumbent_continues_where_it_was() -> None:
    env = _env()
    incumbent = InferencePath(((2, 0), (1, 1), (2, 2), (2, 3)))
    env.reset(seed=0, options={"incumbent": incumbent})
    assert env.anchor_step() == (2, 0)
    env.step(env.encode(2, 0))
    env.step(env.encode(1, 1))
    assert env.anchor_step() == (2, 2)
    env.step(env.encode(0, 1))  # a repeat of layer 1 from model 0: inserted, the pointer stays
    assert env.anchor_step() == (2, 2)
    for step in ((2, 2), (2, 3)):
        env.step(env.encode(*step))
    assert env.anchor_step() is None
    assert env.steps == [(2, 0), (1, 1), (0, 1), (2, 2), (2, 3)]


def test_the_incumbent_comes_from_the_start_function_under_the_episode_preference() -> None:
    seen: list[np.ndarray] = []
    best = InferencePath(((1, 0), (2, 1), (2, 2), (2, 3)))

    def start(weights: np.ndarray) -> InferencePath:
        seen.append(weights)
        return best

    summaries = np.zeros((MODELS, LAYERS, SUMMARY), np.float32)
    env = InferencePathEnv(summaries, T_MAX, 2, start=start)  # λ drawn at each reset
    wrapper = WolpertingerWrapper(env, neighbours=4, epsilon=0.0)
    obs, _ = wrapper.reset(seed=3)
    np.testing.assert_array_equal(seen[-1], obs["preference"])
    for _ in range(LAYERS):
        _, _, terminated, _, _ = wrapper.step(_proto())  # Δ = 0 all along: the incumbent is rebuilt
        assert not terminated
    _, _, terminated, _, info = wrapper.step(_proto(stop=0.0))  # at the end, s = 0 > −τ stops
    assert terminated and info["path"] == best


def test_the_legacy_anchor_is_the_next_layer_of_the_last_steps_model() -> None:
    wrapper = WolpertingerWrapper(_env(), neighbours=4, epsilon=0.0, anchor="last_step")
    wrapper.reset(seed=0)
    anchor, at_end = wrapper.anchor()
    np.testing.assert_array_equal(anchor, embed(MODELS - 1, 0, MODELS))
    assert not at_end
    env = wrapper.path_env
    env.step(env.encode(0, 1))
    anchor, at_end = wrapper.anchor()
    np.testing.assert_array_equal(anchor, embed(0, 2, MODELS))
    assert not at_end
    assert wrapper.discrete_action(_proto()) == env.encode(0, 2)
    env.step(env.encode(1, LAYERS - 1))
    assert wrapper.anchor()[1]  # a model's final layer
    with pytest.raises(ValueError, match="anchor"):
        WolpertingerWrapper(_env(), anchor="nearest")


def test_greedy_pick_is_the_critics_best_among_the_neighbours() -> None:
    # empty path: anchor (2, 0); its 4 nearest are (2,0), (2,1) and, √2 away, (0,0) and (1,0)
    env = _env()
    neighbours = {env.encode(2, 0), env.encode(2, 1), env.encode(0, 0), env.encode(1, 0)}
    wrapper = WolpertingerWrapper(env, neighbours=4, epsilon=0.0, critic=_preferring((1, 0)))
    wrapper.reset(seed=0)
    assert set(wrapper.candidates(wrapper.anchor()[0]).tolist()) == neighbours
    assert wrapper.discrete_action(_proto()) == env.encode(1, 0)
    assert wrapper.discrete_action(_proto(), greedy=True) == env.encode(1, 0)
    wrapper.critic = _preferring((2, 1))
    assert wrapper.discrete_action(_proto()) == env.encode(2, 1)
    wrapper.critic = _preferring((0, 0))
    assert wrapper.discrete_action(_proto()) == env.encode(0, 0)
    # a critic that prefers an action outside the M' cannot get it: the candidates tie, the nearest wins
    wrapper.critic = _preferring((2, 3))
    assert wrapper.discrete_action(_proto()) == env.encode(2, 0)


def test_greedy_pick_after_a_step_ranks_the_successors_of_the_current_path() -> None:
    env = _env()
    wrapper = WolpertingerWrapper(
        env, neighbours=3, epsilon=0.0, critic=_preferring((0, 3)), anchor="last_step"
    )
    wrapper.reset(seed=0)
    env.step(env.encode(0, 0))
    env.step(env.encode(0, 1))
    # anchor (0, 2); Δ moves the proto-action 0.4 layer deeper: (0,2), (0,3), (0,1) are nearest, in that order
    proto = _proto([0, 0, 0, 0.4])
    options = wrapper.candidates(wrapper.anchor()[0] + proto[:-1])
    assert options.tolist() == [env.encode(0, 2), env.encode(0, 3), env.encode(0, 1)]
    assert wrapper.discrete_action(proto) == env.encode(0, 3)  # not the nearest (0, 2)
    wrapper.critic = _preferring((0, 1))
    assert wrapper.discrete_action(proto) == env.encode(0, 1)
    wrapper.critic = _preferring((0, 0))  # a step already taken, not a candidate: the nearest wins
    assert wrapper.discrete_action(proto) == env.encode(0, 2)


@pytest.mark.parametrize("critic", [None, _tied])
def test_an_untrained_or_tied_critic_takes_the_nearest_action(critic) -> None:
    env = _env()
    wrapper = WolpertingerWrapper(env, neighbours=6, epsilon=0.0, critic=critic)
    wrapper.reset(seed=0)
    rng = np.random.default_rng(4)
    for _ in range(20):
        delta = rng.normal(scale=1.5, size=MODELS + 1).astype(np.float32)
        point = wrapper.anchor()[0] + delta
        nearest = int(np.argmin(np.linalg.norm(wrapper.embeddings - point, axis=1)))
        assert wrapper.discrete_action(_proto(delta.tolist())) == nearest


@pytest.mark.parametrize("models, layers", [(3, 4), (4, 12), (4, 32)])
def test_the_untrained_agent_edits_about_one_step_per_path(models, layers) -> None:
    std = exploration_std(models, layers)
    assert deviation_probability(std, models, layers) == pytest.approx(1 / layers, abs=0.01)
    assert deviation_probability(2 * std, models, layers) > 2 / layers  # σ is not trivially small
    env = InferencePathEnv(np.zeros((models, layers, SUMMARY), np.float32), 2 * layers, 2)
    wrapper = WolpertingerWrapper(env, neighbours=8, epsilon=0.0)
    assert wrapper.initial_std == std
    tau = wrapper.stop_threshold
    score = NormalDist(0.0, std)  # the untrained actor's stop score
    assert 1 - score.cdf(tau) == pytest.approx(1 / layers**2)  # an early stop, per step
    assert score.cdf(-tau) == pytest.approx(1 / layers**2)  # a step past the incumbent's end
    # sampled: paths of the untrained actor against the identity incumbent
    rng = np.random.default_rng(0)
    identity = InferencePath.identity(models - 1, layers)
    edits = []
    for episode in range(300):
        wrapper.reset(seed=episode)
        while True:
            proto = rng.normal(0.0, std, size=wrapper.action_space.shape).astype(np.float32)
            _, _, terminated, _, info = wrapper.step(proto)
            if terminated:
                break
        path = info["path"]
        edits.append(path.edit_distance(identity))
    assert 0.5 < np.mean(edits) < 2.5, np.mean(edits)
    assert np.mean([e == 0 for e in edits]) > 0.2  # the incumbent itself is common


def test_stop_rule_uses_tau_before_the_incumbents_end_and_minus_tau_after_it() -> None:
    env = _env()
    calls: list[int] = []
    wrapper = WolpertingerWrapper(
        env, neighbours=4, epsilon=0.0, stop_threshold=0.4, critic=_preferring((0, 0), calls)
    )
    wrapper.reset(seed=0)
    stop = env.stop_action
    assert wrapper.discrete_action(_proto(stop=0.41)) == stop
    assert wrapper.discrete_action(_proto(stop=0.39)) != stop
    assert wrapper.discrete_action(_proto(stop=-0.39)) != stop
    env.step(env.encode(1, 1))  # mid-path
    assert wrapper.discrete_action(_proto(stop=0.41)) == stop
    assert wrapper.discrete_action(_proto(stop=-0.39)) != stop
    env.step(env.encode(1, LAYERS - 1))  # the incumbent's last layer: stopping is the natural continuation
    assert wrapper.discrete_action(_proto(stop=-0.39)) == stop
    assert wrapper.discrete_action(_proto(stop=-0.41)) != stop
    calls.clear()
    assert wrapper.discrete_action(_proto(stop=2.0)) == stop
    assert calls == []  # stopping is the actor's decision, never ranked by the critic


def test_wrapper_step_takes_the_discrete_action_and_reports_it() -> None:
    env = _env()
    wrapper = WolpertingerWrapper(env, neighbours=4, epsilon=0.0, critic=_preferring((0, 0)))
    wrapper.reset(seed=0)
    _, _, terminated, _, info = wrapper.step(_proto())
    assert info["discrete_action"] == env.encode(0, 0) and env.steps == [(0, 0)] and not terminated
    _, _, terminated, _, info = wrapper.step(_proto(stop=3.0))
    assert info["discrete_action"] == env.stop_action and terminated
    assert info["path"] == InferencePath(((0, 0),))


def test_epsilon_one_draws_uniformly_among_the_neighbours_and_greedy_overrides_it() -> None:
    env = _env()
    wrapper = WolpertingerWrapper(env, neighbours=4, epsilon=1.0, critic=_preferring((1, 0)))
    wrapper.reset(seed=5)
    neighbours = set(wrapper.candidates(wrapper.anchor()[0]).tolist())
    draws = Counter(wrapper.discrete_action(_proto()) for _ in range(400))
    assert set(draws) <= neighbours
    assert set(draws) == neighbours  # every one of the M' is drawn, not only the critic's or the nearest
    assert all(60 <= count <= 140 for count in draws.values()), draws  # about 100 each
    assert {wrapper.discrete_action(_proto(), greedy=True) for _ in range(20)} == {env.encode(1, 0)}


def test_epsilon_draws_are_reproducible_from_the_reset_seed() -> None:
    def draws(seed: int) -> list[int]:
        wrapper = WolpertingerWrapper(_env(), neighbours=4, epsilon=0.5, critic=_preferring((1, 0)))
        wrapper.reset(seed=seed)
        return [wrapper.discrete_action(_proto()) for _ in range(50)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert len(set(draws(7))) > 1


# -- the trajectory encoder ---------------------------------------------------------------------------------


def _encoder() -> tuple[InferencePathEnv, TrajectoryEncoder]:
    env = _env()
    torch.manual_seed(0)
    return env, TrajectoryEncoder(env.observation_space, hidden_size=16).eval()


def _batch(observations: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {key: torch.as_tensor(np.stack([o[key] for o in observations])) for key in observations[0]}


def _features(encoder: TrajectoryEncoder, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
    with torch.no_grad():
        return encoder(_batch(observations)).numpy()


def _noisy_padding(
    obs: dict[str, np.ndarray], length: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The observation with random layer indices and summaries in its padding (``models`` stays 0 there)."""
    out = {key: value.copy() for key, value in obs.items()}
    out["layers"][length:] = rng.integers(1, LAYERS + 1, size=T_MAX - length)
    out["summaries"][length:] = rng.normal(scale=3.0, size=(T_MAX - length, SUMMARY))
    return out


PATHS = [[], [(0, 1)], [(2, 0), (2, 1), (1, 2)], [(1, 0), (0, 3), (0, 3), (2, 2), (1, 1)]]


@pytest.mark.parametrize("steps", PATHS, ids=lambda s: f"T{len(s)}")
def test_encoder_features_ignore_whatever_fills_the_padding(steps: list[tuple[int, int]]) -> None:
    env, encoder = _encoder()
    obs = env.observation(steps)
    rng = np.random.default_rng(6)
    noisy = [_noisy_padding(obs, len(steps), rng) for _ in range(3)]
    features = _features(encoder, [obs, *noisy])
    assert not np.allclose(noisy[0]["summaries"], obs["summaries"])  # the padding did change
    for row in features[1:]:
        np.testing.assert_allclose(row, features[0], atol=1e-6)


def test_encoder_gives_an_empty_path_a_zero_trajectory_state() -> None:
    env, encoder = _encoder()
    obs = _noisy_padding(env.observation([]), 0, np.random.default_rng(7))
    features = _features(encoder, [obs])[0]
    np.testing.assert_array_equal(features[:16], 0.0)
    assert np.any(features[16:32] != 0)  # the preference embedding


def test_encoder_features_change_when_a_real_step_changes() -> None:
    env, encoder = _encoder()
    steps = [(2, 0), (2, 1), (1, 2)]
    base = _features(encoder, [env.observation(steps)])[0]
    variants = []
    for position in range(len(steps)):
        for key in ("models", "layers", "summaries"):
            obs = env.observation(steps)
            if key == "summaries":
                obs[key][position] += 1.0
            else:
                obs[key][position] = obs[key][position] % (MODELS if key == "models" else LAYERS) + 1
            variants.append(obs)
    for feature in _features(encoder, variants):
        assert np.abs(feature[:16] - base[:16]).max() > 1e-4  # the trajectory part differs


def test_encoder_features_of_a_row_do_not_depend_on_its_batch() -> None:
    env, encoder = _encoder()
    rng = np.random.default_rng(8)
    observations = [_noisy_padding(env.observation(s), len(s), rng) for s in PATHS]
    observations.append(env.observation([(m, layer) for m in (0, 1) for layer in (0, 1, 2)]))  # T_max steps
    mixed = _features(encoder, observations)
    reversed_batch = _features(encoder, observations[::-1])[::-1]
    for obs, row, row_reversed in zip(observations, mixed, reversed_batch, strict=True):
        alone = _features(encoder, [obs])[0]
        np.testing.assert_allclose(row, alone, atol=1e-5)
        np.testing.assert_allclose(row_reversed, alone, atol=1e-5)
    assert not np.allclose(mixed[1, :16], mixed[2, :16])  # distinct paths, distinct states


# -- the training reward ------------------------------------------------------------------------------------


def _scored(
    table: dict[InferencePath, dict[str, float]],
) -> tuple[PathScorer, Counter]:
    pool = SimpleNamespace(merged_index=MODELS - 1, num_layers=LAYERS)
    calls: Counter = Counter()

    def evaluate(path: InferencePath, build: Callable) -> dict[str, float]:
        calls[path] += 1
        return table[path]

    return PathScorer(pool=pool, evaluate=evaluate), calls


REFERENCE = InferencePath.identity(MODELS - 1, LAYERS)
SHORT = InferencePath(((0, 0), (1, 1)))
LONG = InferencePath(((0, 0), (0, 1), (2, 2), (1, 3), (1, 3), (2, 3)))
TABLE = {
    REFERENCE: {"acc": 0.50, "loss": 2.0},
    SHORT: {"acc": 0.40, "loss": 1.0},
    LONG: {"acc": 0.70, "loss": 3.0},
}
REWARD = Reward(objectives=("acc", "loss"), length_penalty=0.01, higher_is_better=(True, False))


def _reward_fn(path_scorer: PathScorer):
    best_paths = BestPaths(path_scorer, REWARD, REFERENCE)
    return training_reward(best_paths), best_paths


def test_training_reward_is_the_gain_over_the_best_path_so_far_with_length_penalty() -> None:
    path_scorer, _ = _scored(TABLE)
    reward_fn, best_paths = _reward_fn(path_scorer)
    lam = np.array([0.3, 0.7], np.float32)  # loss matters most: SHORT beats the reference, LONG does not
    # by hand: oriented scores (acc, −loss), λ·f − β1·T
    reference = 0.3 * 0.50 - 0.7 * 2.0 - 0.01 * LAYERS
    short = 0.3 * 0.40 - 0.7 * 1.0 - 0.01 * 2
    long = 0.3 * 0.70 - 0.7 * 3.0 - 0.01 * 6
    assert reward_fn(LONG, lam)[0] == 0.0  # worse than the reference: no gain
    reward, scores = reward_fn(SHORT, lam)
    assert scores == TABLE[SHORT]
    assert reward == pytest.approx(short - reference, abs=1e-6)
    assert reward == pytest.approx(
        REWARD.reward(TABLE[SHORT], lam, len(SHORT)) - REWARD.reward(TABLE[REFERENCE], lam, LAYERS), abs=1e-9
    )
    assert best_paths.best(lam) == (SHORT, pytest.approx(short, abs=1e-6))
    assert reward_fn(SHORT, lam)[0] == 0.0  # a revisit earns nothing: SHORT is the best now
    assert reward_fn(REFERENCE, lam)[0] == 0.0
    assert long < reference


def test_training_rewards_of_a_search_sum_to_its_result() -> None:
    path_scorer, _ = _scored(TABLE)
    reward_fn, best_paths = _reward_fn(path_scorer)
    lam = np.array([0.9, 0.1], np.float32)  # acc matters most: LONG > REFERENCE > SHORT
    total = sum(reward_fn(path, lam)[0] for path in (SHORT, REFERENCE, LONG, SHORT, LONG))
    plain = {p: REWARD.reward(TABLE[p], lam, len(p)) for p in TABLE}
    assert total == pytest.approx(max(plain.values()) - plain[REFERENCE], abs=1e-6)
    assert best_paths.best(lam)[0] == LONG


def test_training_reward_scores_each_path_once() -> None:
    path_scorer, calls = _scored(TABLE)
    reward_fn, _ = _reward_fn(path_scorer)
    lam = np.array([0.5, 0.5], np.float32)
    reward_fn(SHORT, lam)
    reward_fn(SHORT, lam)
    reward_fn(LONG, lam)
    reward_fn(SHORT, np.array([0.9, 0.1], np.float32))
    reward_fn(REFERENCE, lam)
    assert calls == Counter({SHORT: 1, LONG: 1, REFERENCE: 1})
    assert set(path_scorer.scored) == {SHORT, LONG, REFERENCE}


def test_the_best_path_follows_the_episode_preference() -> None:
    path_scorer, _ = _scored(TABLE)
    reward_fn, best_paths = _reward_fn(path_scorer)
    for path in TABLE:
        reward_fn(path, np.array([0.5, 0.5], np.float32))
    for weights in ([1.0, 0.0], [0.0, 1.0], [0.3, 0.7]):
        lam = np.array(weights, np.float32)
        plain = {p: REWARD.reward(TABLE[p], lam, len(p)) for p in TABLE}
        assert best_paths.best(lam)[0] == max(plain, key=plain.get)
    assert best_paths.best(np.array([1.0, 0.0]))[0] == LONG  # acc-only
    assert best_paths.best(np.array([0.0, 1.0]))[0] == SHORT  # loss-only


def test_ranked_paths_are_kept_in_order_as_paths_are_scored_and_rerank_under_other_weights() -> None:
    tie = InferencePath(((0, 0), (1, 1), (2, 2), (2, 3)))  # same scores and length as the reference
    table = {**TABLE, tie: dict(TABLE[REFERENCE])}
    path_scorer, _ = _scored(table)
    _, best_paths = _reward_fn(path_scorer)
    accuracy, loss = np.array([1.0, 0.0]), np.array([0.0, 1.0])

    def by_hand(lam: np.ndarray) -> list[InferencePath]:
        scored = list(path_scorer.scored)
        plain = [REWARD.reward(table[p], lam, len(p)) for p in scored]
        return [scored[i] for i in sorted(range(len(scored)), key=lambda i: (-plain[i], i))]

    assert best_paths.ranked(accuracy) == [REFERENCE]  # the reference is scored first
    for path in (SHORT, tie, LONG):
        path_scorer.score(path)
        assert best_paths.ranked(accuracy) == by_hand(accuracy)  # the new path inserted in its place
    assert best_paths.ranked(accuracy) == [LONG, REFERENCE, tie, SHORT]  # a tie: the first scored first
    assert best_paths.ranked(loss) == by_hand(loss) == [SHORT, REFERENCE, tie, LONG]
    assert best_paths.ranked(accuracy) == [LONG, REFERENCE, tie, SHORT]


# -- successive halving: a path screened on part of the documents first ---------------------------------


def _screening(
    screen_table: dict[InferencePath, dict[str, float]], spend: int | None = None
) -> tuple[PathScorer, Counter, Counter]:
    """A path scorer over :data:`TABLE` that screens on ``screen_table``; ``spend``: full scorings the budget
    pays for (then :class:`BudgetSpent`)."""
    path_scorer, full = _scored(TABLE)
    inner = path_scorer.evaluate
    screens: Counter = Counter()

    def evaluate(path: InferencePath, build: Callable) -> dict[str, float]:
        if spend is not None and sum(full.values()) >= spend:
            raise BudgetSpent("spent")
        return inner(path, build)

    def screen(path: InferencePath, build: Callable) -> dict[str, float]:
        screens[path] += 1
        return screen_table[path]

    path_scorer.evaluate, path_scorer.screen_evaluate = evaluate, screen
    return path_scorer, full, screens


def test_a_path_that_loses_on_the_screen_is_never_scored_fully_and_earns_nothing() -> None:
    lam = np.array([0.9, 0.1], np.float32)  # acc matters most: LONG beats the reference on the full split
    # on the screen documents LONG looks worse than the reference: it is dropped there, unscored
    screen_table = {REFERENCE: {"acc": 0.6, "loss": 2.0}, LONG: {"acc": 0.1, "loss": 3.0}}
    path_scorer, full, screens = _screening(screen_table)
    reward_fn, best_paths = _reward_fn(path_scorer)
    assert reward_fn(LONG, lam) == (0.0, screen_table[LONG])
    assert LONG not in path_scorer.scored and LONG in path_scorer.screened
    assert best_paths.best(lam)[0] == REFERENCE
    assert reward_fn(LONG, lam)[0] == 0.0  # a revisit: no second screen
    assert screens == Counter({LONG: 1, REFERENCE: 1}) and full == Counter({REFERENCE: 1})


def test_a_path_at_least_as_good_on_the_screen_is_scored_fully_and_paid_its_full_gain() -> None:
    lam = np.array([0.9, 0.1], np.float32)
    screen_table = {REFERENCE: {"acc": 0.6, "loss": 2.0}, LONG: {"acc": 0.65, "loss": 2.0}}
    path_scorer, full, screens = _screening(screen_table)
    reward_fn, best_paths = _reward_fn(path_scorer)
    reward, scores = reward_fn(LONG, lam)
    assert scores == TABLE[LONG]  # the full split's scores, not the screen's
    plain = {p: REWARD.reward(TABLE[p], lam, len(p)) for p in TABLE}
    assert reward == pytest.approx(plain[LONG] - plain[REFERENCE], abs=1e-6)
    assert best_paths.best(lam)[0] == LONG
    assert full == Counter({REFERENCE: 1, LONG: 1})
    # the next path is screened against LONG's screen scores (the best path now), which it is screened for
    screen_table[SHORT] = {"acc": 0.1, "loss": 1.0}
    assert reward_fn(SHORT, lam)[0] == 0.0 and SHORT not in path_scorer.scored
    assert screens == Counter({REFERENCE: 1, LONG: 1, SHORT: 1})


def test_a_path_the_budget_cannot_score_fully_earns_nothing_and_ends_nothing() -> None:
    lam = np.array([0.9, 0.1], np.float32)
    screen_table = {REFERENCE: {"acc": 0.6, "loss": 2.0}, LONG: {"acc": 0.65, "loss": 2.0}}
    path_scorer, full, _ = _screening(screen_table, spend=1)  # the reference only
    reward_fn, best_paths = _reward_fn(path_scorer)
    assert reward_fn(LONG, lam) == (0.0, {})
    assert LONG not in path_scorer.scored and best_paths.best(lam)[0] == REFERENCE


# -- PPO's rollout scaled to the budget ------------------------------------------------------------------


def test_ppo_rollout_is_scaled_to_the_budget_unless_the_recipe_sets_it() -> None:
    config = AgentConfig()
    small = scaled_to_budget(config, candidates=14, episode_length=13)
    assert small.n_steps == 22 and small.batch_size == 22  # 182 expected steps: 8 full-batch updates
    assert scaled_to_budget(config, 200, 13).n_steps == 325
    assert scaled_to_budget(config, 2, 13).n_steps == 16  # never below the floor
    assert scaled_to_budget(config, 1000, 13).n_steps == 1024  # large budgets update more often than 8 times
    fixed = AgentConfig(n_steps=128, batch_size=32)
    assert (scaled_to_budget(fixed, 14, 13).n_steps, scaled_to_budget(fixed, 14, 13).batch_size) == (128, 32)
    assert scaled_to_budget(AgentConfig(batch_size=64), 14, 13).batch_size == 22  # at most one rollout


def test_ppo_rollout_is_scaled_to_the_patience_window_where_the_search_may_stop_sooner() -> None:
    config = AgentConfig()
    # an edit agent (one decision per episode) with 1000 paths but a window of 56: 8 updates by the window
    assert scaled_to_budget(config, 1000, 1).n_steps == 125
    assert scaled_to_budget(config, 1000, 1, horizon=56).n_steps == 16  # 7 per update: the floor
    assert scaled_to_budget(config, 1000, 13, horizon=200).n_steps == 325
    assert scaled_to_budget(config, 14, 13, horizon=200).n_steps == 22  # a window past the budget: the budget
    assert scaled_to_budget(AgentConfig(n_steps=128), 1000, 1, horizon=56).n_steps == 128  # the recipe's own
