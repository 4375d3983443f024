"""Backbone families as data: which tensors belong to layer i, which are shared, which carry the vocabulary.

Adding a family is one :class:`Backbone` row in :data:`FAMILIES` (and a tiny model in the tests)::

    Backbone(
        family="mistral",
        model_types=("mistral",),
        kind="causal_lm",
        layer_prefix="model.layers.{index}.",
        num_layers_key="num_hidden_layers",
        vocab_tensors=("model.embed_tokens.weight", "lm_head.weight"),
        auto_class="AutoModelForCausalLM",
    )
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from hm3.errors import UserError


@dataclass(frozen=True)
class Backbone:
    """What hm3 needs to know about one backbone family, as data.

    Attributes:
        family: Short name used in messages and recipes (``llama``, ``qwen2``, ``clip_vision``).
        model_types: ``config.json`` ``model_type`` values that belong to this family.
        kind: ``causal_lm`` (scored with lm-eval) or ``vision`` (scored by classification accuracy).
        layer_prefix: Tensor-name prefix of layer ``i``, with ``{index}`` for the layer number.
        num_layers_key: Config key holding the number of layers (inside ``config_section`` if set).
        vocab_tensors: Tensors whose first dimension is the vocabulary (the vocabulary-mismatch rule applies).
        auto_class: transformers class that loads a checkpoint of this family.
        config_section: Sub-config holding the backbone, e.g. ``vision_config`` of a full ``CLIPModel``.
        tensor_prefixes: Only tensors starting with one of these belong to the backbone (empty: all do).
        per_layer_config_lists: Config keys holding one entry per layer (fixed when the layer count changes).
        optional_prefix: A prefix some checkpoints put before every backbone tensor (``vision_model.`` in a
            full ``CLIPModel``, absent in a ``CLIPVisionModel`` saved by transformers 5); kept when renaming.
        tied_head: ``(head, embeddings)``: the output head that a config with ``tie_word_embeddings: true``
            replaces by the input embeddings when transformers loads it (whatever the file stores as the head).
    """

    family: str
    model_types: tuple[str, ...]
    kind: Literal["causal_lm", "vision"]
    layer_prefix: str
    num_layers_key: str
    vocab_tensors: tuple[str, ...]
    auto_class: str
    config_section: str | None = None
    tensor_prefixes: tuple[str, ...] = ()
    per_layer_config_lists: tuple[str, ...] = field(default=())
    optional_prefix: str = ""
    tied_head: tuple[str, str] | None = None

    @cached_property
    def _layer_pattern(self) -> re.Pattern[str]:
        before, after = self.layer_prefix.split("{index}")
        prefix = f"(?:{re.escape(self.optional_prefix)})?" if self.optional_prefix else ""
        return re.compile(f"^({prefix}{re.escape(before)})" + r"(\d+)" + f"({re.escape(after)})")

    def layer_of(self, tensor_name: str) -> int | None:
        """The layer index a tensor belongs to, or None for a shared tensor (embeddings, final norm, head)."""
        match = self._layer_pattern.match(tensor_name)
        return int(match.group(2)) if match else None

    def layer_tensor_name(self, tensor_name: str, new_index: int) -> str:
        """The same tensor renamed into layer ``new_index`` (for routed and passthrough models)."""
        return self._layer_pattern.sub(rf"\g<1>{new_index}\g<3>", tensor_name, count=1)

    def belongs(self, tensor_name: str) -> bool:
        """Whether a tensor is part of the backbone (e.g. the vision half of a full CLIP checkpoint)."""
        return not self.tensor_prefixes or tensor_name.startswith(self.tensor_prefixes)

    def backbone_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The (sub-)config that describes the backbone."""
        if self.config_section and self.config_section in config:
            return config[self.config_section]
        return config

    def ties_head(self, config: dict[str, Any]) -> bool:
        """Whether a model of this config runs its input embeddings as its output head (``tie_word_embeddings``;
        False where absent, the default of every decoder family here)."""
        return self.tied_head is not None and bool(
            self.backbone_config(config).get("tie_word_embeddings", False)
        )

    def num_layers(self, config: dict[str, Any]) -> int:
        """Number of layers the config declares."""
        return int(self.backbone_config(config)[self.num_layers_key])


_DECODER = dict(
    kind="causal_lm",
    layer_prefix="model.layers.{index}.",
    num_layers_key="num_hidden_layers",
    vocab_tensors=("model.embed_tokens.weight", "lm_head.weight"),
    auto_class="AutoModelForCausalLM",
    per_layer_config_lists=("layer_types",),
    tied_head=("lm_head.weight", "model.embed_tokens.weight"),
)

FAMILIES: tuple[Backbone, ...] = (
    Backbone(family="llama", model_types=("llama",), **_DECODER),
    Backbone(family="qwen2", model_types=("qwen2",), **_DECODER),
    Backbone(family="mistral", model_types=("mistral",), **_DECODER),
    Backbone(
        family="clip_vision",
        model_types=("clip_vision_model", "clip"),
        kind="vision",
        layer_prefix="encoder.layers.{index}.",
        num_layers_key="num_hidden_layers",
        vocab_tensors=(),
        auto_class="CLIPVisionModel",
        config_section="vision_config",
        tensor_prefixes=("vision_model.", "embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm."),
        optional_prefix="vision_model.",
    ),
)


def family_names() -> list[str]:
    """Names of every supported family."""
    return [backbone.family for backbone in FAMILIES]


def detect_family(config: dict[str, Any], where: str = "model") -> Backbone:
    """The family of a model from its ``config.json`` contents.

    Raises:
        UserError: the model type is not one hm3 supports.
    """
    model_type = config.get("model_type")
    for backbone in FAMILIES:
        if model_type in backbone.model_types:
            return backbone
    supported = ", ".join(t for backbone in FAMILIES for t in backbone.model_types)
    raise UserError(f"{where}: model_type {model_type!r} is not supported (supported: {supported})")


def get_family(name: str) -> Backbone:
    """The backbone of a family by its name."""
    for backbone in FAMILIES:
        if backbone.family == name:
            return backbone
    raise UserError(f"unknown backbone family {name!r} (known: {', '.join(family_names())})")
