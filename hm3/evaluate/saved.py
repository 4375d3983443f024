"""Scoring models saved on disk (``hm3 eval``): each folder loaded once, scored by the recipe's :class:`Evaluator`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from hm3.checkpoint import Checkpoint
from hm3.errors import UserError
from hm3.evaluate.evaluator import Evaluator, load_tokenizer
from hm3.evaluate.quiet import quiet_libraries
from hm3.evaluate.split import SPLIT_NAMES
from hm3.loading import load_model_folder
from hm3.placement import resolve_device
from hm3.recipe import load_recipe


@dataclass
class SavedModelScores:
    """Scores of saved models on one split.

    Attributes:
        split: The split scored.
        scores: Model folder -> objective name -> score.
        metrics: Objective name -> the metric behind its score.
        higher_is_better: Objective name -> direction.
        documents: Objective name -> documents scored.
    """

    split: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    documents: dict[str, int] = field(default_factory=dict)


def score_saved_models(
    recipe_path: str | Path, folders: list[str | Path], split: str = "heldout"
) -> SavedModelScores:
    """Score each saved model folder on every objective of a recipe.

    Everything that can be checked without a model (recipe, tasks, metrics, data, split, folders) is checked
    before the first model is loaded. A folder with its own tokenizer is scored with it; otherwise with the
    recipe's, on the recipe's ``device`` (``auto``: a CUDA GPU when one is visible). Folders are held to the
    recipe's rules: pickle weights only with ``allow_pickle``.

    Raises:
        UserError: a bad recipe, objective or folder (naming it).
    """
    recipe = load_recipe(recipe_path)
    device = resolve_device(recipe.device)  # cuda without a GPU: refused before anything loads
    paths = [Path(f).expanduser().resolve() for f in folders]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            raise UserError(f"model folder {path} is given twice; name each folder once")
        if not path.exists():
            raise UserError(f"model folder not found: {path}")
        if not path.is_dir():
            raise UserError(f"{path} is a file, not a model folder")
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path}: no config.json (not a saved model)")
    if split not in SPLIT_NAMES:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLIT_NAMES)}")
    evaluator = Evaluator.from_recipe(recipe)
    result = SavedModelScores(split, metrics=evaluator.metrics, higher_is_better=evaluator.higher_is_better)
    result.documents = evaluator.document_count(split)
    for path in paths:  # config, weights, safetensors headers, the pickle rule: before any model loads
        Checkpoint(path, str(path), recipe.allow_pickle)
    for path in paths:
        model = load_saved_model(
            path, evaluator.is_vision, recipe.dtype, recipe.trust_remote_code, recipe.allow_pickle, device
        )
        tokenizer = None
        if not evaluator.is_vision and (path / "tokenizer_config.json").is_file():
            tokenizer = load_tokenizer(path, recipe.trust_remote_code)
        result.scores[str(path)] = evaluator.score(model, split=split, tokenizer=tokenizer)
        del model
    return result


def folder_labels(folders: list[str]) -> dict[str, str]:
    """Folder -> the shortest tail of its path that no other folder shares: ``a/merged`` and ``b/merged`` are
    told apart by their parents, a lone folder goes by its name."""
    parts = {folder: Path(folder).parts for folder in folders}
    labels = {}
    for folder, own in parts.items():
        depth = 1
        while depth < len(own) and any(
            other[-depth:] == own[-depth:] for name, other in parts.items() if name != folder
        ):
            depth += 1
        labels[folder] = str(Path(*own[-depth:]))
    return labels


def load_saved_model(
    folder: Path,
    vision: bool,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    device: str | torch.device | None = None,
):
    """A saved causal LM (or CLIP vision tower) in ``dtype``, in eval mode, on ``device`` (default: the CPU);
    safetensors weights only unless ``allow_pickle``. Loaded as ``hm3.load_merged`` loads it
    (:func:`hm3.loading.load_model_folder`): weights that do not match the config are refused, and a routed
    model's ``stats`` maps are attached."""
    model_class = transformers.CLIPVisionModel if vision else transformers.AutoModelForCausalLM
    with quiet_libraries():
        return load_model_folder(
            folder,
            model_class,
            dtype=getattr(torch, dtype),
            device=device,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )
