"""Score every zoo model on every zoo task and write ``scores.json`` and ``scores.md``.

``scores.json`` layout::

    {"kind": "lm", "family": "llama", "size": "small", "seed": 0,
     "tasks": {"toy_addition": {"metric": "exact_match", "ood": false, "yaml": "tasks/toy_addition.yaml",
                                "data": "data/toy_addition.jsonl"}, ...},
     "scores": {"base": {"toy_addition": 0.0, ...}, "addition": {"toy_addition": 0.93, ...}, ...},
     "evaluation": "..."}

Language scores come from lm-eval's Python API (``HFLM`` + ``simple_evaluate`` with a ``TaskManager`` over the
zoo's task folder), so ``lm_eval --model hf --model_args pretrained=<zoo>/<model> --include_path <zoo>/tasks
--tasks <task>`` reproduces them. Vision tasks carry ``"data"`` (an ``.npz``) and ``"head"`` instead of
``"yaml"``; a model is scored on a task with that task's head, except the base, which has no head for the
domains and is scored with its own head (trained on the original digits).
"""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from hm3.evaluate.quiet import quiet_libraries
from hm3.zoo.fingerprint import short
from hm3.zoo.vision import accuracy, load_classifier

LM_BATCH_SIZE = 64
LM_EVALUATION = "lm-eval {version} generate_until, greedy, exact_match, 0-shot, batch_size {batch}, on the held-out test JSONL"
VIT_EVALUATION = (
    "top-1 accuracy on the held-out 30% of sklearn digits; a specialist or merged encoder uses the task's head "
    "(<task>/head.safetensors); the base uses its own head (base/head.safetensors, trained on original digits)"
)


def lm_scores(
    model_dirs: dict[str, Path], task_dir: Path, task_names: list[str]
) -> dict[str, dict[str, float]]:
    """Exact match of each model on each lm-eval task, via lm-eval's Python API.

    Args:
        model_dirs: Model name -> saved model folder.
        task_dir: Folder of task YAMLs (given to ``TaskManager(include_path=...)``).
        task_names: The tasks to run.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # imported after the offline defaults above are set: the hub libraries lm-eval loads read them
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    scores: dict[str, dict[str, float]] = {}
    for name, folder in model_dirs.items():
        # quiet: the loading and request bars would break the build's own progress display; and simple_evaluate
        # records the current folder's git commit by running `git describe`, which prints "fatal: not a git
        # repository" straight to the terminal outside one (the scores do not need it)
        with quiet_libraries(), mock.patch("lm_eval.evaluator.get_git_commit_hash", return_value=None):
            model = HFLM(pretrained=str(folder), batch_size=LM_BATCH_SIZE, device="cpu")
            results = lm_eval.simple_evaluate(
                model=model,
                tasks=task_names,
                task_manager=manager,
                log_samples=False,
                bootstrap_iters=0,
                verbosity="WARNING",
            )
        scores[name] = {task: float(results["results"][task]["exact_match,none"]) for task in task_names}
    return scores


def lm_evaluation_note() -> str:
    """How the language scores were computed (stored in ``scores.json``)."""
    return LM_EVALUATION.format(version=version("lm_eval"), batch=LM_BATCH_SIZE)


def vit_scores(zoo: Path, models: list[str], tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Accuracy of each vision model on each task's ``.npz``, with the head rule of the module docstring."""
    loaded = {name: load_classifier(zoo / name) for name in models}
    scores: dict[str, dict[str, float]] = {}
    for name, (encoder, own_head) in loaded.items():
        scores[name] = {}
        for task, info in tasks.items():
            with np.load(zoo / info["data"]) as data:
                pixels, labels = data["pixel_values"], data["labels"]
            head = own_head if name == "base" else loaded[task][1]
            scores[name][task] = accuracy(encoder, head, pixels, labels)
    return scores


FINGERPRINT_NOTE = (
    "a hash of every weight; built with pinned CPU numerics, so the same on every Intel CPU with AVX2 for this "
    "seed (AMD CPUs build other weights: MKL ignores the pin there); the README lists those of the documented zoos"
)


def write_scores(
    zoo: Path, header: dict[str, Any], tasks: dict[str, Any], scores: dict[str, Any], note: str
) -> None:
    """Write ``scores.json`` (layout in the module docstring) and a Markdown table ``scores.md``."""
    payload = {**header, "tasks": tasks, "scores": scores, "evaluation": note}
    (zoo / "scores.json").write_text(json.dumps(payload, indent=2) + "\n")
    names = list(tasks)
    lines = [
        f"# Scores of zoo {header['kind']}-{header['family']}-{header['size']} (seed {header['seed']})",
        "",
        note + ".",
        "",
        f"Weights fingerprint `{short(header['fingerprint'])}` ({FINGERPRINT_NOTE}).",
        "",
        "| model | " + " | ".join(f"{t}{' (OOD)' if tasks[t].get('ood') else ''}" for t in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for model, row in scores.items():
        best = [max(scores[m][t] for m in scores) for t in names]
        cells = [
            f"**{row[t]:.3f}**" if row[t] == b else f"{row[t]:.3f}" for t, b in zip(names, best, strict=True)
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    (zoo / "scores.md").write_text("\n".join(lines) + "\n")
