"""The agent's trajectory encoder: a GRU over learned embeddings of each step's model, layer and weights.

Plugged into stable-baselines3 at its features-extractor hook; the actor and the critic heads on top are
SB3's own (``MultiInputPolicy`` with ``features_extractor_class=TrajectoryEncoder``).

Per step t the GRU reads ``E_model[m_t] + E_layer[l_t] + W·summary(θ_{m_t,l_t})``; the features are the GRU's
state after the last real step (zeros for an empty path), concatenated with an embedding of the preference λ
and the path length T / T_max.
"""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class TrajectoryEncoder(BaseFeaturesExtractor):
    """GRU encoder of an :class:`~hm3.routing.env.InferencePathEnv` observation.

    Args:
        observation_space: The environment's ``Dict`` observation space.
        hidden_size: Width of the embeddings and of the GRU.
    """

    def __init__(self, observation_space: spaces.Dict, hidden_size: int = 64) -> None:
        num_models = int(observation_space["models"].high.max())
        num_layers = int(observation_space["layers"].high.max())
        summary_size = observation_space["summaries"].shape[-1]
        num_objectives = observation_space["preference"].shape[0]
        super().__init__(observation_space, features_dim=2 * hidden_size + 1)
        self.model_embedding = nn.Embedding(num_models + 1, hidden_size, padding_idx=0)
        self.layer_embedding = nn.Embedding(num_layers + 1, hidden_size, padding_idx=0)
        self.summary_projection = nn.Linear(summary_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.preference_projection = nn.Sequential(nn.Linear(num_objectives, hidden_size), nn.Tanh())

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        models = observations["models"].round().long()
        layers = observations["layers"].round().long()
        steps = self.model_embedding(models) + self.layer_embedding(layers)
        steps = steps + self.summary_projection(observations["summaries"]) * (models > 0).unsqueeze(-1)
        lengths = (models > 0).sum(dim=1)
        packed = nn.utils.rnn.pack_padded_sequence(
            steps, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        _, state = self.gru(packed)
        trajectory = state[-1] * (lengths > 0).unsqueeze(-1).to(steps.dtype)
        preference = self.preference_projection(observations["preference"])
        return torch.cat([trajectory, preference, observations["length"]], dim=1)
