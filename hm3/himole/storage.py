"""One folder per trained adapter: experts, gates, cluster centroids and a manifest, written atomically.

Layout::

    adapter/
      himole.json            format, adapter shape (AdapterShape), base model and samples of its weights,
                             recipe section, training summary
      adapter.safetensors    every expert's LoRA A/B and every gate, keyed as in the model's state dict
      centroids.safetensors  K-means centroids [N, D] in the encoder's space (HiMoLE with stage 1 only)

The folder is built next to its destination and renamed into place, so an interruption leaves either the
previous adapter or the new one, never half of one: a Ctrl-C before the swap keeps the previous one; once the
swap has begun it runs to its end (the old folder deleted) and the command completes. Format 1 folders (whose
gates were saved under the paper's name, ``token_router`` / ``sentence_router``) still load: their tensors are
renamed on reading.

The manifest's ``base_weight_samples`` (:func:`base_weight_samples`, the run fingerprint's weight samples of the
base folder) ties the adapter to its base's weights, wherever that folder is later moved:
:func:`check_adapter_base` refuses another base. Adapters written before it was recorded are checked for what
they recorded (the base's family; the tensors' names and shapes when loading).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy_file
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hm3.checkpoint import read_model_config
from hm3.errors import UserError
from hm3.evaluate.quiet import quiet_libraries
from hm3.export import move_into_place
from hm3.folder_swap import clear_leftovers, staging_folder
from hm3.himole.model import AdapterShape, adapter_parameter_names, adapter_state_dict, attach_mixture
from hm3.interrupts import interrupts_ignored
from hm3.output_guard import check_no_overlap
from hm3.recipe import ModelRef
from hm3.run_fingerprint import weight_samples

if TYPE_CHECKING:
    from hm3.recipe import Recipe

MANIFEST = "himole.json"
WEIGHTS = "adapter.safetensors"
CENTROIDS = "centroids.safetensors"
FORMAT = 2
"""The format written: 2 names the gates ``token_gate`` / ``sentence_gate``; 1 named them ``*_router``."""
READABLE_FORMATS = (1, 2)
FORMAT_1_NAMES = {".token_router.": ".token_gate.", ".sentence_router.": ".sentence_gate."}
"""Format 1's tensor name parts and what they are called now."""


ADAPTER_ENTRIES = frozenset({WEIGHTS, CENTROIDS, MANIFEST})
"""Everything :func:`save_adapter` writes into an adapter folder."""


def check_adapter_target(folder: Path, inputs: list[tuple[str, Path]] | None = None) -> None:
    """Refuse an adapter folder hm3 may not write: an input (the base model) or a folder holding one, a file,
    or a folder holding anything but an adapter hm3 wrote (which it replaces). Called before training starts,
    and again when saving.

    Raises:
        UserError: naming the folder and what is in the way.
    """
    folder = Path(folder)
    check_no_overlap(folder, inputs or [])
    if not folder.exists():
        return
    entries = {entry.name for entry in folder.iterdir()} if folder.is_dir() else None
    if entries is None or (entries and (MANIFEST not in entries or entries - ADAPTER_ENTRIES)):
        raise UserError(f"--out {folder} exists and is not a HiMoLE adapter folder; choose another path")


