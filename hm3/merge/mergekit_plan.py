"""Planning a mergekit configuration: which output tensors, from which input tensors, with which parameters.

Follows ``mergekit.plan.MergePlanner``: ``models:`` becomes one slice over every layer (the base appended when
it is not listed); embeddings come from the first slice's sources and the final norm and head from the last
slice's, at gradient position t = 0; layer i of an n-layer slice sits at t = i / (n - 1). A parameter is
resolved as :mod:`hm3.merge.mergekit_parameters` says (the table of what is honoured where), and
``tokenizer_source`` re-indexes the vocabulary tensors as :mod:`hm3.merge.mergekit_vocab` says. Everything
is checked from the config, the tokenizers and the safetensors headers before a tensor is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hm3.arch import Backbone, detect_family
from hm3.checkpoint import Checkpoint
from hm3.errors import UserError
from hm3.merge.gradient import evaluate_setting, layer_position
from hm3.merge.mergekit_parameters import PARAMETERS, check_parameters, rules_for, typed
from hm3.merge.mergekit_schema import InputSlice, MergekitConfig, OutputSlice
from hm3.merge.mergekit_vocab import Vocabulary, VocabularyGroup, check_rows, read_vocabulary
from hm3.merge.registry import METHODS, MergeMethod
from hm3.merge.tensor_merge import TensorParameters

PASSTHROUGH = "passthrough"
_PRE_MARKERS = ("embed", "pre_layrnorm")
"""Shared tensors before the layers (taken from the first slice); the others follow the last slice."""


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor of the merge.

    Attributes:
        name: Output tensor name.
        inputs: ``(model index, input tensor name)`` per merged model, base excluded.
        base: ``(model index, input tensor name)`` of the base for task-vector methods, else None.
        parameters: Resolved parameters (None for passthrough).
        scale: Passthrough's ``scale`` (None: copy as is).
        vocabulary: For a vocabulary tensor re-indexed by ``tokenizer_source``: its inputs' models (else None).
        rows: The output's first dimension when it differs from the inputs' (re-indexed vocabulary).
    """

    name: str
    inputs: tuple[tuple[int, str], ...]
    base: tuple[int, str] | None
    parameters: TensorParameters | None
    scale: float | None = None
    vocabulary: VocabularyGroup | None = None
    rows: int | None = None


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
    backbone: Backbone
    dtype: str | None
    out_dtype: str | None
    vocabulary: Vocabulary | None = None
    tokenizer_folder: Path | None = None


def plan_merge(config: MergekitConfig, base_dir: Path | None = None) -> MergePlan:
    """Check a config against its models and list the output tensors.

    Raises:
        UserError: unknown method, a parameter not honoured where it is given or out of range, a missing
            model or tensor, shapes that differ, a base that the method needs but the slice lacks, a
            vocabulary that cannot be aligned as mergekit would.
    """
    method = _method(config.merge_method)
    models = _Models(base_dir)
    uses_base = method is not None and method.uses_base
    check_parameters(
        config, lambda model, base: uses_base and base is not None and models.key(model) == models.key(base)
    )
    slices = _as_slices(config, models)
    _check_distinct_sources(slices, models)
    base_index = models.index(config.base_model) if config.base_model else None
    donor_index = base_index if base_index is not None else models.index(slices[0].sources[0].model)
    donor = models.all[donor_index]
    _refuse_custom_code(models.all)
    backbone = detect_family(donor.config, where=f"model {donor.name}")
    vocabulary = None
    if config.tokenizer_source is not None:
        referenced = sorted({models.index(s.model) for out_slice in slices for s in out_slice.sources})
        source = config.tokenizer_source
        folder = donor.folder if source == "base" else Path(models.key(source))
        vocabulary = read_vocabulary(source, base_index, referenced, models.all, folder)
    planner = _Planner(config, method, models, backbone, vocabulary)
    shared = [n for n in donor.tensors if backbone.layer_of(n) is None and backbone.belongs(n)]
    if backbone.vocab_tensors and backbone.vocab_tensors[0] in donor.tensors:  # a donor that ties its head
        shared += [n for n in backbone.vocab_tensors[1:] if n not in shared]  # written if a source stores one
    pre = [n for n in shared if any(m in n for m in _PRE_MARKERS)]
    post = [n for n in shared if n not in pre]
    tensors = [planner.tensor(slices[0], n, None, 0.0) for n in pre]
    origin: list[int] = []
    for out_slice in slices:
        start, end = out_slice.sources[0].layer_range
        for offset in range(end - start):
            t = layer_position(offset, end - start)
            first = models.all[models.index(out_slice.sources[0].model)]
            for name in _layer_names(first, backbone, start + offset):
                tensors.append(
                    planner.tensor(out_slice, backbone.layer_tensor_name(name, len(origin)), offset, t)
                )
            origin.append(start + offset)
    tensors += [planner.tensor(slices[-1], n, None, 0.0) for n in post]
    out_config = dict(donor.config)
    out_dtype = config.out_dtype or config.dtype
    if out_dtype:
        out_config["dtype"] = out_dtype
        if "torch_dtype" in out_config:
            out_config["torch_dtype"] = out_dtype
    if vocabulary is not None:
        out_config["vocab_size"] = vocabulary.size  # as mergekit: the rows of the output vocabulary
    return MergePlan(
        models=tuple(models.all),
        method=method,
        tensors=tuple(t for t in tensors if t is not None),
        config=out_config,
        num_layers=len(origin),
        layer_origin=tuple(origin),
        donor=donor,
        backbone=backbone,
        dtype=config.dtype,
        out_dtype=config.out_dtype,
        vocabulary=vocabulary,
        tokenizer_folder=vocabulary.tokenizer_folder if vocabulary is not None else donor.folder,
    )


