"""The agent's stable-baselines3 PPO: how it is built, and how it is saved and reloaded without pickle.

SB3's own ``save`` writes a zip whose ``data`` is cloudpickled, and ``PPO.load`` unpickles it: a poisoned file
runs code. A saved agent here is a folder of plain data instead::

    policy/conditioned/
      policy.safetensors   the policy and value networks: SB3's get_parameters()["policy"]
      agent.json           {"format": "hm3-agent/1", "max_length", "num_objectives", "neighbours",
                            "stop_threshold", "anchor", "agent": {the recipe's agent section}}
      summaries.npy        the pool's [K+1, L, S] layer summaries (read with allow_pickle=False)

Loading rebuilds the same PPO from the JSON (checked by the recipe's ``AgentConfig``), then restores the
networks with SB3's ``set_parameters`` after checking that every tensor's name and shape match. The optimizer's
state is not kept: a reloaded agent acts (greedy rollouts); training it further starts Adam afresh. A
``policy.zip`` of an older run is loaded (by ``PPO.load``) only with ``allow_pickle: true``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO

from hm3.errors import UserError
from hm3.recipe import AgentConfig
from hm3.routing.buffer import SpreadRewardRolloutBuffer
from hm3.routing.edits import EditEnv, build_edit_ppo
from hm3.routing.env import InferencePathEnv
from hm3.routing.policy import TrajectoryEncoder
from hm3.routing.ppo_arguments import ppo_arguments, without_log_folder
from hm3.routing.wolpertinger import WolpertingerWrapper

POLICY_FILE = "policy.safetensors"
LEGACY_POLICY_FILE = "policy.zip"
"""SB3's own format (pickle inside), written by hm3 before the safetensors one; read only with allow_pickle."""
AGENT_FILE = "agent.json"
AGENT_FORMAT = "hm3-agent/1"
SUMMARIES_FILE = "summaries.npy"
SETTINGS = ("max_length", "num_objectives", "neighbours", "stop_threshold", "anchor")
"""What ``agent.json`` holds besides the agent section: the environment the policy acts in."""
LEGACY_ANCHOR = "last_step"
"""The anchor rule of agents saved without an ``anchor`` setting (hm3 before the incumbent)."""


def build_ppo(env: WolpertingerWrapper, config: AgentConfig, seed: int) -> PPO:
    """The PPO of ``config`` on ``env`` (rewards normalised), its networks freshly initialised from ``seed``."""
    model = PPO(
        "MultiInputPolicy",
        rollout_buffer_class=SpreadRewardRolloutBuffer,
        policy_kwargs={
            "features_extractor_class": TrajectoryEncoder,
            "features_extractor_kwargs": {"hidden_size": config.hidden_size},
            "net_arch": {"pi": [config.hidden_size], "vf": [config.hidden_size]},
            "log_std_init": math.log(env.initial_std),
        },
        **ppo_arguments(env, config, seed),
    )
    return without_log_folder(model)


@dataclass
class SavedPolicy:
    """A reloaded PPO and the facts saved with it.

    Attributes:
        model: The PPO, networks restored.
        summaries: The layer summaries.
        settings: ``max_length``, ``num_objectives``, ``neighbours``, ``stop_threshold``, ``anchor`` (and an
            edit agent's ``frame``: its fixed first and last steps).
        config: The agent section it was built with (None for a legacy ``policy.zip``).
    """

    model: PPO | MaskablePPO
    summaries: np.ndarray
    settings: dict[str, Any]
    config: AgentConfig | None


