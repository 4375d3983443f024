"""Planning a mergekit configuration: which output tensors, from which input tensors, with which parameters.

Follows ``mergekit.plan.MergePlanner``: ``models:`` becomes one slice over every layer (the base appended when
it is not listed); embeddings come from the first slice's sources and the final norm and head from the last
slice's, at gradient position t = 0; layer i of an n-layer slice sits at t = i / (n - 1). A parameter is
looked up in the source's own parameters, then the slice's, then the config's; the first value found wins.
Everything is checked from the safetensors headers before a tensor is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hm3.arch import ArchitectureSpec, detect_family
from hm3.checkpoint import Checkpoint
from hm3.errors import UserError
from hm3.merge.gradient import evaluate_setting, layer_position
from hm3.merge.mergekit_schema import InputSlice, MergekitConfig, OutputSlice
from hm3.merge.registry import METHODS, MergeMethod
from hm3.merge.tensor_merge import TensorParameters

PASSTHROUGH = "passthrough"
_PRE_MARKERS = ("embed", "pre_layrnorm")
"""Shared tensors before the layers (taken from the first slice); the others follow the last slice."""
_BOOL_PARAMETERS = ("normalize", "rescale", "int8_mask")
_SHARED_PARAMETERS = ("normalize", "rescale", "lambda", "int8_mask", "gamma", "epsilon")
KNOWN_PARAMETERS = frozenset({"weight", "density", *_SHARED_PARAMETERS, "scale"})
"""Parameters of the supported methods. Like mergekit, a method ignores those it does not take (``density``
for ``linear``); a name none of them takes (``t`` of slerp) is refused."""


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor of the merge.

    Attributes:
        name: Output tensor name.
        inputs: ``(model index, input tensor name)`` per merged model, base excluded.
        base: ``(model index, input tensor name)`` of the base for task-vector methods, else None.
        parameters: Resolved parameters (None for passthrough).
        scale: Passthrough's ``scale`` (None: copy as is).
    """

    name: str
    inputs: tuple[tuple[int, str], ...]
    base: tuple[int, str] | None
    parameters: TensorParameters | None
    scale: float | None = None


@dataclass(frozen=True)
class MergePlan:
    """Everything needed to run a mergekit config: models, method, output tensors, output config."""

    models: tuple[Checkpoint, ...]
    method: MergeMethod | None
    tensors: tuple[PlannedTensor, ...]
    config: dict[str, Any]
    num_layers: int
    layer_origin: tuple[int, ...]
    donor: Checkpoint
    spec: ArchitectureSpec
    dtype: str | None
    out_dtype: str | None


def plan_merge(config: MergekitConfig, base_dir: Path | None = None) -> MergePlan:
    """Check a config against its models and list the output tensors.

    Raises:
        UserError: unknown method or parameter, missing model or tensor, shapes that differ, a base that
            the method needs but the slice lacks.
    """
    method = _method(config.merge_method)
    models = _Models(base_dir)
    slices = _as_slices(config, models)
    base_index = models.index(config.base_model) if config.base_model else None
    donor_index = base_index if base_index is not None else models.index(slices[0].sources[0].model)
    donor = models.all[donor_index]
    spec = detect_family(donor.config, where=f"model {donor.name}")
    planner = _Planner(config, method, models, spec)
    shared = [n for n in donor.tensors if spec.layer_of(n) is None and spec.belongs(n)]
    pre = [n for n in shared if any(m in n for m in _PRE_MARKERS)]
    post = [n for n in shared if n not in pre]
    tensors = [planner.tensor(slices[0], n, None, 0.0) for n in pre]
    origin: list[int] = []
    for out_slice in slices:
        start, end = out_slice.sources[0].layer_range
        for offset in range(end - start):
            t = layer_position(offset, end - start)
            first = models.all[models.index(out_slice.sources[0].model)]
            for name in _layer_names(first, spec, start + offset):
                tensors.append(
                    planner.tensor(out_slice, spec.layer_tensor_name(name, len(origin)), offset, t)
                )
            origin.append(start + offset)
    tensors += [planner.tensor(slices[-1], n, None, 0.0) for n in post]
    out_config = dict(donor.config)
    out_dtype = config.out_dtype or config.dtype
    if out_dtype:
        out_config["dtype"] = out_dtype
        if "torch_dtype" in out_config:
            out_config["torch_dtype"] = out_dtype
    return MergePlan(
        models=tuple(models.all),
        method=method,
        tensors=tuple(t for t in tensors if t is not None),
        config=out_config,
        num_layers=len(origin),
        layer_origin=tuple(origin),
        donor=donor,
        spec=spec,
        dtype=config.dtype,
        out_dtype=config.out_dtype,
    )


