"""The rollout buffer that gives PPO the paper's reward shape: each episode's R spread evenly, R_t = R/n.

The environment only knows R once the path is scored, at the episode's last step. Before GAE runs,
:class:`SpreadRewardRolloutBuffer` (SB3's ``rollout_buffer_class`` hook) rewrites every episode that ends in
the rollout to R/n on each of its n steps. An episode that began in the previous rollout counts its earlier
steps in n (the buffer remembers how many there were) but only its steps in this rollout get R/n; the earlier
ones were trained with 0 and a bootstrapped value. Episodes still open at the end keep 0 and are bootstrapped,
as usual.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.buffers import DictRolloutBuffer


def spread_rewards(
    rewards: np.ndarray, episode_starts: np.ndarray, dones: np.ndarray, open_steps: np.ndarray
) -> np.ndarray:
    """Rewrite each finished episode's rewards to their sum over its length, in place (``[steps, envs]``).

    Args:
        rewards: Rewards as the environment gave them (R on the final step, 0 before).
        episode_starts: 1 where a step starts a new episode.
        dones: Whether each environment's last step ended its episode.
        open_steps: Per environment, steps of the episode left open by the previous rollout.

    Returns:
        Per environment, the steps of the episode this rollout leaves open (0 if none).
    """
    size, envs = rewards.shape
    remaining = np.zeros(envs, dtype=np.int64)
    for env in range(envs):
        start, carried = 0, int(open_steps[env])
        for step in range(size):
            if episode_starts[step, env]:
                start, carried = step, 0
            ends = episode_starts[step + 1, env] if step + 1 < size else dones[env]
            if ends:
                total = rewards[start : step + 1, env].sum()
                rewards[start : step + 1, env] = total / (carried + step + 1 - start)
        remaining[env] = 0 if dones[env] else carried + size - start
    return remaining


class SpreadRewardRolloutBuffer(DictRolloutBuffer):
    """SB3's dict rollout buffer, each finished episode's reward spread evenly over its steps."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_steps = np.zeros(self.n_envs, dtype=np.int64)

    def compute_returns_and_advantage(self, last_values, dones) -> None:
        self.open_steps = spread_rewards(
            self.rewards, self.episode_starts, np.asarray(dones), self.open_steps
        )
        super().compute_returns_and_advantage(last_values, dones)
