"""``hm3 himole eval``: a saved adapter (or the bare base model) scored on the recipe's ID and OOD objectives.

Scoring goes through hm3's evaluator (lm-eval on the in-memory model, see :mod:`hm3.evaluate`); the mixture
model generates like any ``PreTrainedModel``. The report gives each objective's score and the mean of the ID
and of the OOD objectives (``himole.ood_objectives`` says which are OOD), and for a mixture the experts' load
balance on the ID documents (MaxVio).

Means are only taken of like metrics: every objective's metric must have the first one's direction and scale
(one metric, or all of :data:`FRACTION_METRICS`), else the command refuses, naming the objective — a
perplexity is never averaged with accuracies. The answer loss is that of the target text, so it is computed for
``generate_until`` tasks only (a multiple-choice task's target is a choice's index: its loss is None). An
adapter is only scored on the base model it was trained on (:func:`hm3.himole.storage.check_adapter_base`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM

from hm3.checkpoint import resolve_model_folder
from hm3.errors import UserError
from hm3.evaluate import Evaluator
from hm3.evaluate.evaluator import load_tokenizer
from hm3.evaluate.language import LanguageObjective, prepare_language_objectives
from hm3.evaluate.quiet import quiet_libraries
from hm3.evaluate.threads import pinned_threads
from hm3.himole.data import Pair, collate
from hm3.himole.model import mixture_blocks, trainable_parameter_count
from hm3.himole.pipeline import require_section
from hm3.himole.storage import base_weight_samples, check_adapter_base, load_adapter, read_manifest
from hm3.himole.training import validation_loss
from hm3.placement import resolve_device

if TYPE_CHECKING:
    from hm3.recipe import Recipe

FRACTION_METRICS = frozenset({"acc", "acc_norm", "exact_match"})
"""lm-eval metrics that are a share of the documents, in [0, 1]: one scale, averaged together."""


@dataclass(frozen=True)
class EvalReport:
    """Scores of one model.

    Attributes:
        label: What was scored (the adapter's variant, or ``base``).
        scores: Objective name -> metric value, in recipe order.
        ood: Names of the OOD objectives.
        trainable_parameters: The adapter's parameter count (0 for the base model).
        losses: Objective name -> mean cross-entropy per answer token (the target plus ``answer_suffix``, given
            the prompt) over the same documents: a finer signal than exact match when few answers are right;
            None for a task that does not generate its answer (multiple choice, log-likelihood).
        max_violation: MaxVio of the experts' load on the ID documents (:func:`max_violation`), the mean over
            the blocks; None for a model without a gate (the base model, ``lora``).
        higher_is_better: The direction every objective's metric shares (:func:`shared_direction`).
    """

    label: str
    scores: dict[str, float]
    ood: tuple[str, ...]
    trainable_parameters: int
    losses: dict[str, float | None]
    max_violation: float | None = None
    higher_is_better: bool = True

    def mean(self, out_of_distribution: bool, of: str = "scores") -> float | None:
        """Mean score (or ``of="losses"``) of the ID (False) or OOD (True) objectives; None when there are
        none, or when one of them has no loss."""
        table: Mapping[str, float | None] = self.scores if of == "scores" else self.losses
        values = [v for k, v in table.items() if (k in self.ood) == out_of_distribution]
        if not values or any(v is None for v in values):
            return None
        return sum(v for v in values if v is not None) / len(values)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "scores": self.scores,
            "higher_is_better": self.higher_is_better,
            "id_mean": self.mean(False),
            "ood_mean": self.mean(True),
            "losses": self.losses,
            "id_loss": self.mean(False, of="losses"),
            "ood_loss": self.mean(True, of="losses"),
            "ood_objectives": list(self.ood),
            "trainable_parameters": self.trainable_parameters,
            "max_violation": self.max_violation,
        }


def evaluate_adapter(
    recipe: Recipe, adapter: Path | None, split: str = "all", limit: int | None = None
) -> EvalReport:
    """Score the adapter (None: the base model alone) on every objective of the recipe.

    Args:
        recipe: A recipe with a ``himole:`` section.
        adapter: An adapter folder from ``hm3 himole train``, or None.
        split: ``all`` (every test document), ``search`` or ``heldout``.
        limit: At most this many documents per objective (overrides the objectives' ``limit``).
    """
    with pinned_threads(resolve_device(recipe.device) == "cpu"):
        return _evaluate(recipe, adapter, split, limit)


def _evaluate(recipe: Recipe, adapter: Path | None, split: str, limit: int | None) -> EvalReport:
    config = require_section(recipe)
    base = resolve_model_folder(recipe.base_model)
    if adapter is not None:  # before anything is loaded
        check_adapter_base(adapter, read_manifest(adapter), base, base_weight_samples(recipe, base))
    device = resolve_device(recipe.device)
    objectives = list(recipe.objectives)
    if limit is not None:
        objectives = [o.model_copy(update={"limit": limit}) for o in objectives]
    prepared = prepare_language_objectives(
        objectives,
        recipe.split,
        allow_task_code=recipe.allow_task_code,
        allow_code_execution=recipe.allow_code_execution,
    )
    higher_is_better = shared_direction(prepared)
    if adapter is None:
        with quiet_libraries():
            model = AutoModelForCausalLM.from_pretrained(base, dtype=recipe.dtype).to(device).eval()
        tokenizer, label, parameters = load_tokenizer(base, recipe.trust_remote_code), "base", 0
    else:
        model, tokenizer, manifest = load_adapter(adapter, str(base), device, dtype=recipe.dtype)
        label = manifest["variant"] + ("" if manifest.get("two_stage", True) else " (one stage)")
        parameters = trainable_parameter_count(model)
    evaluator = Evaluator(prepared, tokenizer=tokenizer)
    scores = evaluator.score(model, split=split)
    losses = {
        o.name: validation_loss(model, tokenizer, objective_pairs(o, split), config.answer_suffix)
        if generates_answer(o)
        else None
        for o in prepared
    }
    in_distribution = [
        pair for o in prepared if o.name not in config.ood_objectives for pair in objective_pairs(o, split)
    ]
    balance = max_violation(model, tokenizer, in_distribution, config.answer_suffix)
    ood = tuple(config.ood_objectives)
    return EvalReport(label, scores, ood, parameters, losses, balance, higher_is_better)


def shared_direction(objectives: list[LanguageObjective]) -> bool:
    """Whether higher is better for every objective's metric: the direction they all share.

    Raises:
        UserError: naming the first objective whose metric has another direction or scale than the first
            objective's (its ID or OOD mean would mix them): one metric, or :data:`FRACTION_METRICS` only.
    """
    first = objectives[0]
    for objective in objectives[1:]:
        if objective.higher_is_better != first.higher_is_better or _scale(objective) != _scale(first):
            raise UserError(
                f"objective {objective.name}: its metric {_described(objective)} would be averaged with "
                f"{first.name}'s {_described(first)}; hm3 himole eval averages metrics of one direction and "
                f"scale ({', '.join(sorted(FRACTION_METRICS))} are one)"
            )
    return first.higher_is_better


def _metric(objective: LanguageObjective) -> str:
    return objective.metric_key.split(",")[0]


def _scale(objective: LanguageObjective) -> str:
    return "fraction" if _metric(objective) in FRACTION_METRICS else _metric(objective)


def _described(objective: LanguageObjective) -> str:
    return f"{_metric(objective)} ({'higher' if objective.higher_is_better else 'lower'} is better)"


def generates_answer(objective: LanguageObjective) -> bool:
    """Whether the objective's task generates its answer, so that its target is the answer's text (a
    multiple-choice task's target is the index of a choice)."""
    return objective.task.get_config("output_type") == "generate_until"


def objective_pairs(objective: Any, split: str) -> list[Pair]:
    """A prepared lm-eval objective's documents on ``split`` as (prompt, target) pairs."""
    task = objective.task
    docs = task.eval_docs
    return [
        Pair(str(task.doc_to_text(docs[i])), str(task.doc_to_target(docs[i])), objective.name)
        for i in objective.indices(split)
    ]


def expert_loads(
    model: Any, tokenizer: Any, pairs: list[Pair], answer_suffix: str, batch_size: int = 64
) -> list[list[int]]:
    """Per mixture block, how many (token, kept slot) assignments each expert received over the teacher-forced
    ``pairs`` (prompt + target + suffix, padding excluded); empty for a model without a gate."""
    blocks = [b for b in mixture_blocks(model) if b.gating != "single"]
    if not blocks or not pairs:
        return []
    context = model.himole_context
    loads = [torch.zeros(len(b.experts), dtype=torch.long) for b in blocks]
    device = next(model.parameters()).device
    recording, context.record_gating = context.record_gating, True
    try:
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                batch = collate(tokenizer, pairs[start : start + batch_size], answer_suffix)
                model(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
                )
                for load, block in zip(loads, blocks, strict=True):
                    gating = block.last_gating
                    chosen = gating["experts"][gating["real"]].flatten().cpu()
                    load += torch.bincount(chosen, minlength=len(load))
    finally:
        context.record_gating = recording
    return [load.tolist() for load in loads]


def max_violation(model: Any, tokenizer: Any, pairs: list[Pair], answer_suffix: str) -> float | None:
    """MaxVio (Wang et al. 2024, "Auxiliary-loss-free load balancing"): per block ``(max_i load_i − mean
    load) / mean load`` over the experts' loads (:func:`expert_loads`), averaged over the blocks — 0 when every
    expert gets the same share, E / k − 1 when the same k experts take every token. None without a gate."""
    loads = expert_loads(model, tokenizer, pairs, answer_suffix)
    if not loads:
        return None
    violations = []
    for load in loads:
        mean = sum(load) / len(load)
        violations.append((max(load) - mean) / mean if mean > 0 else 0.0)
    return sum(violations) / len(violations)
