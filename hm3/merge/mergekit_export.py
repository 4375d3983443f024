"""Any hm3 merge as a mergekit configuration that ``mergekit-yaml`` runs to the same tensors.

``to_mergekit_config(spec, model_paths, base_path)`` gives the mapping (absolute paths, every parameter the
method takes spelled out, so the meaning does not depend on either tool's defaults)::

    merge_method: ties
    base_model: /models/base
    models:
      - model: /models/math
        parameters: {weight: 0.7, density: 0.5}
      - model: /models/code
        parameters: {weight: [0.0, 0.3, 1.0], density: 0.5}   # a per-layer gradient
    parameters: {normalize: true, rescale: false, lambda: 1.0, int8_mask: false}

DARE and DELLA draw their masks from mergekit's own generator (``mergekit-yaml --random-seed``), so those
reproduce the method, not hm3's exact masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hm3.merge.mergekit_parameters import rules_for
from hm3.merge.spec import MergeSpec


def _value(value: float | tuple[float, ...]) -> float | list[float]:
    return list(value) if isinstance(value, tuple) else float(value)


def to_mergekit_config(
    spec: MergeSpec, model_paths: Sequence[str | Path], base_path: str | Path
) -> dict[str, Any]:
    """The mergekit configuration of ``spec`` over these models (paths made absolute).

    Raises:
        ValueError: the number of paths differs from the number of weights.
    """
    if len(model_paths) != len(spec.weights):
        raise ValueError(f"{len(model_paths)} model paths for {len(spec.weights)} weights")
    row = spec.row
    assert spec.density is not None
    models = []
    for path, weight, density in zip(model_paths, spec.weights, spec.density, strict=True):
        parameters: dict[str, Any] = {"weight": _value(weight)}
        if row.sparsification is not None:
            parameters["density"] = _value(density)
        models.append({"model": str(Path(path).resolve()), "parameters": parameters})
    values = {
        "normalize": spec.effective_normalize,
        "rescale": spec.effective_rescale,
        "int8_mask": spec.int8_mask,
        "lambda": spec.scale,
        **{name: getattr(spec, name) for name, _ in row.extra},
    }
    takes = {rule.name for rule in rules_for(spec.method)}
    shared = {name: value for name, value in values.items() if name in takes}
    config: dict[str, Any] = {"merge_method": spec.method}
    if row.uses_base:
        config["base_model"] = str(Path(base_path).resolve())
    config["models"] = models
    config["parameters"] = shared
    if spec.dtype:
        config["dtype"] = spec.dtype
    if spec.out_dtype:
        config["out_dtype"] = spec.out_dtype
    return config


def to_mergekit_yaml(spec: MergeSpec, model_paths: Sequence[str | Path], base_path: str | Path) -> str:
    """:func:`to_mergekit_config` as YAML text."""
    return yaml.safe_dump(to_mergekit_config(spec, model_paths, base_path), sort_keys=False)


def model_card(method: str, sources: Sequence[str], base: str | None, config_yaml: str) -> str:
    """A README.md naming the merge method, the source models and the parameters (the config)."""
    lines = [
        "---",
        "tags: [merge, hm3]",
        "---",
        "# Merged model",
        "",
        f"Made with [hm3](https://github.com/) by the **{method}** merge method.",
        "",
    ]
    if base:
        lines += [f"Base model: `{base}`", ""]
    lines += ["Models merged:", "", *(f"- `{source}`" for source in sources), ""]
    lines += ["## Configuration", "", "```yaml", config_yaml.rstrip(), "```", ""]
    return "\n".join(lines)
