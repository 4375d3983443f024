"""The calibration batch of ``stats`` alignment: a few inputs from the search split of every objective."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hm3.evaluate import Evaluator


def calibration_batch(evaluator: Evaluator, samples: int) -> dict[str, Any]:
    """Model inputs for fitting ``stats`` alignment, drawn from the search split only.

    Language: the prompts (``doc_to_text``) of the first ``samples`` search documents of each objective,
    tokenized with padding (``input_ids`` + ``attention_mask``). Vision: those images' ``pixel_values``.

    Args:
        evaluator: The prepared objectives.
        samples: Documents (or images) per objective (``architecture_level.calibration_samples``).
    """
    if evaluator.is_vision:
        images = [o.pixel_values[o.indices("search")[:samples]] for o in evaluator.objectives]
        return {"pixel_values": torch.cat(images)}
    texts: list[str] = []
    for objective in evaluator.objectives:
        documents = objective.task.eval_docs
        for index in objective.indices("search")[:samples]:
            text = objective.task.doc_to_text(documents[index])
            texts.append(text if isinstance(text, str) else str(text))
    tokenizer = evaluator.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
