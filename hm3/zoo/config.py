"""What a zoo is: its kind, family, size and seed, the size presets, where it lives, and its manifest.

A finished zoo is a folder holding ``zoo.json``, written last (see :func:`hm3.zoo.build.build_zoo`)::

    {"format": 1, "kind": "lm", "family": "llama", "size": "small", "seed": 0,
     "models": [{"name": "base", "path": "base", "task": null},
                {"name": "addition", "path": "addition", "task": "toy_addition"}, ...],
     "tasks": [{"name": "toy_addition", "ood": false, "metric": "exact_match",
                "yaml": "tasks/toy_addition.yaml", "data": "data/toy_addition.jsonl"}, ...],
     "build": {"version": 2, "preset": {"hidden": 64, "layers": 4, ...}}, "build_seconds": 212.5}

``build`` is what decides the contents beyond the config (:func:`build_identity`): the builder's
:data:`BUILD_VERSION` and the size preset. A zoo whose ``build`` differs (an older builder, other settings,
or none at all) is stale, and :func:`hm3.zoo.ensure_zoo` rebuilds it instead of taking it for finished.

Vision tasks carry ``"data": "data/rotated_test.npz"`` and ``"head": "rotated/head.safetensors"`` instead of
``yaml``. Paths in the manifest are relative to the zoo folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hm3.errors import UserError
from hm3.recipe import is_seed

KINDS = ("lm", "vit")
LM_FAMILIES = ("llama", "qwen2")
VIT_FAMILIES = ("clip",)
SIZES = ("micro", "small", "deep")
LM_ONLY_SIZES = ("deep",)
"""Sizes only the language zoo has: the deep zoo is there for the path level (layers to exchange)."""
MANIFEST = "zoo.json"
ZOO_DIR_ENV = "HM3_ZOO_DIR"


@dataclass(frozen=True)
class LMPreset:
    """Model and training sizes of a language zoo.

    ``finetune_replay`` and ``finetune_path_low`` set the specialists' :class:`hm3.zoo.lm_train.FineTuneRegime`
    (share of generic replay lines, lowest point of the base-to-specialist path trained on); ``0.0`` and
    ``1.0`` fine-tune plainly. ``subskill_corpus`` pretrains on :func:`hm3.zoo.lm_tasks.pretraining_line`
    (False: its unstructured part, :func:`hm3.zoo.lm_tasks.plain_line`; the micro base's 100 steps learn too
    little of the sub-skills, and its addition specialist fell from 0.77 to 0.30 on them).
    """

    hidden: int
    layers: int
    heads: int
    pretrain_steps: int
    finetune_steps: int
    batch_size: int
    pretrain_lr: float
    finetune_lr: float
    max_digits: int
    max_length: int
    test_docs: int
    max_gen_toks: int
    finetune_replay: float = 0.0
    finetune_path_low: float = 1.0
    subskill_corpus: bool = True


@dataclass(frozen=True)
class VitPreset:
    """Model and training sizes of a vision zoo."""

    hidden: int
    layers: int
    heads: int
    pretrain_epochs: int
    finetune_epochs: int
    pretrain_lr: float
    finetune_lr: float


BUILD_VERSION = 4
"""Version of what the builder produces; bump it with any change of data, task format or training that the
presets do not show. 2: addition answers least-significant digit first; micro fine-tunes at 1e-2.
3: small: a generic corpus with sub-skills (palindromes, anagrams, sorted strings, progressions), specialists
fine-tuned with replay along the base-to-specialist path, so their task vectors scale and pairs merge.
4: built in a child process with portable CPU numerics (:mod:`hm3.zoo.numerics`): the same bits on every
x86-64 machine with AVX2; the manifest records the weights' fingerprint and the numerics. Small specialists
fine-tune at 2e-3 (was 1e-3, where the reversal specialist sat on its learning transition: 0.20-0.65 by CPU
kernels; at 2e-3 it scores 0.86-0.87 under two kernel choices, benchmarks/results/zoo_build.md)."""

LM_PRESETS: dict[str, LMPreset] = {
    # micro specialists fine-tune 1000 steps: at 500 the addition specialist sat on its learning transition
    # (0.20-0.51 under four CPU numerics on one machine; 0.90-1.00 at 1000, benchmarks/results/zoo_build.md)
    "micro": LMPreset(64, 2, 4, 100, 1000, 64, 3e-3, 1e-2, 2, 5, 100, 8, subskill_corpus=False),
    "small": LMPreset(64, 4, 4, 1500, 600, 64, 3e-3, 2e-3, 2, 7, 200, 12, 0.25, 0.3),
    # the small zoo 12 layers deep: same width, tasks, data, steps and fine-tuning regime
    "deep": LMPreset(64, 12, 4, 1500, 600, 64, 3e-3, 2e-3, 2, 7, 200, 12, 0.25, 0.3),
}
VIT_PRESETS: dict[str, VitPreset] = {
    "micro": VitPreset(32, 2, 2, 12, 8, 3e-3, 2e-3),
    "small": VitPreset(64, 4, 4, 30, 20, 2e-3, 1e-3),
}


@dataclass(frozen=True)
class ZooConfig:
    """Identity of one zoo: the four things that decide its contents.

    Attributes:
        kind: ``lm`` (causal language models scored with lm-eval) or ``vit`` (CLIP vision towers).
        family: ``llama`` or ``qwen2`` for ``lm``; ``clip`` for ``vit``.
        size: ``micro`` (tests, under a minute), ``small`` (demo and benchmarks, a few minutes) or ``deep``
            (language only: the small zoo 12 layers deep, for the path level; about 15 minutes).
        seed: Seed of every random draw of the build.
    """

    kind: str
    family: str
    size: str
    seed: int = 0

    @classmethod
    def checked(cls, kind: str, family: str | None, size: str, seed: int) -> ZooConfig:
        """Validate a user's choice; ``family=None`` picks ``llama`` (lm) or ``clip`` (vit)."""
        if kind not in KINDS:
            raise UserError(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")
        families = LM_FAMILIES if kind == "lm" else VIT_FAMILIES
        family = family or families[0]
        if family not in families:
            raise UserError(
                f"--family {family!r} does not apply to --kind {kind}; choose {', '.join(families)}"
            )
        if size not in SIZES:
            raise UserError(f"--size must be one of {', '.join(SIZES)}, not {size!r}")
        if size in LM_ONLY_SIZES and kind != "lm":
            raise UserError(f"--size {size} exists for --kind lm only; the {kind} zoo is micro or small")
        if not is_seed(seed):
            raise UserError(f"--seed must be an integer in [0, 2^31), not {seed}")
        return cls(kind, family, size, seed)

    @property
    def name(self) -> str:
        """Folder name, e.g. ``lm-llama-small`` or ``vit-clip-micro``."""
        return f"{self.kind}-{self.family}-{self.size}"

    def default_dir(self) -> Path:
        """``$HM3_ZOO_DIR/<name>``, or ``./zoo/<name>`` when the variable is unset."""
        return Path(os.environ.get(ZOO_DIR_ENV) or "zoo") / self.name


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a finished zoo, or None if ``folder`` holds none (absent or interrupted build)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def build_identity(zoo: ZooConfig) -> dict[str, Any]:
    """The manifest's ``build`` entry: builder version and size preset, the settings a config does not name."""
    preset = (LM_PRESETS if zoo.kind == "lm" else VIT_PRESETS)[zoo.size]
    return {"version": BUILD_VERSION, "preset": asdict(preset)}


def manifest_matches(manifest: dict[str, Any], zoo: ZooConfig) -> bool:
    """Whether a manifest describes the zoo ``zoo`` names."""
    return all(manifest.get(key) == getattr(zoo, key) for key in ("kind", "family", "size", "seed"))


def is_current(manifest: dict[str, Any], zoo: ZooConfig) -> bool:
    """Whether a zoo was built with this builder version and preset (an older or unversioned one is stale)."""
    return manifest.get("build") == build_identity(zoo)