class _Models:
    """The checkpoints a config names, opened once each, in order of first mention."""

    def __init__(self, base_dir: Path | None) -> None:
        self.base_dir = base_dir
        self.keys: list[str] = []
        self.all: list[Checkpoint] = []

    def index(self, reference: str) -> int:
        key = str(_resolve(reference, self.base_dir))
        if key not in self.keys:
            self.keys.append(key)
            self.all.append(Checkpoint(key, name=reference))
        return self.keys.index(key)

    def num_layers(self, reference: str) -> int:
        checkpoint = self.all[self.index(reference)]
        return detect_family(checkpoint.config, where=f"model {reference}").num_layers(checkpoint.config)


def _method(name: str) -> MergeMethod | None:
    if name == PASSTHROUGH:
        return None
    if name not in METHODS:
        raise UserError(
            f"merge_method {name!r} is not supported by hm3 (supported: {', '.join([*METHODS, PASSTHROUGH])})"
        )
    return METHODS[name]


def _resolve(reference: str, base_dir: Path | None) -> Path:
    path = Path(reference).expanduser()
    candidates = (
        [path] if path.is_absolute() else [Path.cwd() / path, *([base_dir / path] if base_dir else [])]
    )
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise UserError(f"model {reference}: folder not found (hub ids are not fetched; give a local folder)")


def _as_slices(config: MergekitConfig, models: _Models) -> list[OutputSlice]:
    if config.slices:
        return list(config.slices)
    sources = []
    base_key = str(_resolve(config.base_model, models.base_dir)) if config.base_model else None
    listed = False
    for entry in config.models or []:
        listed |= base_key is not None and str(_resolve(entry.model, models.base_dir)) == base_key
        layers = models.num_layers(entry.model)
        sources.append(InputSlice(model=entry.model, layer_range=(0, layers), parameters=entry.parameters))
    if config.base_model and not listed:
        sources.append(
            InputSlice(model=config.base_model, layer_range=(0, models.num_layers(config.base_model)))
        )
    return [OutputSlice(sources=sources)]


def _layer_names(checkpoint: Checkpoint, spec: ArchitectureSpec, layer: int) -> list[str]:
    names = [n for n in checkpoint.tensors if spec.layer_of(n) == layer and spec.belongs(n)]
    if not names:
        raise UserError(f"model {checkpoint.name}: has no layer {layer}")
    return names