class _Models:
    """The checkpoints a config names, opened once each, in order of first mention."""

    def __init__(self, base_dir: Path | None) -> None:
        self.base_dir = base_dir
        self.keys: list[str] = []
        self.all: list[Checkpoint] = []

    def key(self, reference: str) -> str:
        """The resolved folder of a model reference."""
        return str(_resolve(reference, self.base_dir))

    def index(self, reference: str) -> int:
        key = self.key(reference)
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


def _refuse_custom_code(checkpoints: list[Checkpoint]) -> None:
    """Refuse a model whose config names custom code (``auto_map``): its output config would name it too.

    The recipe path refuses such a model unless ``trust_remote_code: true``; a mergekit config has no such
    switch in hm3, so the merge is refused rather than writing a model that asks its users to run that code.
    """
    for checkpoint in checkpoints:
        if "auto_map" in checkpoint.config:
            raise UserError(
                f"model {checkpoint.name}: its config.json asks for custom code (auto_map), which hm3 merge "
                "--mergekit does not merge or pass on; merge it with a recipe and trust_remote_code: true"
            )


def _cancel(weights: tuple[float, ...]) -> bool:
    """Whether weights sum to zero up to rounding: the kernel sums them in float32, where 0.1 + 0.2 - 0.3 is
    exactly 0 (and a float64 check passes it), so a sum this small is a division by zero or by noise."""
    return abs(sum(weights)) <= 1e-6 * sum(abs(w) for w in weights)


def _as_slices(config: MergekitConfig, models: _Models) -> list[OutputSlice]:
    if config.slices:
        return list(config.slices)
    sources = []
    base_key = models.key(config.base_model) if config.base_model else None
    listed = False
    for entry in config.models or []:
        listed |= base_key is not None and models.key(entry.model) == base_key
        layers = models.num_layers(entry.model)
        sources.append(InputSlice(model=entry.model, layer_range=(0, layers), parameters=entry.parameters))
    if config.base_model and not listed:
        sources.append(
            InputSlice(model=config.base_model, layer_range=(0, models.num_layers(config.base_model)))
        )
    layers = {source.model: source.layer_range[1] for source in sources}
    if len(set(layers.values())) > 1:
        counts = ", ".join(f"{model}: {count}" for model, count in layers.items())
        raise UserError(f"models: a merge of whole models needs equal layer counts ({counts}); use slices")
    return [OutputSlice(sources=sources)]


def _check_distinct_sources(slices: list[OutputSlice], models: _Models) -> None:
    for i, out_slice in enumerate(slices):
        keys = [models.key(source.model) for source in out_slice.sources]
        for j, key in enumerate(keys):
            if key in keys[:j]:
                first, again = out_slice.sources[keys.index(key)].model, out_slice.sources[j].model
                named = (
                    f"model {again} is given twice"
                    if first == again
                    else f"{first} and {again} are one model"
                )
                raise UserError(
                    f"slices[{i}]: {named} ({key}): give each input once (to weigh it more, raise its weight)"
                )


