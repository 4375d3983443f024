"""``hm3 himole train``: training pairs → clusters → stage 1 → stage 2 → one adapter folder.

Variants (``--variant`` / ``--no-two-stage``):

* ``himole`` (two-stage): K-means clusters; stage 1 trains one LoRA per cluster on its pairs and copies it into
  the group's M experts; stage 2 trains fresh gates and every expert jointly (load-balancing and diversity
  losses).
* ``himole`` without two-stage training: the same mixture, experts and gates trained jointly from scratch.
* ``moe-lora``: N·M experts behind a token-level gate only, trained jointly (MixLoRA-style).
* ``hydra-lora``: the same gate over N·M ``B`` heads sharing one ``A`` per projection (HydraLoRA-style).
* ``lora``: one LoRA whose rank matches HiMoLE's trainable parameters.

The phases are in :mod:`hm3.himole.stages`. The single-phase runs train at stage 1's learning rate for as many
steps as HiMoLE's two stages together (N × stage-1 steps + stage-2 steps): every variant sees as many batches.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from hm3.checkpoint import resolve_model_folder
from hm3.errors import UserError
from hm3.evaluate.quiet import quiet_libraries
from hm3.evaluate.threads import pinned_threads
from hm3.himole.clustering import Clustering, cluster_texts, composition
from hm3.himole.config import VARIANTS, HiMoLEConfig, describe
from hm3.himole.data import Pair, load_pairs, source_counts, split_validation
from hm3.himole.model import AdapterShape, attach_mixture, matched_lora_rank, trainable_parameter_count
from hm3.himole.stages import Schedule
from hm3.himole.storage import base_weight_samples, check_adapter_target, save_adapter
from hm3.placement import resolve_device

if TYPE_CHECKING:
    from hm3.recipe import Recipe


@dataclass(frozen=True)
class TrainRequest:
    """One ``hm3 himole train`` call.

    Attributes:
        out: The adapter folder to write.
        variant: ``himole``, ``lora``, ``moe-lora`` or ``hydra-lora``.
        two_stage: HiMoLE's two-stage training (False: the ablation).
        seed: Overrides the section's seed (None: keep it).
    """

    out: Path
    variant: str = "himole"
    two_stage: bool = True
    seed: int | None = None


def require_section(recipe: Recipe) -> HiMoLEConfig:
    """The recipe's ``himole:`` section.

    Raises:
        UserError: the recipe has none.
    """
    if recipe.himole is None:
        raise UserError("the recipe has no 'himole:' section (see recipes/himole-toy.yaml)")
    return recipe.himole


def train_himole(recipe: Recipe, request: TrainRequest, console: Console | None = None) -> dict[str, Any]:
    """Train the requested variant on the recipe and save it to ``request.out``; returns the manifest.

    The base model is loaded in the recipe's ``dtype`` (the adapters follow it); on the CPU the training runs
    on a fixed thread count (:func:`hm3.evaluate.threads.pinned_threads`), never one read from the load.
    """
    with pinned_threads(resolve_device(recipe.device) == "cpu"):
        return _train(recipe, request, console)


def _train(recipe: Recipe, request: TrainRequest, console: Console | None) -> dict[str, Any]:
    if request.variant not in VARIANTS:
        raise UserError(f"--variant must be one of {', '.join(VARIANTS)}, not {request.variant!r}")
    if request.variant != "himole" and not request.two_stage:
        raise UserError("--no-two-stage applies to --variant himole only")
    config = require_section(recipe)
    console = console or Console(stderr=True)
    seed = request.seed if request.seed is not None else config.resolved_seed(recipe.seed)
    started = time.monotonic()
    pairs = load_pairs(config, seed)
    train_rows, validation_rows = split_validation(len(pairs), config.validation_fraction, seed)
    base = resolve_model_folder(recipe.base_model)
    check_adapter_target(request.out, [("base model", base)])  # before any training, not after it
    base_samples = base_weight_samples(recipe, base)  # the weights trained on, whatever their folder later
    device = resolve_device(recipe.device)
    with quiet_libraries():
        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=recipe.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=recipe.dtype).to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    clustering = None
    if request.variant == "himole" and request.two_stage:
        texts = [p.prompt if config.cluster_on == "prompt" else p.prompt + p.target for p in pairs]
        with console.status(
            f"embedding {len(texts)} training texts and clustering them into {config.clusters}"
        ):
            clustering = cluster_texts(texts, config.encoder, config.clusters, seed)
        mix = composition(clustering.labels, [p.source for p in pairs])
        console.print(
            f"clusters: purity {mix['purity']:.3f} "
            + "; ".join(f"{c}: {n}" for c, n in mix["clusters"].items())
        )
    shape = adapter_shape(config, request.variant, model.config)
    attach_mixture(model, shape, seed=seed)
    schedule = Schedule(model, tokenizer, config, shape, seed, console)
    if clustering is None:
        phases = schedule.single_phase([pairs[i] for i in train_rows], [pairs[i] for i in validation_rows])
    else:
        phases = schedule.two_stage(pairs, train_rows, validation_rows, clustering)
    manifest = {
        "variant": request.variant,
        "two_stage": request.two_stage,
        "adapter": shape.to_json(),
        "base_model": str(base),
        "base_weight_samples": base_samples,
        "family": model.config.model_type,
        "dtype": recipe.dtype,
        "seed": seed,
        "trainable_parameters": trainable_parameter_count(model),
        "training_rows": len(train_rows),
        "validation_rows": len(validation_rows),
        "sources": source_counts(pairs),
        "encoder": config.encoder if clustering is not None else None,
        "clusters": None if clustering is None else _cluster_summary(clustering, pairs),
        "phases": [asdict(p) for p in phases],
        "steps": sum(p.steps for p in phases),
        "converged": all(p.stopped_by == "patience" for p in phases),
        "validation_loss": phases[-1].best_validation_loss,
        "train_seconds": round(time.monotonic() - started, 1),
        "recipe_section": describe(config),
    }
    save_adapter(request.out, model, manifest, None if clustering is None else clustering.centroids)
    return manifest


def adapter_shape(config: HiMoLEConfig, variant: str, model_config: Any) -> AdapterShape:
    """The adapter shape of a variant (``lora``'s rank matched to HiMoLE's parameter count unless given)."""
    settings = {"alpha": config.alpha, "dropout": config.dropout, "top_k": config.top_k}
    if variant == "lora":
        rank = config.lora_rank or matched_lora_rank(
            model_config, config.clusters, config.experts_per_group, config.rank
        )
        alpha = (
            config.alpha * rank / config.rank
        )  # same alpha / rank scale (rank 80: alpha 160, as the paper)
        return AdapterShape("lora", 1, 1, rank, alpha, config.dropout, 1)
    return AdapterShape(variant, config.clusters, config.experts_per_group, config.rank, **settings)


def _cluster_summary(clustering: Clustering, pairs: list[Pair]) -> dict[str, Any]:
    return composition(clustering.labels, [p.source for p in pairs])
