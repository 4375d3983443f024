"""Attaching a mixture of LoRA experts to a causal LM, for training and for (cached) generation.

:func:`attach_mixture` replaces the MLP of every decoder block with a :class:`~hm3.himole.experts.MixtureFFN` and
freezes the base weights. A forward pre-hook on the model hands each forward's padding mask to the blocks through a
:class:`~hm3.himole.experts.GatingContext` (the blocks' shared state, kept with them), which also keeps the
sentence pooling state between the steps of a cached generation: a forward whose attention mask is longer than its
input continues the previous sequence, any other forward starts new ones. The model stays a ``PreTrainedModel``:
``generate``, lm-eval's ``HFLM`` and ``model(**batch).loss`` work unchanged (greedy or sampled decoding; beam
search reorders sequences and is not supported by the pooling state).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from hm3.errors import UserError
from hm3.himole.experts import GatingContext, GatingKind, MixtureFFN, lora_parameter_count

SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral")
"""``config.model_type`` values whose decoder blocks hold a ``gate_proj / up_proj / down_proj`` MLP at
``model.model.layers[i].mlp``."""


@dataclass(frozen=True)
class AdapterShape:
    """The shape of an adapter: which variant, how many experts, LoRA settings.

    Attributes:
        variant: ``himole``, ``moe-lora``, ``hydra-lora`` or ``lora``.
        groups: N (1 for ``lora``).
        experts_per_group: M (1 for ``lora``; for ``moe-lora`` and ``hydra-lora`` the N·M experts share one
            gate).
        rank: LoRA rank of each expert.
        alpha: LoRA alpha.
        dropout: LoRA dropout.
        top_k: Experts kept per token.
    """

    variant: str
    groups: int
    experts_per_group: int
    rank: int
    alpha: float
    dropout: float
    top_k: int

    @property
    def gating(self) -> GatingKind:
        return {"himole": "hierarchical", "moe-lora": "token", "hydra-lora": "token", "lora": "single"}[  # type: ignore[return-value]
            self.variant
        ]

    @property
    def shared_a(self) -> bool:
        """Whether the experts share one ``A`` per projection (``hydra-lora``)."""
        return self.variant == "hydra-lora"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of a supported causal LM.

    Raises:
        UserError: the family is not one whose FFN the mixture knows.
    """
    family = getattr(model.config, "model_type", None)
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if family not in SUPPORTED_FAMILIES or layers is None:
        raise UserError(
            f"HiMoLE supports the {', '.join(SUPPORTED_FAMILIES)} families (gate/up/down FFN); "
            f"this model is {family!r}"
        )
    return list(layers)


def attach_mixture(model: nn.Module, shape: AdapterShape, seed: int = 0) -> GatingContext:
    """Freeze ``model`` and give every decoder block a mixture FFN of that ``shape`` (in place).

    Experts start as fresh LoRAs (B = 0, so the model's outputs are unchanged) and gates at PyTorch's default
    initialisation; both are drawn from ``seed``.

    Returns:
        The model's gating context (also at ``model.himole_context``).
    """
    if getattr(model, "himole_context", None) is not None:
        raise ValueError("this model already carries a mixture")
    layers = decoder_layers(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    context = GatingContext()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for index, layer in enumerate(layers):
            reference = layer.mlp.gate_proj.weight
            mixture = MixtureFFN(
                layer.mlp,
                groups=shape.groups,
                experts_per_group=shape.experts_per_group,
                rank=shape.rank,
                alpha=shape.alpha,
                dropout=shape.dropout,
                top_k=shape.top_k,
                gating=shape.gating,
                context=context,
                layer=index,
                shared_a=shape.shared_a,
            )
            layer.mlp = mixture.to(device=reference.device, dtype=reference.dtype)
    finally:
        torch.random.set_rng_state(generator_state)
    model.register_forward_pre_hook(lambda _, args, kwargs: context.begin(args, kwargs), with_kwargs=True)
    model.himole_context = context
    model.himole_shape = shape
    return context


def mixture_blocks(model: nn.Module) -> list[MixtureFFN]:
    """The mixture FFNs of a model, in block order."""
    return [m for m in model.modules() if isinstance(m, MixtureFFN)]


ADAPTER_MODULES = (".experts.", ".token_gate.", ".sentence_gate.")
"""What the name of an adapter tensor holds (the mixture blocks' submodules other than ``base``)."""


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """Names (as in ``model.state_dict()``) of the adapter's tensors: every expert and gate."""
    return [name for name, _ in model.named_parameters() if any(part in name for part in ADAPTER_MODULES)]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors (detached copies), keyed as in the model."""
    names = set(adapter_parameter_names(model))
    return {name: p.detach().clone() for name, p in model.named_parameters() if name in names}


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of adapter parameters (experts and gates)."""
    names = set(adapter_parameter_names(model))
    return sum(p.numel() for name, p in model.named_parameters() if name in names)


def auxiliary_losses(model: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Means over the blocks of the last forward's load-balancing and diversity losses (None if not computed)."""
    blocks = [b for b in mixture_blocks(model) if b.last_aux is not None]
    if not blocks:
        return None, None
    aux = torch.stack([b.last_aux for b in blocks]).mean()  # type: ignore[misc]
    diversity = torch.stack([b.last_diversity for b in blocks]).mean()  # type: ignore[misc]
    for block in blocks:
        block.last_aux = block.last_diversity = None
    return aux, diversity


def matched_lora_rank(config: Any, groups: int, experts_per_group: int, rank: int) -> int:
    """The rank of one LoRA whose trainable parameters match a HiMoLE adapter's (experts and both gates).

    Args:
        config: The base model's transformers config (``hidden_size``, ``intermediate_size``).
        groups: N.
        experts_per_group: M.
        rank: Rank of each HiMoLE expert.
    """
    hidden, intermediate = int(config.hidden_size), int(config.intermediate_size)
    experts = groups * experts_per_group
    per_block = experts * lora_parameter_count(hidden, intermediate, rank) + hidden * (experts + groups)
    return max(1, round(per_block / lora_parameter_count(hidden, intermediate, 1)))