class _Planner:
    """Resolves inputs and parameters of one output tensor at a time."""

    def __init__(
        self, config: MergekitConfig, method: MergeMethod | None, models: _Models, spec: ArchitectureSpec
    ):
        self.config = config
        self.method = method
        self.models = models
        self.spec = spec
        for where, parameters in self._all_parameter_blocks():
            unknown = sorted(set(parameters or {}) - KNOWN_PARAMETERS)
            if unknown:
                raise UserError(
                    f"{where}: parameter(s) {', '.join(unknown)} not supported by hm3 "
                    f"(supported: {', '.join(sorted(KNOWN_PARAMETERS))})"
                )

    def _all_parameter_blocks(self):
        yield "parameters", self.config.parameters
        for i, entry in enumerate(self.config.models or []):
            yield f"models[{i}].parameters", entry.parameters
        for i, out_slice in enumerate(self.config.slices or []):
            yield f"slices[{i}].parameters", out_slice.parameters
            for j, source in enumerate(out_slice.sources):
                yield f"slices[{i}].sources[{j}].parameters", source.parameters

    def tensor(
        self, out_slice: OutputSlice, out_name: str, offset: int | None, t: float
    ) -> PlannedTensor | None:
        """The planned output tensor ``out_name`` of a slice (``offset``: layer within the slice, None for
        shared tensors)."""
        base_ref = out_slice.base_model or self.config.base_model
        base_key = str(_resolve(base_ref, self.models.base_dir)) if base_ref else None
        inputs: list[tuple[int, str, InputSlice]] = []
        base: tuple[int, str] | None = None
        for source in out_slice.sources:
            index = self.models.index(source.model)
            name = (
                out_name
                if offset is None
                else self.spec.layer_tensor_name(out_name, source.layer_range[0] + offset)
            )
            name = self._present(index, name)
            if name is None:
                return None
            is_base = (
                self.method is not None and self.method.uses_base and self.models.keys[index] == base_key
            )
            if is_base:
                base = (index, name)
            else:
                inputs.append((index, name, source))
        self._check_inputs(out_name, inputs, base, base_ref)
        if self.method is None:
            scale = self._value("scale", out_slice, inputs[0][2], inputs[0][1], t, float)
            return PlannedTensor(out_name, ((inputs[0][0], inputs[0][1]),), None, None, scale)
        weights, densities = [], []
        for _, name, source in inputs:
            weight = self._value("weight", out_slice, source, name, t, float)
            if weight is None:
                raise UserError(
                    f"model {source.model}: no 'weight' for {name} (the {self.method.name} method needs one)"
                )
            weights.append(weight)
            density = self._value("density", out_slice, source, name, t, float)
            densities.append(1.0 if density is None or self.method.sparsification is None else density)
        shared = {
            k: self._value(k, out_slice, None, out_name, t, bool if k in _BOOL_PARAMETERS else float)
            for k in _SHARED_PARAMETERS
        }
        extra = dict(self.method.extra)
        parameters = TensorParameters(
            weights=tuple(weights),
            densities=tuple(densities),
            normalize=self.method.default_normalize if shared["normalize"] is None else shared["normalize"],
            rescale=self.method.default_rescale if shared["rescale"] is None else shared["rescale"],
            scale=1.0 if shared["lambda"] is None else shared["lambda"],
            gamma=extra.get("gamma", 0.01) if shared["gamma"] is None else shared["gamma"],
            epsilon=extra.get("epsilon", 0.15) if shared["epsilon"] is None else shared["epsilon"],
        )
        return PlannedTensor(out_name, tuple((i, n) for i, n, _ in inputs), base, parameters)

    def _present(self, index: int, name: str) -> str | None:
        checkpoint = self.models.all[index]
        if name in checkpoint.tensors:
            return name
        tied = self.spec.vocab_tensors[0] if self.spec.vocab_tensors else None
        if tied and name in self.spec.vocab_tensors[1:] and tied in checkpoint.tensors:
            if checkpoint.config.get("tie_word_embeddings", False):
                return None  # tied head: not written, like mergekit
            return tied
        raise UserError(f"model {checkpoint.name}: has no tensor {name}")

    def _check_inputs(
        self, out_name: str, inputs: list, base: tuple[int, str] | None, base_ref: str | None
    ) -> None:
        method = self.method
        if method is None and len(inputs) != 1:
            raise UserError(
                f"passthrough takes exactly one source per slice, got {len(inputs)} for {out_name}"
            )
        if method is not None and method.uses_base and base is None:
            raise UserError(f"{method.name} needs base_model among each slice's sources (tensor {out_name})")
        if not inputs:
            raise UserError(f"no models to merge into {out_name} besides the base")
        everything = [(i, n) for i, n, _ in inputs] + ([base] if base else [])
        shapes = {(i, n): self.models.all[i].tensors[n].shape for i, n in everything}
        first = next(iter(shapes.values()))
        for (i, n), shape in shapes.items():
            if shape != first:
                first_key = next(iter(shapes))
                raise UserError(
                    f"tensor {out_name}: shape {list(shape)} of {n} in model {self.models.all[i].name} differs "
                    f"from {list(first)} in model {self.models.all[first_key[0]].name}"
                )

    def _value(
        self, key: str, out_slice: OutputSlice, source: InputSlice | None, name: str, t: float, kind: type
    ) -> Any:
        scopes = []
        if source is not None:
            scopes += [s.parameters for s in out_slice.sources if s.model == source.model]
        scopes += [out_slice.parameters, self.config.parameters]
        for scope in scopes:
            if scope and key in scope:
                try:
                    value = evaluate_setting(scope[key], t, name, kind)
                except (ValueError, TypeError, KeyError) as error:
                    raise UserError(f"parameter {key}: {error}") from None
                if value is not None:
                    return value
        return None
