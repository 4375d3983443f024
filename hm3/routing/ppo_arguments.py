"""The settings both of hm3's PPOs take from the recipe's ``agent`` section: the path agent's SB3 ``PPO``
(:func:`hm3.routing.ppo.build_ppo`) and the edit agent's sb3-contrib ``MaskablePPO``
(:func:`hm3.routing.edits.build_edit_ppo`)."""

from __future__ import annotations

from typing import Any, TypeVar

import gymnasium as gym
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from hm3.recipe import AgentConfig

DEFAULT_ROLLOUT = 64
"""PPO's rollout length (environment steps) of an agent built without the budget's scaling (a reloaded one)."""


def ppo_arguments(env: gym.Env, config: AgentConfig, seed: int) -> dict[str, Any]:
    """Keyword arguments of a PPO on ``env`` (rewards normalised) with ``config``'s hyperparameters, on the CPU,
    seeded; the policy and its ``policy_kwargs`` are the caller's."""
    n_steps = config.n_steps or DEFAULT_ROLLOUT
    return {
        "env": VecNormalize(DummyVecEnv([lambda: env]), norm_obs=False, norm_reward=True, gamma=config.gamma),
        "learning_rate": config.adam_learning_rate,
        "n_steps": n_steps,
        "batch_size": min(config.batch_size or DEFAULT_ROLLOUT, n_steps),
        "n_epochs": config.n_epochs,
        "gamma": config.gamma,
        "gae_lambda": config.gae_lambda,
        "clip_range": config.clip_range,
        "ent_coef": config.ent_coef,
        "vf_coef": config.vf_coef,
        "seed": seed,
        "device": "cpu",
        "verbose": 0,
    }


Algorithm = TypeVar("Algorithm", bound=BaseAlgorithm)


def without_log_folder(model: Algorithm) -> Algorithm:
    """``model`` with a logger that writes nothing: SB3's default one creates an empty ``SB3-<time>`` folder in
    the temporary directory at every ``learn()`` (thousands in a search), though it logs nothing at verbose 0."""
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model