def _layer_names(checkpoint: Checkpoint, backbone: Backbone, layer: int) -> list[str]:
    names = [n for n in checkpoint.tensors if backbone.layer_of(n) == layer and backbone.belongs(n)]
    if not names:
        raise UserError(f"model {checkpoint.name}: has no layer {layer}")
    return names


class _Planner:
    """Resolves inputs and parameters of one output tensor at a time."""

    def __init__(
        self,
        config: MergekitConfig,
        method: MergeMethod | None,
        models: _Models,
        backbone: Backbone,
        vocabulary: Vocabulary | None,
    ):
        self.config = config
        self.method = method
        self.models = models
        self.backbone = backbone
        self.vocabulary = vocabulary
        self.rules = rules_for(method.name if method is not None else PASSTHROUGH)

    def tensor(
        self, out_slice: OutputSlice, out_name: str, offset: int | None, t: float
    ) -> PlannedTensor | None:
        """The planned output tensor ``out_name`` of a slice (``offset``: layer within the slice, None for
        shared tensors)."""
        base_ref = out_slice.base_model or self.config.base_model
        base_key = self.models.key(base_ref) if base_ref else None
        if offset is None and out_name in self.backbone.vocab_tensors[1:]:
            holders = [
                s
                for s in out_slice.sources
                if out_name in self.models.all[self.models.index(s.model)].tensors
            ]
            if not holders:
                return None  # every source ties its head to its embeddings: not written (an optional weight)
        group: list[tuple[int, str, InputSlice]] = []
        for source in out_slice.sources:
            index = self.models.index(source.model)
            name = (
                out_name
                if offset is None
                else self.backbone.layer_tensor_name(out_name, source.layer_range[0] + offset)
            )
            group.append((index, self._present(index, name), source))
        uses_base = self.method is not None and self.method.uses_base
        inputs = [g for g in group if not (uses_base and self.models.keys[g[0]] == base_key)]
        base = next(((i, n) for i, n, _ in group if uses_base and self.models.keys[i] == base_key), None)
        vocabulary, rows = self._vocabulary_group(out_name, group, base_key)
        self._check_inputs(out_name, inputs, base, vocabulary is not None)
        if self.method is None:
            scale = self._value("scale", out_slice, inputs[0][2], inputs[0][1], t)
            return PlannedTensor(
                out_name, ((inputs[0][0], inputs[0][1]),), None, None, scale, vocabulary, rows
            )
        per_model: dict[str, list[Any]] = {r.name: [] for r in self.rules if r.per_model}
        for _, name, source in inputs:
            for key, values in per_model.items():
                value = self._value(key, out_slice, source, name, t)
                if value is None and key == "weight":
                    raise UserError(
                        f"model {source.model}: no 'weight' for {name} (the {self.method.name} method needs one)"
                    )
                values.append(self._default(key) if value is None else value)
        shared = {
            r.name: self._value(r.name, out_slice, None, out_name, t) for r in self.rules if not r.per_model
        }
        parameters = TensorParameters(
            weights=tuple(per_model["weight"]),
            densities=tuple(per_model.get("density") or (1.0,) * len(inputs)),
            normalize=self.method.default_normalize if shared["normalize"] is None else shared["normalize"],
            rescale=self.method.default_rescale if shared.get("rescale") is None else shared["rescale"],
            scale=1.0 if shared.get("lambda") is None else shared["lambda"],
            gamma=tuple(per_model.get("gamma") or (self._default("gamma"),) * len(inputs)),
            epsilon=tuple(per_model.get("epsilon") or (self._default("epsilon"),) * len(inputs)),
        )
        self._check_values(out_name, inputs, parameters)
        merged = tuple((i, n) for i, n, _ in inputs)
        return PlannedTensor(out_name, merged, base, parameters, vocabulary=vocabulary, rows=rows)

    def _default(self, key: str) -> float:
        extra = dict(self.method.extra) if self.method is not None else {}
        return {"density": 1.0, "gamma": extra.get("gamma", 0.01), "epsilon": extra.get("epsilon", 0.15)}[key]

    def _check_values(self, out_name: str, inputs: list, parameters: TensorParameters) -> None:
        """Refuse resolved values no merge can use: DELLA's density +/- epsilon outside (0, 1) (mergekit fails
        on it mid-merge), and linear weights summing to zero under ``normalize`` (a division by zero)."""
        method = self.method
        assert method is not None
        if method.sparsification == "della_magprune":
            for (_, name, source), density, epsilon in zip(
                inputs,
                parameters.densities,
                parameters.epsilon,
                strict=True,  # type: ignore[arg-type]
            ):
                if 0 < density < 1 and not (density - epsilon > 0 and density + epsilon < 1):
                    raise UserError(
                        f"model {source.model}: epsilon {epsilon:g} with density {density:g} for {name}: della "
                        "needs density +/- epsilon inside (0, 1)"
                    )
        weights = parameters.weights
        if method.kernel == "linear" and parameters.normalize and _cancel(weights):
            raise UserError(
                f"tensor {out_name}: the weights {', '.join(f'{w:g}' for w in weights)} sum to 0 and normalize "
                "divides by their sum"
            )

    def _vocabulary_group(
        self, out_name: str, group: list, base_key: str | None
    ) -> tuple[VocabularyGroup | None, int | None]:
        """The inputs of a vocabulary tensor that ``tokenizer_source`` re-indexes (None: nothing to do)."""
        if self.vocabulary is None or out_name not in self.backbone.vocab_tensors:
            return None, None
        stored = []
        for index, name, _ in group:
            checkpoint = self.models.all[index]
            stored.append(checkpoint.tensors[name].shape[0])
            check_rows(self.vocabulary, index, checkpoint, name, stored[-1])
        if all(self.vocabulary.is_identity(i, rows) for (i, _, _), rows in zip(group, stored, strict=True)):
            return None, None
        models = tuple(i for i, _, _ in group)
        base = next((i for i in models if self.models.keys[i] == base_key), None)
        return VocabularyGroup(models, base), self.vocabulary.size

    def _present(self, index: int, name: str) -> str:
        """The tensor a source gives for ``name``: its own, or — for the output head of a model that ties it to
        its embeddings (no head stored) — its embeddings, as mergekit reads a tied weight. The head is written
        whenever one source stores its own (:meth:`tensor`): leaving it out because one input is tied would
        leave an untied output with no head, which transformers fills with random values."""
        checkpoint = self.models.all[index]
        if name in checkpoint.tensors:
            return name
        tied = self.backbone.vocab_tensors[0] if self.backbone.vocab_tensors else None
        if tied and name in self.backbone.vocab_tensors[1:] and tied in checkpoint.tensors:
            return tied
        raise UserError(f"model {checkpoint.name}: has no tensor {name}")

    def _check_inputs(self, out_name: str, inputs: list, base: tuple[int, str] | None, aligned: bool) -> None:
        method = self.method
        if method is None and len(inputs) != 1:
            raise UserError(
                f"passthrough takes exactly one source per slice, got {len(inputs)} for {out_name}"
            )
        if method is not None and method.uses_base and base is None:
            raise UserError(f"{method.name} needs base_model among each slice's sources (tensor {out_name})")
        if not inputs:
            raise UserError(f"no models to merge into {out_name} besides the base")
        (first_index, first_name), *others = [(i, n) for i, n, _ in inputs] + ([base] if base else [])
        first = self.models.all[first_index].tensors[first_name].shape
        skip = 1 if aligned else 0  # re-indexed vocabulary tensors may differ in rows
        for index, name in others:
            shape = self.models.all[index].tensors[name].shape
            if shape[skip:] != first[skip:]:
                hint = ""
                if self.vocabulary is None and out_name in self.backbone.vocab_tensors:
                    hint = " (tokenizer_source aligns vocabularies)"
                raise UserError(
                    f"tensor {out_name}: shape {list(shape)} of {name} in model {self.models.all[index].name} "
                    f"differs from {list(first)} in model {self.models.all[first_index].name}{hint}"
                )

    def _value(self, key: str, out_slice: OutputSlice, source: InputSlice | None, name: str, t: float) -> Any:
        """mergekit's lookup: the source's own parameters (per-model keys), the slice's, the top level's; the
        first setting that gives a value for this tensor wins."""
        rule = PARAMETERS[key]
        scopes = []
        if source is not None:
            scopes += [s.parameters for s in out_slice.sources if s.model == source.model]
        scopes += [out_slice.parameters, self.config.parameters]
        for scope in scopes:
            if scope and key in scope:
                value = evaluate_setting(typed(scope[key], rule), t, name, rule.kind)
                if value is not None:
                    return value
        return None