def save_adapter(folder: Path, model: Any, manifest: dict[str, Any], centroids: Any = None) -> Path:
    """Write ``model``'s adapter, the manifest and the centroids into ``folder`` (replacing an older adapter).

    Raises:
        UserError: ``folder`` exists and is neither empty nor an adapter folder.
    """
    folder = Path(folder)
    clear_leftovers(folder)  # a swap killed half-way: the old adapter back, dead writers' folders deleted
    check_adapter_target(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(folder)  # a dead writer's is cleared by the next save (clear_leftovers)
    try:
        tensors = {name: t.contiguous().cpu() for name, t in adapter_state_dict(model).items()}
        save_file(tensors, str(staging / WEIGHTS), metadata={"format": "pt"})
        if centroids is not None:
            save_file(
                {"centroids": torch.as_tensor(centroids).float().contiguous()}, str(staging / CENTROIDS)
            )
        (staging / MANIFEST).write_text(json.dumps({"format": FORMAT, **manifest}, indent=2) + "\n")
        with interrupts_ignored():  # once begun, the swap ends: the new adapter in place, the old one gone
            move_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def base_weight_samples(recipe: Recipe, base: Path) -> dict[str, str]:
    """Weight file -> digest of samples of its bytes, for the base model folder ``base`` (the recipe's
    ``base_model`` resolved, a hub snapshot included): :func:`hm3.run_fingerprint.weight_samples` of that
    folder alone. Names and digests only, so a moved or copied folder gives the same answer."""
    only_base = recipe.model_copy(
        update={"base_model": ModelRef(path=str(Path(base).absolute())), "models": []}
    )
    return next(iter(weight_samples(only_base).values()), {})


def check_adapter_base(folder: Path, manifest: dict[str, Any], base: Path, samples: dict[str, str]) -> None:
    """Refuse to put the adapter on a base model other than the one it was trained on: other weights than those
    the manifest's ``base_weight_samples`` recorded (``samples``: :func:`base_weight_samples` of ``base``), or,
    for an adapter written before those were recorded, another model family.

    Raises:
        UserError: naming the adapter, the base it was trained on and ``base``.
    """
    trained_on = manifest.get("base_model", "?")
    recorded = manifest.get("base_weight_samples")
    if recorded is not None:
        if recorded != samples:
            raise UserError(
                f"--adapter {folder} was trained on base model {trained_on}; the recipe's base_model {base} "
                "holds other weights: score it with a recipe whose base_model is that model"
            )
        return
    family = manifest.get("family")
    actual = read_model_config(Path(base), "base_model").get("model_type")
    if family is not None and family != actual:
        raise UserError(
            f"--adapter {folder} was trained on base model {trained_on} ({family}); the recipe's base_model "
            f"{base} is a {actual} model"
        )


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of an adapter folder.

    Raises:
        UserError: the folder is missing or holds no HiMoLE adapter.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"--adapter {folder}: no HiMoLE adapter there (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") not in READABLE_FORMATS:
        raise UserError(
            f"--adapter {folder}: adapter format {manifest.get('format')!r}, this hm3 reads "
            + " or ".join(str(f) for f in READABLE_FORMATS)
        )
    return manifest


def current_tensor_names(tensors: dict[str, torch.Tensor], version: int) -> dict[str, torch.Tensor]:
    """The tensors of a format-``version`` adapter keyed by today's names (format 1 saved the gates as routers)."""
    if version != 1:
        return tensors
    renamed = {}
    for name, tensor in tensors.items():
        for old, new in FORMAT_1_NAMES.items():
            name = name.replace(old, new)
        renamed[name] = tensor
    return renamed


def load_adapter(
    folder: Path, base_model: str | None = None, device: str = "cpu", dtype: str | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """The base model with the saved mixture attached and loaded, its tokenizer, and the manifest.

    Args:
        folder: An adapter folder written by :func:`save_adapter`.
        base_model: Base model folder (None: the one the manifest names).
        device: Where to put the model.
        dtype: The model's dtype (the recipe's; None: the one it was trained in, float32 for older adapters).

    Raises:
        UserError: no adapter, or an adapter whose tensors do not fit the base model.
    """
    manifest = read_manifest(Path(folder))
    base = base_model or manifest["base_model"]
    with quiet_libraries():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype or manifest.get("dtype", "float32"))
        tokenizer = AutoTokenizer.from_pretrained(base)
    attach_mixture(model, AdapterShape(**manifest["adapter"]))
    tensors = current_tensor_names(load_file(str(Path(folder) / WEIGHTS)), manifest["format"])
    expected = set(adapter_parameter_names(model))
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise UserError(
            f"--adapter {folder}: its tensors do not fit base model {base} "
            f"({len(missing)} missing, e.g. {missing[:1]}; {len(extra)} unexpected, e.g. {extra[:1]})"
        )
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:
        raise UserError(
            f"--adapter {folder}: shapes do not fit base model {base}: {str(error).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), tokenizer, manifest


def load_centroids(folder: Path) -> np.ndarray | None:
    """The saved K-means centroids [N, D] as a numpy array, or None when the adapter has none."""
    path = Path(folder) / CENTROIDS
    if not path.is_file():
        return None
    return load_numpy_file(str(path))["centroids"]
