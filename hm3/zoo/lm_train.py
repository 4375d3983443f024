"""Tiny causal LMs for the language zoo: their configs, the training loop, and saving.

Training is plain next-token prediction on ``prompt + target + "\\n"`` strings that start at position 0 with
no BOS token (exactly how lm-eval feeds the prompt at evaluation). Pretraining scores every token;
fine-tuning scores only the target and its newline, so a specialist learns its task and nothing else.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from hm3.zoo.tokenizer import SPECIAL_TOKENS, VOCAB_SIZE, encode_bytes

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

MAX_POSITIONS = 64
"""Context length of every zoo LM (the longest task line is under 30 characters)."""

Sampler = Callable[[random.Random], tuple[str, str]]
"""Draws one ``(prompt, target)`` pair; pretraining uses an empty prompt."""

ProgressCallback = Callable[[int, float], None]
"""Called as ``(step, loss)`` after each optimizer step."""


def lm_config(family: str, hidden: int, layers: int, heads: int) -> Any:
    """The transformers config of a zoo LM.

    Args:
        family: ``llama`` or ``qwen2``.
        hidden: Hidden size; the MLP is twice as wide.
        layers: Number of decoder layers.
        heads: Attention heads (no grouped-query sharing).
    """
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[family]
    return config_class(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        dtype="float32",
    )


def new_lm(config: Any, seed: int) -> PreTrainedModel:
    """A freshly initialized causal LM, its weights a function of ``seed`` only."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def _batch(pairs: list[tuple[str, str]], score_prompt: bool) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 where no loss is taken).

    Ids come from :func:`encode_bytes`, what the zoo tokenizer gives (tests/test_zoo.py checks both agree)
    without its per-call overhead (a sixth of a micro training step).
    """
    prompts = [encode_bytes(p) for p, _ in pairs]
    answers = [encode_bytes(t + "\n") for _, t in pairs]
    length = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
    ids = torch.zeros(len(pairs), length, dtype=torch.long)
    labels = torch.full((len(pairs), length), -100, dtype=torch.long)
    mask = torch.zeros(len(pairs), length, dtype=torch.long)
    for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        tokens = prompt + answer
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
        start = 0 if score_prompt else len(prompt)
        labels[row, start : len(tokens)] = ids[row, start : len(tokens)]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_lm(
    model: PreTrainedModel,
    sampler: Sampler,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    score_prompt: bool,
    exclude: frozenset[str] = frozenset(),
    on_step: ProgressCallback | None = None,
    regime: FineTuneRegime | None = None,
) -> float:
    """Train in place with AdamW, linear warm-up then cosine decay; returns the mean loss of the last 20 steps.

    Args:
        model: The model to update.
        sampler: Draws training pairs (tokenized as the zoo tokenizer does, :func:`encode_bytes`); draws whose prompt is in ``exclude`` are skipped (held-out tests).
        steps: Optimizer steps.
        batch_size: Pairs per step.
        lr: Peak learning rate.
        seed: Seed of the data order (a private ``random.Random``, so training order is reproducible).
        score_prompt: Take the loss on prompt tokens too (pretraining) or only on the answer (fine-tuning).
        exclude: Prompts never to train on.
        on_step: Progress callback.
        regime: How a fine-tune stays near its base (:class:`FineTuneRegime`); None: plain training.
    """
    rng = random.Random(seed)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()} if regime is not None else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    losses: list[float] = []
    task_pairs = batch_size - (round(batch_size * regime.replay_fraction) if regime is not None else 0)
    for step in range(steps):
        pairs: list[tuple[str, str]] = []
        while len(pairs) < task_pairs:
            pair = sampler(rng)
            if pair[0] not in exclude:
                pairs.append(pair)
        if regime is None:
            loss = model(**_batch(pairs, score_prompt)).loss
        else:
            loss = _regime_loss(model, anchor, regime, rng, pairs, score_prompt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, losses[-1])
    model.eval()
    tail = losses[-20:]
    return sum(tail) / len(tail)


@dataclass(frozen=True)
class FineTuneRegime:
    """How a specialist is fine-tuned so that its task vector merges, as large models' fine-tunes do.

    Large pretrained models' fine-tunes are small moves in one basin: ``base + w * task_vector`` still does the
    task for ``w`` well below 1, which is what task arithmetic relies on. A 4-layer model this small leaves that
    regime (its task vectors are half the weights' norm): scaled by 1/2 a plain specialist scored 0.00-0.11, and
    every merge of the simplex (centre, pairs, even the sum) 0.00-0.08 (benchmarks/results/zoo_merging.md).
    The regime keeps the fine-tune close to the base's behaviour and makes its task vector scalable:

    Attributes:
        replay: Draws one generic (pretraining) line; ``replay_fraction`` of each batch are such lines, scored
            on every token, so the fine-tune keeps the base's behaviour away from its task.
        replay_fraction: Share of each batch (and of the loss) that is replay.
        path_low: The loss is taken at ``w0 + s (w - w0)`` with ``s`` drawn uniformly from ``[path_low, 1]``
            each step, so the task is learned along the straight path from the base: the path a
            task-arithmetic merge walks when it scales the task vector by its weight. 1.0: the end point only.
    """

    replay: Callable[[random.Random], str]
    replay_fraction: float = 0.25
    path_low: float = 1.0


def _regime_loss(
    model: PreTrainedModel,
    anchor: dict[str, torch.Tensor],
    regime: FineTuneRegime,
    rng: random.Random,
    pairs: list[tuple[str, str]],
    score_prompt: bool,
) -> torch.Tensor:
    """The task loss (and replay loss) of one step under a :class:`FineTuneRegime`."""
    forward: Any = model
    if regime.path_low < 1.0:
        scale = rng.uniform(regime.path_low, 1.0)
        point = {n: anchor[n] + scale * (p - anchor[n]) for n, p in model.named_parameters()}

        def forward(**batch: torch.Tensor) -> Any:
            return torch.func.functional_call(model, point, args=(), kwargs=batch)

    loss = forward(**_batch(pairs, score_prompt)).loss
    count = round((len(pairs) / (1 - regime.replay_fraction)) * regime.replay_fraction)
    if count:
        lines = [("", regime.replay(rng)) for _ in range(count)]
        replay = forward(**_batch(lines, True)).loss
        loss = (1 - regime.replay_fraction) * loss + regime.replay_fraction * replay
    return loss


def save_lm(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """Save weights (safetensors), config and tokenizer so ``AutoModelForCausalLM.from_pretrained`` loads it."""
    model.generation_config.pad_token_id = SPECIAL_TOKENS.index("<pad>")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
