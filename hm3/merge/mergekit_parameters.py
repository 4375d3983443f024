"""Which ``parameters:`` of a mergekit configuration hm3 honours, for which methods, at which levels, in which
ranges: one table, read by the config checks here, by the planner and by the tests.

mergekit resolves a parameter per output tensor: a *per-model* parameter (``weight``, ``density``, ``gamma``,
``epsilon``, ``scale``) is looked up in the model's own entry (``models[i].parameters`` or a slice source's),
then the slice's ``parameters``, then the top-level ``parameters``; a *shared* one (``normalize``, ``rescale``,
``lambda``, ``int8_mask``) only in the slice's and the top level's. Each value may be a number, a gradient
(a list, interpolated over the layers) or a filter list::

    parameters:
      weight: [0.2, 0.8]                      # a gradient
      density:
        - {filter: self_attn, value: 0.3}     # the first entry whose filter occurs in the tensor name wins
        - {value: 0.7}

hm3 refuses, in one line naming the YAML path, what mergekit would silently ignore or mis-merge: a parameter
the method does not take, a shared parameter given per model (mergekit ignores it there), a task-vector
parameter on the base model's own entry, the legacy ``pattern:`` key of a filter entry (mergekit drops it and
applies the entry to every tensor), and values that are not finite or outside the ranges below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hm3.errors import UserError
from hm3.merge.mergekit_schema import MergekitConfig

LINEAR = ("linear",)
TASK_VECTOR = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "della")
TRIMMING = ("ties", "dare_linear", "dare_ties", "breadcrumbs", "della")
PASSTHROUGH = ("passthrough",)


@dataclass(frozen=True)
class ParameterRule:
    """One parameter of mergekit's methods, as hm3 honours it.

    Attributes:
        name: The key under ``parameters:``.
        kind: ``float`` or ``bool``.
        per_model: Resolved per model (own entry, slice, top level); else shared (slice, top level).
        methods: The methods that take it; every other method refuses it.
        low: Smallest allowed value (floats).
        high: Largest allowed value (floats); ``high_open``: the bound itself is excluded.
        meaning: What it does, for messages and the README.
    """

    name: str
    kind: type
    per_model: bool
    methods: tuple[str, ...]
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    meaning: str = ""

    def problem(self, value: Any) -> str | None:
        """Why a scalar is not a valid value of this parameter (None: it is)."""
        if self.kind is bool:
            return None if as_bool(value) is not None else f"must be true or false, not {value!r}"
        number = as_float(value)
        if number is None:
            return f"must be a number, not {value!r}"
        if not math.isfinite(number):
            return f"must be a finite number, not {value!r}"
        above = number >= self.high if self.high_open else number > self.high  # type: ignore[operator]
        if number < self.low or above:  # type: ignore[operator]
            return f"must be in {self.range_text}, not {value!r}"
        return None

    @property
    def range_text(self) -> str:
        """The allowed values, as the messages and the README write them."""
        if self.kind is bool:
            return "true/false"
        return f"[{_number(self.low)}, {_number(self.high)}{')' if self.high_open else ']'}"


PARAMETERS: dict[str, ParameterRule] = {
    rule.name: rule
    for rule in (
        ParameterRule("weight", float, True, LINEAR + TASK_VECTOR, -1e3, 1e3, meaning="merge weight"),
        ParameterRule("density", float, True, TRIMMING, 0.0, 1.0, meaning="fraction of a task vector kept"),
        ParameterRule(
            "gamma", float, True, ("breadcrumbs",), 0.0, 1.0, meaning="fraction of largest entries dropped"
        ),
        ParameterRule(
            "epsilon",
            float,
            True,
            ("della",),
            0.0,
            1.0,
            high_open=True,
            meaning="spread of keep probabilities (density +/- epsilon inside (0, 1))",
        ),
        ParameterRule("scale", float, True, PASSTHROUGH, -1e3, 1e3, meaning="factor on the copied tensor"),
        ParameterRule("normalize", bool, False, LINEAR + TASK_VECTOR, meaning="divide by the weight sum"),
        ParameterRule("rescale", bool, False, TRIMMING, meaning="L1-rescale trimmed task vectors"),
        ParameterRule(
            "lambda", float, False, TASK_VECTOR, -1e3, 1e3, meaning="factor on the merged task vector"
        ),
        ParameterRule(
            "int8_mask",
            bool,
            False,
            TASK_VECTOR,
            meaning="mergekit's sign-mask dtype (same values either way)",
        ),
    )
}
"""Every parameter hm3 honours. mergekit also accepts ``density`` and ``rescale`` for ``task_arithmetic``,
where they do nothing; hm3 refuses them there."""


def rules_for(method: str) -> list[ParameterRule]:
    """The parameters ``method`` takes, in table order."""
    return [rule for rule in PARAMETERS.values() if method in rule.methods]


def as_float(value: Any) -> float | None:
    """A number as mergekit's pydantic validation reads it (ints, floats, numeric strings); None if not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


_TRUE = {"true", "yes", "on", "1", "t", "y"}
_FALSE = {"false", "no", "off", "0", "f", "n"}


def as_bool(value: Any) -> bool | None:
    """A boolean as pydantic reads it (true/false, 0/1, yes/no, on/off); None if not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        return True if lowered in _TRUE else False if lowered in _FALSE else None
    return None


def typed(setting: Any, rule: ParameterRule) -> Any:
    """``setting`` with every scalar read as the rule's kind (a checked setting: see :func:`check_parameters`),
    so that gradients of numbers interpolate and gradients of booleans pick, as in mergekit."""
    if isinstance(setting, dict):
        return {**setting, "value": typed(setting["value"], rule)}
    if isinstance(setting, list):
        return [typed(entry, rule) for entry in setting]
    return as_bool(setting) if rule.kind is bool else as_float(setting)


@dataclass(frozen=True)
class ParameterBlock:
    """One ``parameters:`` mapping of a config and where it sits."""

    where: str
    parameters: dict[str, Any] | None
    per_model: bool
    """A model's own entry (``models[i]`` or a slice source): only per-model parameters belong here."""
    is_base: bool = False
    """The entry of the base model of a task-vector method (whose task-vector parameters mergekit ignores)."""


def check_parameters(config: MergekitConfig, is_base: Callable[[str, str | None], bool]) -> None:
    """Refuse any parameter ``config``'s method does not honour where it is given, or any value out of range.

    Args:
        config: The configuration.
        is_base: Whether a model reference is the given base model, for a method that merges task vectors.

    Raises:
        UserError: one line naming the YAML path of the first problem.
    """
    blocks = [ParameterBlock("parameters", config.parameters, per_model=False)]
    for i, entry in enumerate(config.models or []):
        where = f"models[{i}].parameters"
        blocks.append(ParameterBlock(where, entry.parameters, True, is_base(entry.model, config.base_model)))
    for i, out_slice in enumerate(config.slices or []):
        blocks.append(ParameterBlock(f"slices[{i}].parameters", out_slice.parameters, per_model=False))
        base = out_slice.base_model or config.base_model
        for j, source in enumerate(out_slice.sources):
            where = f"slices[{i}].sources[{j}].parameters"
            blocks.append(ParameterBlock(where, source.parameters, True, is_base(source.model, base)))
    for block in blocks:
        _check_block(config.merge_method, block)


def _check_block(method: str, block: ParameterBlock) -> None:
    takes = {rule.name for rule in rules_for(method)}
    for name, setting in (block.parameters or {}).items():
        where = f"{block.where}.{name}"
        rule = PARAMETERS.get(name)
        if rule is None:
            raise UserError(
                f"{where}: not a parameter hm3 knows ({method} takes: {', '.join(sorted(takes))})"
            )
        if name not in takes:
            raise UserError(
                f"{where}: {method} does not take {name!r} (it takes: {', '.join(sorted(takes))}; "
                "mergekit would ignore it)"
            )
        if block.per_model and not rule.per_model:
            raise UserError(
                f"{where}: {name!r} is shared by all models; give it under the top-level or the slice's "
                "parameters (mergekit ignores it per model)"
            )
        if block.is_base:
            raise UserError(
                f"{where}: this is the base model, which {method} does not weight or trim "
                "(mergekit ignores it); remove it"
            )
        for value, path in _scalars(setting, where):
            problem = rule.problem(value)
            if problem:
                raise UserError(f"{path}: {problem}")


def _scalars(setting: Any, where: str) -> Iterator[tuple[Any, str]]:
    """Every scalar of a setting (a scalar, a gradient, a filter entry or list of them), with its path."""
    if isinstance(setting, dict):
        yield from _conditional(setting, where)
    elif isinstance(setting, list):
        if not setting:
            raise UserError(f"{where}: an empty list (give a value, a gradient or filter entries)")
        if all(isinstance(entry, dict) for entry in setting):
            for i, entry in enumerate(setting):
                yield from _conditional(entry, f"{where}[{i}]")
        elif any(isinstance(entry, (dict, list)) for entry in setting):
            raise UserError(f"{where}: a list is either a gradient of values or a list of filter entries")
        else:
            yield from ((entry, f"{where}[{i}]") for i, entry in enumerate(setting))
    else:
        yield setting, where


def _conditional(entry: dict[str, Any], where: str) -> Iterator[tuple[Any, str]]:
    if "pattern" in entry:
        raise UserError(
            f"{where}.pattern: the legacy 'pattern' key is ignored by mergekit (the entry would apply to "
            "every tensor); use 'filter: <substring of the tensor name>'"
        )
    unknown = sorted(set(entry) - {"filter", "value"})
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(unknown)} in a filter entry (keys: filter, value)"
        )
    if "value" not in entry:
        raise UserError(f"{where}: a filter entry needs a 'value'")
    if entry.get("filter") is not None and not isinstance(entry["filter"], str):
        raise UserError(f"{where}.filter: must be a substring of tensor names, not {entry['filter']!r}")
    value = entry["value"]
    if isinstance(value, dict) or (
        isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)
    ):
        raise UserError(f"{where}.value: must be a value or a gradient (a list of values)")
    yield from _scalars(value, f"{where}.value")


def _number(value: float | None) -> str:
    return "-inf" if value is None else f"{value:g}"
