"""The language zoo's build steps: test data and task YAMLs, the pretrained base, one specialist per task."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from hm3.zoo.config import LM_PRESETS, LMPreset, ZooConfig
from hm3.zoo.fingerprint import zoo_fingerprint
from hm3.zoo.lm_tasks import (
    TASKS,
    TaskSizes,
    make_test_set,
    plain_line,
    pretraining_line,
    task_name,
    task_yaml,
    write_jsonl,
)
from hm3.zoo.lm_train import FineTuneRegime, lm_config, new_lm, save_lm, train_lm
from hm3.zoo.progress import training_bar
from hm3.zoo.scores import lm_evaluation_note, lm_scores, write_scores
from hm3.zoo.tokenizer import build_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def write_tasks(
    staging: Path, data_root: Path, task_folder: str, sizes: TaskSizes, zoo: ZooConfig
) -> dict[str, Any]:
    """Write the test JSONL files (under ``staging/data``) and task YAMLs whose data paths use ``data_root``.

    Returns:
        Task name -> ``{"metric", "ood", "yaml", "data", "docs"}`` (paths relative to the zoo folder).
    """
    preset = LM_PRESETS[zoo.size]
    tasks: dict[str, Any] = {}
    for task in TASKS:
        for ood in (False, True):
            name = task_name(task, ood)
            data = Path("data") / f"{name}.jsonl"
            if not (staging / data).exists():
                write_jsonl(make_test_set(task, sizes, ood, preset.test_docs, zoo.seed), staging / data)
            yaml = Path(task_folder) / f"{name}.yaml"
            (staging / yaml).parent.mkdir(parents=True, exist_ok=True)
            (staging / yaml).write_text(task_yaml(name, (data_root / data).resolve(), preset.max_gen_toks))
            tasks[name] = {"metric": "exact_match", "ood": ood, "yaml": str(yaml), "data": str(data)}
    return tasks


def held_out_prompts(zoo: ZooConfig) -> frozenset[str]:
    """Every test prompt of the zoo (in and out of distribution): training never draws these."""
    preset = LM_PRESETS[zoo.size]
    sizes = TaskSizes(preset.max_digits, preset.max_length)
    return frozenset(
        row["prompt"]
        for task in TASKS
        for ood in (False, True)
        for row in make_test_set(task, sizes, ood, preset.test_docs, zoo.seed)
    )


def train_base(zoo: ZooConfig, console: Console) -> PreTrainedModel:
    """The base LM of a zoo: initialized from ``zoo.seed`` and pretrained on the generic corpus."""
    preset = LM_PRESETS[zoo.size]
    base = new_lm(lm_config(zoo.family, preset.hidden, preset.layers, preset.heads), zoo.seed)
    corpus = pretraining_line if preset.subskill_corpus else plain_line
    with training_bar(console, "pretraining base", preset.pretrain_steps) as on_step:
        train_lm(
            base,
            lambda rng: ("", corpus(rng)),
            steps=preset.pretrain_steps,
            batch_size=preset.batch_size,
            lr=preset.pretrain_lr,
            seed=zoo.seed,
            score_prompt=True,
            on_step=on_step,
        )
    return base


def train_specialist(zoo: ZooConfig, base: PreTrainedModel, task: str, console: Console) -> PreTrainedModel:
    """A copy of ``base`` fully fine-tuned on one task's training draws (test prompts excluded)."""
    preset = LM_PRESETS[zoo.size]
    sizes = TaskSizes(preset.max_digits, preset.max_length)
    specialist = copy.deepcopy(base)
    index = list(TASKS).index(task) + 1
    with training_bar(console, f"fine-tuning {task}", preset.finetune_steps) as on_step:
        train_lm(
            specialist,
            lambda rng: TASKS[task](rng, sizes, False),
            steps=preset.finetune_steps,
            batch_size=preset.batch_size,
            lr=preset.finetune_lr,
            seed=zoo.seed * 1000 + index,
            score_prompt=False,
            exclude=held_out_prompts(zoo),
            on_step=on_step,
            regime=_regime(preset),
        )
    return specialist


def _regime(preset: LMPreset) -> FineTuneRegime | None:
    """The preset's fine-tuning regime (replay of the generic corpus, path-wide loss), or None for plain."""
    if preset.finetune_replay == 0.0 and preset.finetune_path_low == 1.0:
        return None
    return FineTuneRegime(pretraining_line, preset.finetune_replay, preset.finetune_path_low)


def build_lm_zoo(zoo: ZooConfig, staging: Path, target: Path, console: Console) -> dict[str, Any]:
    """Build a language zoo into ``staging`` (its YAMLs already pointing at ``target``).

    Returns:
        The ``models`` and ``tasks`` entries of the manifest.
    """
    preset = LM_PRESETS[zoo.size]
    sizes = TaskSizes(preset.max_digits, preset.max_length)
    tokenizer = build_tokenizer()
    tasks = write_tasks(staging, target, "tasks", sizes, zoo)
    write_tasks(staging, staging, ".scoring-tasks", sizes, zoo)
    base = train_base(zoo, console)
    save_lm(base, tokenizer, staging / "base")
    models: list[dict[str, Any]] = [{"name": "base", "path": "base", "task": None}]
    for task in TASKS:
        save_lm(train_specialist(zoo, base, task, console), tokenizer, staging / task)
        models.append({"name": task, "path": task, "task": task_name(task, False)})
    with console.status("scoring every model on every task with lm-eval"):
        scores = lm_scores(
            {m["name"]: staging / m["path"] for m in models}, staging / ".scoring-tasks", list(tasks)
        )
    shutil.rmtree(staging / ".scoring-tasks")
    fingerprint = zoo_fingerprint(staging)
    header = {"kind": zoo.kind, "family": zoo.family, "size": zoo.size, "seed": zoo.seed}
    write_scores(staging, {**header, "fingerprint": fingerprint}, tasks, scores, lm_evaluation_note())
    return {
        "fingerprint": fingerprint,
        "models": models,
        "tasks": [{"name": n, **info} for n, info in tasks.items()],
    }
