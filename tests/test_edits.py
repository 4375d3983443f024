"""The edit agent (``agent.actions: edit``): its edits, its masks, its untrained prior, its signed reward with
screening, and a saved agent that acts as it did."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hm3.errors import BudgetSpent, UserError
from hm3.moo.reward import Reward
from hm3.recipe import AgentConfig
from hm3.routing.agent import BestPaths, PathAgent, carry_agent, make_env, rollout, train_agent
from hm3.routing.edits import DELETE, REPEAT, EditEnv, EditSpace, build_edit_ppo, edit_reward
from hm3.routing.env import PoolView
from hm3.routing.path import InferencePath
from hm3.routing.scoring import PathScorer

MODELS, LAYERS, T_MAX = 3, 4, 6  # K + 1 = 3 models (index 2 is the merged one) of 4 layers
IDENTITY = InferencePath.identity(MODELS - 1, LAYERS)
SUMMARIES = np.random.default_rng(0).standard_normal((MODELS, LAYERS, 5)).astype(np.float32)


def test_each_action_is_one_edit_of_the_incumbent_named_by_position_and_operation() -> None:
    space = EditSpace(MODELS, LAYERS, T_MAX)
    assert space.ops == MODELS + 2 and space.size == T_MAX * (MODELS + 2)
    assert space.decode(1 * space.ops + 0) == (1, 0)
    assert space.decode(2 * space.ops + MODELS) == (2, DELETE)
    assert space.decode(3 * space.ops + MODELS + 1) == (3, REPEAT)
    # replace step 1 by model 0's layer at the same depth
    assert space.apply(IDENTITY, 1 * space.ops + 0).steps == ((2, 0), (0, 1), (2, 2), (2, 3))
    assert space.apply(IDENTITY, 2 * space.ops + MODELS).steps == ((2, 0), (2, 1), (2, 3))
    assert space.apply(IDENTITY, 3 * space.ops + MODELS + 1).steps == ((2, 0), (2, 1), (2, 2), (2, 3), (2, 3))
    # no edit, or a path outside 1..T_max: invalid
    assert space.apply(IDENTITY, 0 * space.ops + 2) is None  # model 2 already holds step 0
    assert space.apply(IDENTITY, 4 * space.ops + 0) is None  # no step 4
    assert space.apply(InferencePath(((0, 1),)), 0 * space.ops + MODELS) is None  # deleting the only step
    full = InferencePath(((2, 0),) * T_MAX)
    assert space.apply(full, 0 * space.ops + MODELS + 1) is None  # a seventh step


def test_the_mask_is_exactly_the_valid_edits() -> None:
    space = EditSpace(MODELS, LAYERS, T_MAX)
    for path in (IDENTITY, InferencePath(((0, 1),)), InferencePath(((1, 0),) * T_MAX)):
        mask = space.mask(path)
        assert [space.apply(path, a) is not None for a in range(space.size)] == mask.tolist()
    # identity of 4 steps: 2 replacements + delete + repeat at each of its 4 positions
    assert space.mask(IDENTITY).sum() == 4 * (MODELS - 1 + 2)


def test_edits_whose_outcome_is_known_are_masked_until_none_is_new() -> None:
    space = EditSpace(MODELS, LAYERS, T_MAX)
    delete_first = space.apply(IDENTITY, 0 * space.ops + MODELS)
    env = EditEnv(SUMMARIES, T_MAX, 2, known=lambda path: path == delete_first)
    env.reset(seed=0)
    mask = env.action_masks()
    assert not mask[0 * space.ops + MODELS] and mask.sum() == space.mask(IDENTITY).sum() - 1
    env.known = lambda path: True  # every edit known: the valid ones again (a revisit is free)
    assert (env.action_masks() == space.mask(IDENTITY)).all()


def test_the_incumbent_is_the_best_path_with_a_new_edit() -> None:
    space = EditSpace(MODELS, LAYERS, T_MAX)
    best = space.apply(IDENTITY, 1 * space.ops + 0)
    exhausted = {space.apply(best, a) for a in np.flatnonzero(space.mask(best))}
    env = EditEnv(
        SUMMARIES, T_MAX, 2, known=lambda path: path in exhausted, ranked=lambda lam: [best, IDENTITY]
    )
    env.reset(seed=0)
    assert env.incumbent == IDENTITY  # every edit of the best is known: the next best is edited
    exhausted.clear()
    env.reset(seed=0)
    assert env.incumbent == best


def test_the_untrained_edit_agent_is_uniform_over_the_valid_edits_and_never_picks_an_invalid_one() -> None:
    env = EditEnv(SUMMARIES, T_MAX, 2, preference=np.array([0.5, 0.5], np.float32))
    model = build_edit_ppo(env, AgentConfig(actions="edit"), seed=0)
    observation, _ = env.reset(seed=0)
    mask = env.action_masks()
    tensor, _ = model.policy.obs_to_tensor(observation)
    probabilities = model.policy.get_distribution(tensor, action_masks=mask).distribution.probs
    probabilities = probabilities.detach().numpy()[0]
    np.testing.assert_allclose(probabilities[mask], 1 / mask.sum(), rtol=1e-5)
    assert probabilities[~mask].max() == 0
    picks = {int(model.predict(observation, action_masks=mask)[0]) for _ in range(200)}
    assert picks <= set(np.flatnonzero(mask)) and len(picks) > mask.sum() // 2


# -- the signed reward, with successive halving ----------------------------------------------------------------

EDITED = InferencePath(((2, 0), (0, 1), (2, 2), (2, 3)))
SHORT = InferencePath(((2, 0), (2, 1), (2, 3)))
TABLE = {IDENTITY: {"acc": 0.5}, EDITED: {"acc": 0.7}, SHORT: {"acc": 0.2}}
REWARD = Reward(objectives=("acc",), length_penalty=0.0)


def _best_paths(screen: dict | None = None, spend: int | None = None) -> tuple[BestPaths, Counter]:
    pool = SimpleNamespace(merged_index=MODELS - 1, num_layers=LAYERS)
    full: Counter = Counter()

    def evaluate(path: InferencePath, build: Callable) -> dict[str, float]:
        if spend is not None and sum(full.values()) >= spend:
            raise BudgetSpent("spent")
        full[path] += 1
        return TABLE[path]

    scorer = PathScorer(pool=pool, evaluate=evaluate)
    if screen is not None:
        scorer.screen_evaluate = lambda path, build: screen[path]
    return BestPaths(scorer, REWARD, IDENTITY), full


def test_the_edit_agent_trains_at_its_own_default_rate_unless_the_recipe_sets_one() -> None:
    """A recipe without ``agent.learning_rate`` trains the edit agent at 3e-3 (a search gives it ~8 PPO updates;
    at the path agent's 3e-4 they barely move it) and the path agent at 3e-4; a rate in the recipe wins."""
    env = EditEnv(SUMMARIES, T_MAX, 2, preference=np.array([0.5, 0.5], np.float32))
    assert build_edit_ppo(env, AgentConfig(actions="edit"), seed=0).learning_rate == 3e-3
    assert build_edit_ppo(env, AgentConfig(actions="edit", learning_rate=1e-4), seed=0).learning_rate == 1e-4
    assert AgentConfig().adam_learning_rate == 3e-4  # the paper's path agent
    assert AgentConfig(actions="path", learning_rate=2e-3).adam_learning_rate == 2e-3
    # the recipe keeps "none given"; the rate is resolved where the agent is built
    assert AgentConfig(actions="edit").model_dump()["learning_rate"] is None
    # 0 is the untrained policy alone (the ablation); a negative rate is no rate
    assert build_edit_ppo(env, AgentConfig(actions="edit", learning_rate=0), seed=0).learning_rate == 0
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        AgentConfig(learning_rate=-1e-3)


def test_the_edit_reward_is_the_change_from_the_path_it_edits() -> None:
    best_paths, _ = _best_paths()
    reward_fn = edit_reward(best_paths)
    lam = np.array([1.0], np.float32)
    assert reward_fn(EDITED, lam)[0] == pytest.approx(0.2)  # EDITED is the best now
    # an edit of the second best (the identity, 0.5) that scores 0.2 is paid -0.3, not -0.5
    assert reward_fn(SHORT, lam, IDENTITY)[0] == pytest.approx(-0.3)


def test_the_edit_reward_is_the_signed_change_and_a_better_path_becomes_the_incumbent() -> None:
    best_paths, _ = _best_paths()
    reward_fn = edit_reward(best_paths)
    lam = np.array([1.0], np.float32)
    assert reward_fn(SHORT, lam)[0] == pytest.approx(-0.3)  # a loss is paid as a loss, not as 0
    assert reward_fn(EDITED, lam) == (pytest.approx(0.2), TABLE[EDITED])
    assert best_paths.best(lam)[0] == EDITED
    assert reward_fn(SHORT, lam)[0] == pytest.approx(-0.5)  # against the new incumbent


def test_a_screened_out_edit_is_paid_its_screen_loss_and_never_scored_fully() -> None:
    screen = {IDENTITY: {"acc": 0.6}, SHORT: {"acc": 0.1}, EDITED: {"acc": 0.65}}
    best_paths, full = _best_paths(screen)
    reward_fn = edit_reward(best_paths)
    lam = np.array([1.0], np.float32)
    assert reward_fn(SHORT, lam) == (pytest.approx(-0.5), screen[SHORT])
    assert reward_fn(EDITED, lam) == (pytest.approx(0.2), TABLE[EDITED])  # promoted: the full change
    assert full == Counter({IDENTITY: 1, EDITED: 1})


def test_an_edit_the_budget_cannot_pay_for_earns_nothing() -> None:
    best_paths, _ = _best_paths(spend=1)
    assert edit_reward(best_paths)(EDITED, np.array([1.0], np.float32)) == (0.0, {})


# -- training, the greedy rollout, save and reload ---------------------------------------------------------------


def test_a_trained_edit_agent_prefers_the_edit_that_pays_and_acts_the_same_after_reload(
    tmp_path: Path,
) -> None:
    """On a toy reward where only replacing a layer by model 0's pays, the trained policy's greedy edit is such a
    replacement (its prior is uniform over 16 edits, 4 of which are); the reloaded agent picks the same."""
    lam = np.array([0.5, 0.5], np.float32)
    episodes = Counter()

    def reward_fn(path: InferencePath, weights: np.ndarray, incumbent) -> tuple[float, dict[str, float]]:
        episodes["all"] += 1  # counted as spent: training ends after 300 episodes
        return sum(0.5 if model == 0 else -0.2 for model, _ in path.steps if model != 2) - 0.1 * abs(
            len(path) - LAYERS
        ), {}

    env = EditEnv(SUMMARIES, T_MAX, 2, reward_fn=reward_fn, preference=lam)
    config = AgentConfig(actions="edit", learning_rate=3e-3, n_steps=32, n_epochs=8)
    agent = train_agent(env, config, candidates=300, seed=0, scored=lambda: float(episodes["all"]))
    greedy = rollout(agent, lam, IDENTITY)
    assert greedy != IDENTITY and sum(model == 0 for model, _ in greedy.steps) == 1
    agent.save(tmp_path / "agent")
    reloaded = PathAgent.load(tmp_path / "agent")
    assert reloaded.config is not None and reloaded.config.actions == "edit"
    assert rollout(reloaded, lam, IDENTITY) == greedy


def test_a_carried_edit_agent_goes_on_from_what_it_learnt_on_another_pool() -> None:
    """An edit agent trained on one pool, carried to another preference's pool (other summaries, the same zoo's
    shape): the same PPO goes on training there, observing the new pool, and keeps what it learnt (its greedy
    edit there is already one that pays); carried twice with one seed it trains the same; a path agent, or an
    agent over a pool of another shape, is refused in one line."""
    lam = np.array([0.5, 0.5], np.float32)
    spent = Counter()

    def reward_fn(path: InferencePath, weights: np.ndarray, incumbent) -> tuple[float, dict[str, float]]:
        spent["all"] += 1
        return sum(0.5 if model == 0 else -0.2 for model, _ in path.steps if model != 2), {}

    config = AgentConfig(actions="edit", learning_rate=3e-3, n_steps=32, n_epochs=8)
    first = EditEnv(SUMMARIES, T_MAX, 2, reward_fn=reward_fn, preference=lam)
    agent = train_agent(first, config, candidates=300, seed=0, scored=lambda: float(spent["all"]))
    trained = {k: v.clone() for k, v in agent.model.policy.state_dict().items()}
    steps = agent.model.num_timesteps

    def carried_once(seed: int) -> tuple[PathAgent, dict]:
        agent.model.policy.load_state_dict(trained)

        def on_other(path, weights, incumbent):  # paid as on the first pool, counted on its own
            spent["other"] += 1
            return reward_fn(path, weights, incumbent)

        other = EditEnv(_pool_summaries(-1.0), T_MAX, 2, reward_fn=on_other, preference=lam)
        start, spent["other"] = spent["all"], 0
        moved = train_agent(
            other, config, candidates=20, seed=1, scored=lambda: float(spent["all"] - start), carried=agent
        )
        return moved, {k: v.clone() for k, v in moved.model.policy.state_dict().items()}

    moved, weights = carried_once(1)
    assert moved.model is agent.model and moved.model.num_timesteps > steps  # the same PPO, trained on
    assert spent["other"] >= 20  # ... over the new pool
    np.testing.assert_array_equal(moved.summaries, _pool_summaries(-1.0))
    greedy = rollout(moved, lam, IDENTITY)
    assert sum(model == 0 for model, _ in greedy.steps) == 1  # what paid on the first pool
    _, again = carried_once(1)
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    path_env = make_env(PoolView(SUMMARIES), T_MAX, 2, AgentConfig(), preference=lam)
    with pytest.raises(UserError, match="only an edit agent"):
        train_agent(path_env, AgentConfig(), candidates=5, seed=0, scored=lambda: 0.0, carried=agent)
    wider = EditEnv(SUMMARIES, T_MAX + 1, 2, reward_fn=reward_fn, preference=lam)
    with pytest.raises(UserError, match="only an edit agent over a pool of the same shape"):
        carry_agent(agent, wider, seed=0)


def _pool_summaries(sign: float) -> np.ndarray:
    """Summaries of a pool whose merged model's layers all read ``sign`` (the other models' are the same in
    every pool): the only thing that tells two such pools apart is what their merge is."""
    summaries = SUMMARIES.copy()
    summaries[MODELS - 1] = sign
    return summaries


def test_each_episode_routes_over_the_pool_its_preference_is_given() -> None:
    """With ``views`` the environment draws λ, then takes that λ's pool: its summaries are the observation's,
    and its reward, known paths and ranking are the episode's."""
    calls: list[str] = []

    def view(name: str, sign: float, best: InferencePath) -> PoolView:
        def reward_fn(path, weights, incumbent):
            calls.append(name)
            return 1.0 if name == "a" else -1.0, {}

        return PoolView(
            summaries=_pool_summaries(sign),
            reward_fn=reward_fn,
            start=lambda weights: best,
            known=lambda path: name == "b" and len(path) == 2,  # b has scored its incumbent's deletions
            ranked=lambda weights: [best],
        )

    short = InferencePath(((2, 0), (2, 1), (2, 2)))
    pools = {"a": view("a", 1.0, IDENTITY), "b": view("b", -1.0, short)}
    env = EditEnv(SUMMARIES, T_MAX, 2, views=lambda lam: pools["a" if lam[0] > 0.5 else "b"])
    for lam, name, incumbent, reward in (([0.9, 0.1], "a", IDENTITY, 1.0), ([0.2, 0.8], "b", short, -1.0)):
        observation, _ = env.reset(seed=0, options={"preference": lam})
        steps = len(incumbent)
        assert env.incumbent == incumbent
        np.testing.assert_array_equal(observation["summaries"][:steps], pools[name].summaries[2, :steps])
        deletions = len(incumbent) if name == "b" else 0
        assert env.action_masks().sum() == env.space.mask(incumbent).sum() - deletions
        _, paid, *_ = env.step(int(np.flatnonzero(env.action_masks())[0]))
        assert calls[-1] == name and paid == reward
    for _ in range(20):  # drawn λ: each reset takes the pool of the λ it drew
        env.reset()
        assert env.incumbent == (IDENTITY if env.preference[0] > 0.5 else short)


def test_a_pool_with_nothing_new_to_try_is_passed_over_until_every_drawn_pool_has_none() -> None:
    """With several pools, one whose every edit is known does not end the training while another has new ones."""
    known = {"a": False, "b": True}

    def view(name: str, sign: float) -> PoolView:
        return PoolView(
            _pool_summaries(sign), known=lambda path: known[name], ranked=lambda weights: [IDENTITY]
        )

    pools = {"a": view("a", 1.0), "b": view("b", -1.0)}
    env = EditEnv(SUMMARIES, T_MAX, 2, views=lambda lam: pools["a" if lam[0] > 0.5 else "b"])
    for seed in range(10):
        env.reset(seed=seed)
        assert not env.exhausted and env.preference[0] > 0.5  # b, exhausted, is drawn again
    known["a"] = True
    env.reset(seed=0)
    assert env.exhausted


def test_a_conditioned_edit_agent_learns_what_pays_in_each_pool_from_the_pool_it_is_shown() -> None:
    """Two pools that differ only in their merge (its layers' summaries): in one, replacing a layer by model 0's
    pays, in the other by model 1's. The λ drawn says nothing about which pool an episode is over; the policy
    trained across both picks model 0's layer where it is shown the first pool and model 1's in the second."""
    episodes = Counter()

    def paying(good: int):
        def reward_fn(path: InferencePath, weights: np.ndarray, incumbent) -> tuple[float, dict[str, float]]:
            episodes["all"] += 1
            return sum(0.5 if model == good else -0.3 for model, _ in path.steps if model != 2), {}

        return reward_fn

    pools = [PoolView(_pool_summaries(sign), paying(good)) for sign, good in ((1.0, 0), (-1.0, 1))]
    draws = np.random.default_rng(1)
    env = EditEnv(SUMMARIES, T_MAX, 2, views=lambda lam: pools[int(draws.integers(2))])
    config = AgentConfig(actions="edit", mode="conditioned", learning_rate=3e-3, n_steps=32, n_epochs=8)
    agent = train_agent(env, config, candidates=400, seed=0, scored=lambda: float(episodes["all"]))
    for pool, good in zip(pools, (0, 1), strict=True):
        for lam in ([0.5, 0.5], [0.8, 0.2]):
            greedy = rollout(agent, lam, IDENTITY, pool.summaries)
            assert [model for model, _ in greedy.steps if model != 2] == [good], (good, lam, greedy)


@pytest.mark.parametrize("actions", ["edit", "path"])
def test_training_leaves_no_log_folder_behind(actions: str, tmp_path: Path, monkeypatch) -> None:
    """SB3's default logger makes an empty folder per ``learn()`` (a search's agents left thousands in /tmp)."""
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3"))  # where SB3's default logger would make it
    episodes = Counter()

    def reward_fn(path: InferencePath, weights: np.ndarray, *incumbent) -> tuple[float, dict[str, float]]:
        episodes["all"] += 1
        return 0.0, {}

    config = AgentConfig(actions=actions, n_steps=8)
    env = make_env(PoolView(SUMMARIES, reward_fn), T_MAX, 2, config, preference=[0.5, 0.5])
    train_agent(env, config, candidates=10, seed=0, scored=lambda: float(episodes["all"]))
    assert episodes["all"] >= 10 and not (tmp_path / "sb3").exists()


def test_a_search_with_no_untried_edit_left_ends_its_training() -> None:
    """Once every edit of every scored path is known the agent could only revisit (free, and teaching nothing):
    training ends instead of running out its episode cap."""
    lam = np.array([0.5, 0.5], np.float32)
    known: set[InferencePath] = set()
    episodes = Counter()

    def reward_fn(path: InferencePath, weights: np.ndarray, incumbent) -> tuple[float, dict[str, float]]:
        episodes["all"] += 1
        known.add(path)
        return -0.1, {}

    env = EditEnv(
        SUMMARIES,
        T_MAX,
        2,
        reward_fn=reward_fn,
        preference=lam,
        known=known.__contains__,
        ranked=lambda w: [IDENTITY],
    )
    train_agent(env, AgentConfig(actions="edit"), candidates=1000, seed=0, scored=lambda: float(len(known)))
    edits = int(EditSpace(MODELS, LAYERS, T_MAX).mask(IDENTITY).sum())
    assert env.exhausted and len(known) == edits and episodes["all"] <= edits + 1


# -- a structured path space: the first and last layers fixed ----------------------------------------------------


def test_fixed_first_and_last_layers_are_never_edited() -> None:
    space = EditSpace(MODELS, LAYERS, T_MAX, frame=(1, 1))
    # identity of 4 steps: positions 1 and 2 are editable (2 replacements + delete + repeat each), and a copy of
    # the first or the last layer may go next to it (the path still begins and ends with them)
    assert space.mask(IDENTITY).sum() == 2 * (MODELS - 1 + 2) + 2
    for action in np.flatnonzero(space.mask(IDENTITY)):
        edited = space.apply(IDENTITY, int(action))
        assert edited.steps[0] == (2, 0) and edited.steps[-1] == (2, 3) and len(edited) >= 3
    assert space.apply(IDENTITY, 0 * space.ops + 0) is None  # replacing the first layer
    assert space.apply(IDENTITY, 3 * space.ops + MODELS) is None  # deleting the last one
    assert space.apply(IDENTITY, 3 * space.ops + MODELS + 1).steps[-2:] == ((2, 3), (2, 3))
    # a middle step repeated is fine; deleting both middle steps would leave the frame alone: at least one stays
    two = space.apply(IDENTITY, 1 * space.ops + MODELS)
    assert two is not None and space.apply(two, 1 * space.ops + MODELS) is None
    assert EditSpace(MODELS, LAYERS, T_MAX).mask(IDENTITY).sum() == 4 * (MODELS - 1 + 2)  # no frame: all


def test_an_edit_agent_keeps_its_frame_after_reload(tmp_path: Path) -> None:
    lam = np.array([0.5, 0.5], np.float32)
    spent = Counter()

    def reward_fn(path: InferencePath, weights: np.ndarray, incumbent) -> tuple[float, dict[str, float]]:
        spent["paths"] += 1
        assert path.steps[0] == (2, 0) and path.steps[-1] == (2, 3)  # never an edit of the frame
        return float(sum(model == 0 for model, _ in path.steps)), {}

    env = EditEnv(SUMMARIES, T_MAX, 2, reward_fn=reward_fn, preference=lam, frame=(1, 1))
    agent = train_agent(
        env, AgentConfig(actions="edit"), candidates=20, seed=0, scored=lambda: spent["paths"]
    )
    assert agent.frame == (1, 1)
    agent.save(tmp_path / "agent")
    reloaded = PathAgent.load(tmp_path / "agent")
    assert reloaded.frame == (1, 1)
    greedy = rollout(reloaded, lam, IDENTITY)
    assert greedy.steps[0] == (2, 0) and greedy.steps[-1] == (2, 3)


# -- T_max below the depth: the merge fitted into it -----------------------------------------------------------


def test_below_the_depth_no_edit_makes_a_path_longer_than_t_max_and_the_merge_is_fitted_into_it() -> None:
    """``architecture_level.max_path_length`` < L: the merge's identity path (L steps) has no edit — each one
    of it would be longer than T_max — and its fitted form keeps T_max of its layers, first to last."""
    short = EditSpace(MODELS, LAYERS, 2)
    assert not short.mask(IDENTITY).any()  # replacing step 0 of the identity kept its 4 steps
    assert short.fit(IDENTITY).steps == ((2, 0), (2, 3))
    assert EditSpace(MODELS, LAYERS, 1).fit(IDENTITY).steps == ((2, 0),)
    assert EditSpace(MODELS, LAYERS, 3, frame=(1, 1)).fit(IDENTITY).steps == ((2, 0), (2, 1), (2, 3))
    assert EditSpace(MODELS, LAYERS, T_MAX).fit(IDENTITY) == IDENTITY  # within T_max: itself
    fitted = short.fit(IDENTITY)
    assert all(len(short.apply(fitted, int(a))) <= 2 for a in np.flatnonzero(short.mask(fitted)))


def test_below_the_depth_the_edit_search_starts_from_the_fitted_merge_and_scores_no_longer_path() -> None:
    """The identity path (the merge) is scored as the start, as ever; the first episode scores the merge fitted
    into T_max in full and edits it; no path the search scores after the merge is longer than T_max, nor its
    greedy rollout."""
    t_max, lam = 2, np.array([1.0], np.float32)
    pool = SimpleNamespace(merged_index=MODELS - 1, num_layers=LAYERS)
    scored: list[InferencePath] = []

    def evaluate(path: InferencePath, build: Callable) -> dict[str, float]:
        scored.append(path)
        return {"acc": 0.5 if path == IDENTITY else 0.1 * sum(model == 0 for model, _ in path.steps)}

    scorer = PathScorer(pool=pool, evaluate=evaluate)
    best_paths = BestPaths(scorer, REWARD, IDENTITY)
    env = EditEnv(
        SUMMARIES,
        t_max,
        1,
        reward_fn=edit_reward(best_paths),
        preference=lam,
        start=lambda weights: best_paths.best(weights)[0],
        known=scorer.knows,
        ranked=best_paths.ranked,
    )
    agent = train_agent(
        env, AgentConfig(actions="edit", n_steps=8), candidates=8, seed=0, scored=lambda: float(len(scored))
    )
    assert scored[:2] == [IDENTITY, InferencePath(((2, 0), (2, 3)))] and len(scored) > 3
    assert all(len(path) <= t_max for path in scored[1:]), scored
    assert len(rollout(agent, lam, IDENTITY)) <= t_max
