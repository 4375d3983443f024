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
"""

from __future__ import annotations

from hm3.zoo.build import build_zoo, ensure_zoo
from hm3.zoo.config import ZooConfig, read_manifest

__all__ = ["ZooConfig", "build_zoo", "ensure_zoo", "read_manifest"]
