"""Training pairs for HiMoLE: reading the recipe's sources, the validation split, and padded batches.

A pair is a prompt and its answer. The loss is taken on the answer (plus ``answer_suffix``) only, the prompt
conditions it; tokens are concatenated with no special tokens, right-padded.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hm3.errors import UserError
from hm3.himole.shifted import shifted_pair, shifted_test_prompts, zoo_config, zoo_sizes
from hm3.zoo.lm_build import held_out_prompts
from hm3.zoo.lm_tasks import TASKS, make_test_set, task_name

if TYPE_CHECKING:
    from hm3.himole.config import HiMoLEConfig, TrainSource


@dataclass(frozen=True)
class Pair:
    """One training example.

    Attributes:
        prompt: The input text.
        target: The answer the model learns to generate.
        source: Label of the recipe source it came from (for cluster purity).
    """

    prompt: str
    target: str
    source: str


def load_pairs(config: HiMoLEConfig, seed: int) -> list[Pair]:
    """Every training pair of the recipe's sources, in source order.

    Raises:
        UserError: a missing or malformed file, a folder that is not a language zoo, an unknown zoo task.
    """
    pairs: list[Pair] = []
    for index, source in enumerate(config.train_data):
        where = f"himole.train_data[{index}]"
        pairs += _from_zoo(source, seed, where) if source.zoo else _from_jsonl(source, where)
    return pairs


def _from_jsonl(source: TrainSource, where: str) -> list[Pair]:
    path = Path(source.path)  # type: ignore[arg-type]
    if not path.is_file():
        raise UserError(f"{where}.path: file not found: {path}")
    pairs: list[Pair] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, target = row[source.prompt_key], row[source.target_key]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(
                f"{where}.path: {path.name} line {number} is not a JSON object with "
                f"{source.prompt_key!r} and {source.target_key!r}"
            ) from None
        pairs.append(Pair(str(prompt), str(target), source.label))
        if source.count is not None and len(pairs) >= source.count:
            break
    if not pairs:
        raise UserError(f"{where}.path: {path} holds no training rows")
    return pairs


def _from_zoo(source: TrainSource, seed: int, where: str) -> list[Pair]:
    """``count`` distinct draws of a zoo task's generator, never one of the zoo's test prompts."""
    folder = Path(source.zoo)  # type: ignore[arg-type]
    spec = zoo_config(folder, f"{where}.zoo")
    if source.task not in TASKS:
        raise UserError(f"{where}.task: {source.task!r} is not a zoo task ({', '.join(TASKS)})")
    sizes, test_docs = zoo_sizes(spec)
    _check_zoo_matches_generator(folder, spec, source.task, sizes, test_docs, where)  # type: ignore[arg-type]
    excluded = held_out_prompts(spec) | shifted_test_prompts(spec)
    shifted = source.distribution != "zoo"
    rng = random.Random(f"himole-{seed}-{source.task}" + (f"-{source.distribution}" if shifted else ""))
    rows: dict[str, str] = {}
    attempts = 0
    while len(rows) < source.count and attempts < 50 * source.count:  # type: ignore[operator]
        attempts += 1
        if shifted:
            prompt, target = shifted_pair(source.task, rng, sizes, source.distribution)  # type: ignore[arg-type]
        else:
            prompt, target = TASKS[source.task](rng, sizes, False)  # type: ignore[index]
        if prompt not in excluded:
            rows.setdefault(prompt, target)
    if len(rows) < source.count:  # type: ignore[operator]
        raise UserError(f"{where}.count: the {source.task} task has only about {len(rows)} distinct prompts")
    return [Pair(p, t, source.label) for p, t in rows.items()]


def _check_zoo_matches_generator(
    folder: Path, spec: Any, task: str, sizes: Any, docs: int, where: str
) -> None:
    """Refuse a zoo whose test set this code's generator would not produce (built by an older zoo builder)."""
    path = folder / "data" / f"{task_name(task, False)}.jsonl"
    expected = make_test_set(task, sizes, False, docs, spec.seed)[:20]
    try:
        found = [json.loads(line) for line in path.read_text().splitlines()[:20]]
    except (OSError, json.JSONDecodeError):
        found = []
    if found != expected:
        raise UserError(
            f"{where}.zoo: {folder} was built by another version of the zoo builder (its {task} test set is not "
            f"what the generator draws now); rebuild it: hm3 zoo build --kind lm --family {spec.family} "
            f"--size {spec.size} --force"
        )


def split_validation(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Positions of the training and validation rows (a seeded shuffle; at least one row on each side)."""
    if count < 2:
        raise UserError(
            f"himole.train_data: {count} training row(s); at least 2 are needed (train + validation)"
        )
    order = list(range(count))
    random.Random(f"himole-split-{seed}").shuffle(order)
    held = min(count - 1, max(1, round(fraction * count)))
    return sorted(order[held:]), sorted(order[:held])


def collate(tokenizer: Any, pairs: list[Pair], answer_suffix: str) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on the prompt and padding)."""
    prompts = tokenizer([p.prompt for p in pairs], add_special_tokens=False)["input_ids"]
    answers = tokenizer([p.target + answer_suffix for p in pairs], add_special_tokens=False)["input_ids"]
    length = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(pairs), length), pad, dtype=torch.long)
    labels = torch.full((len(pairs), length), -100, dtype=torch.long)
    mask = torch.zeros(len(pairs), length, dtype=torch.long)
    for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        tokens = prompt + answer
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
        labels[row, len(prompt) : len(tokens)] = ids[row, len(prompt) : len(tokens)]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def source_counts(pairs: list[Pair]) -> dict[str, int]:
    """Rows per source label, in first-seen order."""
    counts: dict[str, int] = {}
    for pair in pairs:
        counts[pair.source] = counts.get(pair.source, 0) + 1
    return counts