def save_policy(
    folder: Path, model: PPO, summaries: np.ndarray, settings: dict[str, Any], config: AgentConfig
) -> Path:
    """Write ``policy.safetensors``, ``agent.json`` and ``summaries.npy`` into ``folder`` (no pickle)."""
    folder.mkdir(parents=True, exist_ok=True)
    # SB3 shares the features extractor between actor and critic: one tensor under several names, which
    # safetensors stores as separate copies
    policy = model.get_parameters()["policy"]
    save_file({name: t.detach().clone().contiguous() for name, t in policy.items()}, folder / POLICY_FILE)
    np.save(folder / SUMMARIES_FILE, summaries, allow_pickle=False)
    meta = {
        "format": AGENT_FORMAT,
        **{k: settings[k] for k in SETTINGS},
        "frame": list(settings.get("frame", (0, 0))),
        "agent": config.model_dump(mode="json"),
    }
    (folder / AGENT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def policy_saved_in(folder: Path) -> bool:
    """Whether ``folder`` holds a saved agent (either format)."""
    return (folder / POLICY_FILE).is_file() or (folder / LEGACY_POLICY_FILE).is_file()


def load_policy(folder: Path, allow_pickle: bool = False) -> SavedPolicy:
    """The agent :func:`save_policy` wrote, or (with ``allow_pickle``) a legacy ``policy.zip``.

    Raises:
        UserError: no agent there, a legacy zip without ``allow_pickle``, or files that do not fit together.
    """
    if not (folder / POLICY_FILE).is_file():
        if (folder / LEGACY_POLICY_FILE).is_file():
            return _load_legacy(folder, allow_pickle)
        raise UserError(f"no saved path agent in {folder} ({POLICY_FILE} missing)")
    meta = _read_agent_json(folder / AGENT_FILE)
    summaries = _read_summaries(folder / SUMMARIES_FILE)
    try:
        config = _agent_config(meta["agent"])
        if config.actions == "edit":
            frame = tuple(int(v) for v in meta.get("frame", (0, 0)))  # saved before fixed layers: none
            edits = EditEnv(summaries, meta["max_length"], meta["num_objectives"], frame=frame)  # type: ignore[arg-type]
        else:
            env = InferencePathEnv(summaries, meta["max_length"], meta["num_objectives"])
            anchor = meta.get("anchor", LEGACY_ANCHOR)
            wrapper = WolpertingerWrapper(env, meta["neighbours"], 0.0, meta["stop_threshold"], anchor=anchor)
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{folder / AGENT_FILE}: the settings do not describe an agent ({error})") from None
    if config.actions == "edit":
        model: PPO | MaskablePPO = build_edit_ppo(edits, config, seed=0)
        settings = {
            "max_length": edits.max_length,
            "num_objectives": edits.num_objectives,
            "neighbours": 1,
            "stop_threshold": 0.0,
            "anchor": "incumbent",
            "frame": edits.frame,
        }
    else:
        model = build_ppo(wrapper, config, seed=0)
        settings = {
            "max_length": env.max_length,
            "num_objectives": env.num_objectives,
            "neighbours": wrapper.neighbours,
            "stop_threshold": wrapper.stop_threshold,
            "anchor": wrapper.anchor_rule,
        }
    _restore_networks(model, folder / POLICY_FILE)
    return SavedPolicy(model, summaries, settings, config)


def _load_legacy(folder: Path, allow_pickle: bool) -> SavedPolicy:
    if not allow_pickle:
        raise UserError(
            f"{folder / LEGACY_POLICY_FILE} is an agent in stable-baselines3's pickle format, which can run "
            f"code when loaded: remove {folder} to retrain the agent (its scored candidates stay in the run's "
            "log), or set 'allow_pickle: true' in the recipe"
        )
    meta = _read_agent_json(folder / AGENT_FILE)
    summaries = _read_summaries(folder / SUMMARIES_FILE)
    try:
        settings = {k: meta[k] for k in SETTINGS if k != "anchor"} | {"anchor": LEGACY_ANCHOR}
    except KeyError as error:
        raise UserError(f"{folder / AGENT_FILE}: no {error} setting") from None
    return SavedPolicy(PPO.load(folder / LEGACY_POLICY_FILE, device="cpu"), summaries, settings, None)


def _read_agent_json(file: Path) -> dict[str, Any]:
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{file} is missing (the agent's settings)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format", AGENT_FORMAT) != AGENT_FORMAT:
        raise UserError(f"{file}: not an hm3 agent's settings (a JSON object of format {AGENT_FORMAT})")
    return meta


def _read_summaries(file: Path) -> np.ndarray:
    try:
        summaries = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as error:  # missing, not .npy, or an object array (pickle): refused
        raise UserError(f"{file}: not a plain array file ({error})") from None
    if summaries.ndim != 3 or not np.issubdtype(summaries.dtype, np.floating):
        raise UserError(
            f"{file}: expected [models, layers, features] floats, got {summaries.dtype} {summaries.shape}"
        )
    return summaries


def _agent_config(data: Any) -> AgentConfig:
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as error:
        raise ValueError(f"agent: {error.errors(include_url=False)[0]['msg']}") from None


def _restore_networks(model: PPO | MaskablePPO, file: Path) -> None:
    """Put the saved policy and value networks into ``model`` with SB3's ``set_parameters``; the names and
    shapes must be exactly those of the rebuilt networks."""
    try:
        saved = load_file(file, device="cpu")
    except (OSError, SafetensorError) as error:
        raise UserError(f"{file}: not a readable safetensors file ({error})") from None
    expected = model.policy.state_dict()
    wrong = sorted(set(saved) ^ set(expected)) or [
        name for name in expected if tuple(saved[name].shape) != tuple(expected[name].shape)
    ]
    if wrong:
        raise UserError(f"{file}: does not fit the agent's settings (tensors {', '.join(wrong[:3])} differ)")
    model.set_parameters({"policy": saved}, exact_match=False, device="cpu")
