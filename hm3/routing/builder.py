"""Turn a routing pool and an inference path into a runnable model of the backbone's own class.

The model is built on the meta device (``accelerate.init_empty_weights``, buffers such as rotary frequencies
still computed for real) with ``num_hidden_layers = T``, and then given the pool's tensors with
``load_state_dict(..., assign=True)``: no weight is copied, a layer that appears twice in the path is the same
tensors twice, and building costs milliseconds whatever the model size.

Because the decoder is constructed with T layers, layer ``t`` of the new model has ``self_attn.layer_idx == t``
(its own slot in the KV cache) and rotary embeddings follow the new positions; ``config.layer_types`` is the
source layers' types in path order, so ``model.generate`` works with repeats and reordering.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
import transformers
from accelerate import init_empty_weights
from transformers.initialization import no_init_weights

from hm3.errors import UserError
from hm3.routing.path import InferencePath
from hm3.routing.pool import RoutingPool

if TYPE_CHECKING:
    from torch import nn

    from hm3.arch import Backbone
    from hm3.routing.affine import AffineAlignment


def source_config(pool: RoutingPool) -> Any:
    """The transformers config object of the pool's backbone (cached on the pool)."""
    cached = pool.__dict__.get("_source_config")
    if cached is not None:
        return cached
    config = config_object(pool, pool.config)
    pool.__dict__["_source_config"] = config
    return config


def config_object(pool: RoutingPool, config: dict[str, Any]) -> Any:
    """A ``config.json``'s contents as the transformers config object of the pool's backbone."""
    raw = dict(pool.backbone.backbone_config(config))
    if pool.backbone.kind == "vision":
        raw.pop("model_type", None)
        return transformers.CLIPVisionConfig(**raw)
    raw = dict(config)
    model_type = raw.pop("model_type")
    raw.pop("architectures", None)
    return transformers.AutoConfig.for_model(model_type, **raw)


def routed_config(pool: RoutingPool, path: InferencePath, source: Any | None = None) -> Any:
    """The source config (``source``, else the pool's) with ``num_hidden_layers = len(path)`` and per-layer
    lists in path order."""
    config = copy.deepcopy(source if source is not None else source_config(pool))
    for key in pool.backbone.per_layer_config_lists:
        values = getattr(config, key, None)
        if isinstance(values, list) and len(values) == pool.num_layers:
            setattr(config, key, [values[layer] for layer in path.layers])
    setattr(config, pool.backbone.num_layers_key, len(path))
    return config


def routed_tensors(
    pool: RoutingPool, path: InferencePath, shared_source: int | None = None
) -> dict[str, torch.Tensor]:
    """The routed model's state dict, under the pool's tensor names with layer indices renumbered to path
    positions. Values are the pool's own tensors (no copies; with offload, the device cache's copies); a repeated
    layer appears under two names.

    Args:
        pool: The routing pool.
        path: The inference path.
        shared_source: Model whose non-layer tensors are used (default: the pool's ``shared_source``).
    """
    path.check(pool.num_models, pool.num_layers)
    source = pool.shared_source if shared_source is None else shared_source
    if not 0 <= source < pool.num_models:
        raise UserError(f"shared_source {source} is not a model of the pool (0..{pool.num_models - 1})")
    out, layers = pool.device_groups(source, path.steps)
    rename = pool.backbone.layer_tensor_name
    for position, step in enumerate(path.steps):
        for name, tensor in zip(pool.layer_tensor_names(step[1]), layers[step], strict=True):
            out[rename(name, position)] = tensor
    return out


def layer_modules(model: nn.Module, backbone: Backbone) -> nn.ModuleList:
    """The model's list of layers (``model.layers`` of a causal LM, ``encoder.layers`` of CLIP)."""
    before = backbone.layer_prefix.split("{index}")[0].rstrip(".")
    candidates = [before, backbone.optional_prefix + before] if backbone.optional_prefix else [before]
    for name in candidates:
        try:
            return model.get_submodule(name)  # type: ignore[return-value]
        except AttributeError:
            continue
    raise UserError(f"{type(model).__name__} has no layer list at {before!r}")


def build_routed_model(
    pool: RoutingPool,
    path: InferencePath,
    alignment: AffineAlignment | None = None,
    shared_source: int | None = None,
    own_config: dict[str, Any] | None = None,
) -> nn.Module:
    """A model of the backbone's class that runs ``path`` over the pool's layers, sharing the pool's tensors.

    Args:
        pool: The K fine-tuned models and the merged one.
        path: Which ``(model, layer)`` runs at each step.
        alignment: Optional per-step affine maps applied to the hidden state entering a layer
            (see :mod:`hm3.routing.alignment`).
        shared_source: Model whose embeddings / final norm / head are used (default: the merged model).
        own_config: A fine-tuned model's own ``config.json`` contents, to build it as itself (its rope base,
            context length...); default: the pool's, with which every merge and path is built.

    Returns:
        The model in eval mode (a ``*ForCausalLM`` or a ``CLIPVisionModel``).
    """
    config = routed_config(pool, path, None if own_config is None else config_object(pool, own_config))
    tensors = routed_tensors(pool, path, shared_source)
    model_class = _model_class(pool)
    with init_empty_weights(include_buffers=False), no_init_weights():  # the pool's tensors replace them all
        model = (
            model_class._from_config(config) if hasattr(model_class, "_from_config") else model_class(config)
        )
    keys = set(model.state_dict())
    prefix = pool.backbone.optional_prefix
    if prefix:
        tensors = {
            (n.removeprefix(prefix) if n not in keys and n.removeprefix(prefix) in keys else n): t
            for n, t in tensors.items()
        }
    dtype = next(iter(tensors.values())).dtype
    result = model.load_state_dict(tensors, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not _is_tied(model, k)]
    if missing or result.unexpected_keys:
        raise UserError(
            f"routed {pool.backbone.family} model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    if result.missing_keys:
        model.tie_weights()
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and buffer.dtype != dtype and "inv_freq" not in name:
            model.get_buffer(name).data = buffer.to(dtype)
    model.config.dtype = dtype if isinstance(dtype, torch.dtype) else None
    model.eval()
    if alignment is not None:
        alignment.attach(layer_modules(model, pool.backbone))
    return model


def _model_class(pool: RoutingPool) -> Any:
    if pool.backbone.kind == "vision":
        return transformers.CLIPVisionModel
    return transformers.AutoModelForCausalLM._model_mapping[type(source_config(pool))]


def _is_tied(model: Any, key: str) -> bool:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return bool(getattr(model.config, "tie_word_embeddings", False)) and key in tied
