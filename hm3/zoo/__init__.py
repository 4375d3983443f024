"""The toy model zoo: a base model, conflicting fine-tuned specialists and their evaluation tasks, built locally.

``hm3 zoo build --kind lm|vit`` (or :func:`build_zoo` / :func:`ensure_zoo`) trains everything on CPU in
seconds (``micro``) or minutes (``small``) and writes::

    zoo/lm-llama-small/
      base/ addition/ reversal/ sorting/     HF checkpoints (safetensors + config + tokenizer)
      data/toy_<task>[_ood].jsonl            held-out test sets ({"prompt", "target"})
      tasks/toy_<task>[_ood].yaml            lm-eval task configs over those files
      scores.json, scores.md                 every model on every task
      zoo.json                               manifest, written last

    zoo/vit-clip-small/
      base/ rotated/ inverted/ permuted/     CLIPVisionModel checkpoints + head.safetensors + head.json
      data/<task>_test.npz                   pixel_values [N, 1, 8, 8] float32, labels [N] int64
      scores.json, scores.md, zoo.json

Importing the package loads nothing heavy: each name is imported from its module when first used (the builders
import torch, transformers and the training code; reading a manifest or the task list needs none of them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hm3.zoo.build import build_zoo, ensure_zoo
    from hm3.zoo.config import ZooConfig, read_manifest

_HOMES = {"build_zoo": "build", "ensure_zoo": "build", "ZooConfig": "config", "read_manifest": "config"}
"""Each public name's module."""

__all__ = ["ZooConfig", "build_zoo", "ensure_zoo", "read_manifest"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'hm3.zoo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hm3.zoo.{home}"), name)
