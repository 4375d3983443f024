"""Training phases: a loop with validation every E steps, early stopping and the best state kept.

A *phase* trains a chosen set of adapter parameters with AdamW on a set of pairs. HiMoLE runs N + 1 phases:
stage 1 trains one expert per cluster on that cluster's pairs (the blocks forced to that expert) and copies it
into the group's other M − 1 experts; stage 2 trains every expert and the fresh gates jointly on all pairs
with ``L_task + α·L_aux + β·L_diverse``. The baselines and the ``--no-two-stage`` ablation are one joint phase.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hm3.himole.data import Pair, collate
from hm3.himole.model import auxiliary_losses, mixture_blocks

StepCallback = Callable[[int, float], None]
"""Called as ``(step, training loss)`` after each optimizer step."""


@dataclass(frozen=True)
class PhaseSettings:
    """How one phase trains.

    Attributes:
        lr: AdamW learning rate (constant after a linear warm-up).
        steps: Most optimizer steps.
        warmup: Steps of the warm-up; None: 5% of ``steps``.
        batch_size: Pairs per step.
        eval_every: Steps between validation losses.
        patience: Evaluations without improvement before stopping.
        aux_weight: α, load-balancing loss weight.
        diversity_weight: β, diversity loss weight.
        answer_suffix: Appended to each target.
        seed: Seed of the batch order.
    """

    lr: float
    steps: int
    batch_size: int
    eval_every: int
    patience: int
    aux_weight: float = 0.0
    diversity_weight: float = 0.0
    answer_suffix: str = "\n"
    seed: int = 0
    warmup: int | None = None

    @property
    def warmup_steps(self) -> int:
        """Steps until the learning rate reaches ``lr`` (at least 1)."""
        return max(1, self.steps // 20 if self.warmup is None else self.warmup)


@dataclass
class PhaseResult:
    """What a phase did.

    Attributes:
        name: The phase's label (``stage1/cluster0``, ``stage2``, ``joint``).
        steps: Optimizer steps taken.
        best_step: Step of the best validation loss (0: the starting state was best).
        best_validation_loss: The kept state's validation loss.
        history: ``(step, validation loss)`` of every evaluation.
        stopped_by: ``patience`` (early stopping ended it: converged on the validation loss) or ``cap`` (its
            ``steps`` ran out first: it may still have been learning).
    """

    name: str
    steps: int
    best_step: int
    best_validation_loss: float
    history: list[tuple[int, float]] = field(default_factory=list)
    stopped_by: str = "cap"


def validation_loss(
    model: nn.Module, tokenizer: Any, pairs: list[Pair], answer_suffix: str, batch_size: int = 64
) -> float:
    """Mean per-answer-token cross-entropy over ``pairs`` (model in eval mode, no auxiliary losses)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = {
                k: v.to(device)
                for k, v in collate(tokenizer, pairs[start : start + batch_size], answer_suffix).items()
            }
            count = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * count
            tokens += count
    model.train(was_training)
    return total / max(1, tokens)


def train_phase(
    name: str,
    model: nn.Module,
    tokenizer: Any,
    parameters: list[nn.Parameter],
    train: list[Pair],
    validation: list[Pair],
    settings: PhaseSettings,
    on_step: StepCallback | None = None,
) -> PhaseResult:
    """Train ``parameters`` on ``train``; keep (and leave in the model) the state with the best validation loss.

    Evaluates before the first step and every ``eval_every`` steps; stops after ``patience`` evaluations
    without improvement or after ``steps`` steps.
    """
    device = parameters[0].device
    rng = random.Random(f"himole-phase-{settings.seed}-{name}")
    # fused: one kernel per step for every parameter instead of a Python loop over them (a phase trains hundreds
    # of small LoRA matrices; the deep toy base's HiMoLE step took 17% less time on one CPU thread)
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=0.0, fused=fused)
    warmup = settings.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    best_loss = validation_loss(model, tokenizer, validation, settings.answer_suffix)
    best_state, best_step = [p.detach().clone() for p in parameters], 0
    history = [(0, best_loss)]
    stale, step, stopped_by = 0, 0, "cap"
    model.train()
    order: list[int] = []
    while step < settings.steps:
        if len(order) < settings.batch_size:
            fresh = list(range(len(train)))
            rng.shuffle(fresh)
            order += fresh
        chosen, order = order[: settings.batch_size], order[settings.batch_size :]
        batch = {
            k: v.to(device)
            for k, v in collate(tokenizer, [train[i] for i in chosen], settings.answer_suffix).items()
        }
        loss = model(**batch).loss
        aux, diversity = auxiliary_losses(model)
        total = loss
        if aux is not None and settings.aux_weight:
            total = total + settings.aux_weight * aux
        if diversity is not None and settings.diversity_weight:
            total = total + settings.diversity_weight * diversity
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0, foreach=fused)
        optimizer.step()
        scheduler.step()
        step += 1
        if on_step is not None:
            on_step(step, loss.item())
        if step % settings.eval_every == 0 or step == settings.steps:
            current = validation_loss(model, tokenizer, validation, settings.answer_suffix)
            history.append((step, current))
            if current < best_loss - 1e-6 or not math.isfinite(best_loss):
                best_loss, best_step, stale = current, step, 0
                best_state = [p.detach().clone() for p in parameters]
            else:
                stale += 1
                if stale >= settings.patience:
                    stopped_by = "patience"
                    break
    with torch.no_grad():
        for parameter, value in zip(parameters, best_state, strict=True):
            parameter.copy_(value)
    model.eval()
    return PhaseResult(name, step, best_step, best_loss, history, stopped_by)


def expert_parameters(model: nn.Module, index: int | None = None) -> list[nn.Parameter]:
    """The LoRA parameters of expert ``index`` in every block (all experts when None)."""
    chosen: list[nn.Parameter] = []
    for block in mixture_blocks(model):
        experts = block.experts if index is None else [block.experts[index]]
        for expert in experts:
            chosen += list(expert.parameters())
    return chosen


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every gate's parameters."""
    return [p for block in mixture_blocks(model) for gate in block.gates() for p in gate.parameters()]


def enable_grads(parameters: list[nn.Parameter]) -> list[nn.Parameter]:
    """Turn on gradients for ``parameters`` (the base stays frozen) and return them."""
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def force_expert(model: nn.Module, index: int | None) -> None:
    """Make every block use only expert ``index`` with weight 1 (stage 1), or gate again (None)."""
    for block in mixture_blocks(model):
        block.forced_expert = index


def copy_into_group(model: nn.Module, group: int, experts_per_group: int) -> None:
    """Copy the group's first expert into its other M − 1 experts, in every block (end of stage 1)."""
    with torch.no_grad():
        for block in mixture_blocks(model):
            source = block.experts[group * experts_per_group]
            for offset in range(1, experts_per_group):
                target = block.experts[group * experts_per_group + offset]
                for mine, theirs in zip(target.parameters(), source.parameters(), strict=True):
                    mine.copy_(theirs)
