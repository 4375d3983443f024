"""Parameter values that vary across layers (gradients) or by tensor name (filters), resolved as mergekit does.

A parameter may be a number, a list of numbers (a gradient, interpolated linearly over the layers of a slice:
``t = i / (n - 1)`` for layer i of n, ``t = 0`` for embeddings, final norm and head), or a list of
``{filter: substring, value: ...}`` entries (the first whose filter occurs in the tensor name wins)::

    weight: [0, 0.5, 1]             # layer 0 -> 0, the middle layer -> 0.5, the last -> 1
    density:
      - {filter: self_attn, value: 0.3}
      - {value: 0.7}
"""

from __future__ import annotations

from typing import Any

Setting = Any
"""A scalar, a list of scalars (gradient), or a list of ``{filter, value}`` mappings."""


def layer_position(layer: int | None, num_layers: int) -> float:
    """``t`` of a tensor: ``layer / (num_layers - 1)`` inside the layers, 0 for shared tensors (mergekit)."""
    if layer is None:
        return 0.0
    return layer / (num_layers - 1) if num_layers > 1 else 1.0


def evaluate_setting(setting: Setting, t: float, tensor_name: str = "", kind: type = float) -> Any:
    """The value of a parameter setting at position ``t`` for ``tensor_name`` (None: no filter matched).

    Follows ``mergekit.config.evaluate_setting``: numeric gradients interpolate, booleans and strings pick
    ``values[int(t * (n - 1))]``.
    """
    if isinstance(setting, dict) or _is_filter(setting):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return _cast(setting, kind)
    if isinstance(setting, (list, tuple)):
        if not setting:
            return None
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            values = [_cast(e, kind) for e in setting]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                return values[int(t * (len(values) - 1))]
            scaled = t * (len(setting) - 1)
            low = int(scaled)
            high = min(len(setting) - 1, low + 1)
            fraction = scaled - low
            return _cast((1 - fraction) * values[low] + fraction * values[high], kind)
        for condition in setting:
            condition = _as_mapping(condition)
            pattern = condition.get("filter")
            if pattern is None or pattern == "*" or (tensor_name and pattern in tensor_name):
                return evaluate_setting(condition["value"], t, tensor_name, kind)
        return None
    raise ValueError(f"not a parameter value: {setting!r}")


def _is_filter(value: Any) -> bool:
    return hasattr(value, "filter") and hasattr(value, "value")


def _as_mapping(condition: Any) -> dict[str, Any]:
    if isinstance(condition, dict):
        return condition
    return {"filter": condition.filter, "value": condition.value}


def _cast(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("true", "yes", "on", "1"):
                return True
            if lowered in ("false", "no", "off", "0"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        return bool(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"not a number: {value!r}")
        return float(value)
    return value
