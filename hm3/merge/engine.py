"""Merging a pool in memory: ``merge_state_dict(pool, spec)`` for the search, tensor by tensor, no disk I/O.

Peak memory is the merged model plus one tensor's inputs: inputs are read one tensor at a time through
``pool.tensor`` (memory-mapped), or taken from ``pool.state_dict(i)`` when the search already holds whole
models in memory. An offloaded pool (:meth:`hm3.pool.ModelPool.place` with ``device_memory``) is merged
streamed: each tensor's inputs move from host memory (as stored) to the device in the run's dtype, are merged
there, and the merged tensor goes back to host memory. ``iter_merged_tensors`` yields the same tensors one by
one, for streaming to disk.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from hm3.errors import UserError
from hm3.export import write_hf_checkpoint
from hm3.merge.gradient import layer_position
from hm3.merge.mergekit_export import model_card, to_mergekit_yaml
from hm3.merge.runtime import reuse_freed_memory
from hm3.merge.spec import MergeSpec
from hm3.merge.tensor_merge import TensorParameters, check_finite, merge_tensor
from hm3.pool import BASE, ModelPool

_CHECKED: weakref.WeakKeyDictionary[ModelPool, set[tuple[int, str]]] = weakref.WeakKeyDictionary()
"""Inputs already checked finite, per pool (the search merges the same inputs hundreds of times)."""


def merge_state_dict(
    pool: ModelPool, spec: MergeSpec, *, cached: bool | None = None
) -> dict[str, torch.Tensor]:
    """The merged model's backbone tensors, in the base's tensor order.

    Args:
        pool: The base and the K fine-tuned models.
        spec: The merge; ``len(spec.weights)`` must be K.
        cached: True: read inputs through ``pool.state_dict(i)`` (whole models kept in memory, fastest for
            repeated merges); False: through ``pool.tensor`` (one tensor at a time); None: use whole models
            where the pool already holds them.

    Raises:
        UserError: the spec does not fit the pool, or an input holds NaN/Inf.
    """
    return dict(iter_merged_tensors(pool, spec, cached=cached))


def iter_merged_tensors(
    pool: ModelPool, spec: MergeSpec, *, cached: bool | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, merged tensor)`` for every backbone tensor, one at a time (see :func:`merge_state_dict`)."""
    reuse_freed_memory()
    method = spec.row
    count = len(pool.models)
    if len(spec.weights) != count:
        raise UserError(f"the merge has {len(spec.weights)} weights for a pool of {count} models")
    read = _reader(pool, cached)
    layers = pool.num_layers
    dtype = getattr(torch, spec.dtype) if spec.dtype else None
    out_dtype = getattr(torch, spec.out_dtype) if spec.out_dtype else None
    by_position: dict[float, TensorParameters] = {}
    model_indices = list(range(count))
    device = pool.compute_device if pool.offloaded else None  # streamed: host -> device -> merged -> host
    for name in pool.tensor_names:
        t = layer_position(pool.backbone.layer_of(name), layers)
        params = by_position.get(t)
        if params is None:
            params = by_position[t] = _parameters(spec, t)
        inputs = [read(index, name, device) for index in model_indices]
        base = read(BASE, name, device) if method.uses_base else None
        work = dtype or _promoted([*inputs, *([base] if base is not None else [])])
        inputs = [tensor.to(work) for tensor in inputs]
        if base is not None:
            base = base.to(work)
        merged = merge_tensor(
            method, base, inputs, params, seed=spec.seed, tensor_name=name, model_ids=model_indices
        )
        merged = merged.to(out_dtype) if out_dtype is not None else merged
        yield name, merged if device is None else merged.to("cpu")


def _parameters(spec: MergeSpec, t: float) -> TensorParameters:
    return TensorParameters(
        weights=tuple(spec.weights_at(t)),
        densities=tuple(spec.density_at(t)),
        normalize=spec.effective_normalize,
        rescale=spec.effective_rescale,
        scale=spec.scale,
        gamma=spec.gamma,
        epsilon=spec.epsilon,
    )


def _promoted(tensors: list[torch.Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _reader(pool: ModelPool, cached: bool | None) -> Callable[[int, str], torch.Tensor]:
    checked = _CHECKED.setdefault(pool, set())
    held: dict[int, dict[str, torch.Tensor]] = pool.__dict__.get("_state_dicts", {})

    def read(index: int, name: str, device: str | None = None) -> torch.Tensor:
        if cached or (cached is None and index in held):
            tensor = pool.state_dict(index)[name]
        else:
            tensor = pool.tensor(index, name)
        if (index, name) not in checked:
            check_finite(tensor, pool.checkpoint(index).name, name)
            checked.add((index, name))
        return tensor if device is None else tensor.to(device=device, dtype=pool.compute_dtype)

    return read


def export_merge(
    pool: ModelPool,
    spec: MergeSpec,
    out: Path,
    *,
    shard_size: str | int = "5GB",
    force: bool = False,
) -> Path:
    """Write a merge of the pool as a Hugging Face checkpoint (streamed), with a model card and the
    mergekit YAML that reproduces it (``mergekit_config.yml``)."""
    paths = [m.folder for m in pool.models]
    yaml_text = to_mergekit_yaml(spec, paths, pool.base.folder)
    config = dict(pool.base.config)
    if spec.out_dtype or spec.dtype:
        config["dtype"] = spec.out_dtype or spec.dtype
    size = {"float32": 4, "float64": 8}.get(spec.out_dtype or spec.dtype or "", 2)
    expected = sum(
        info.nbytes if not (spec.out_dtype or spec.dtype) else _numel(info.shape) * size
        for name, info in pool.base.tensors.items()
        if name in set(pool.tensor_names)
    )
    return write_hf_checkpoint(
        iter_merged_tensors(pool, spec),
        config,
        Path(out),
        tokenizer_from=pool.base.folder,
        shard_size=shard_size,
        force=force,
        model_card=model_card(spec.method, [str(p) for p in paths], str(pool.base.folder), yaml_text),
        expected_bytes=expected,
        extra_files={"mergekit_config.yml": yaml_text},
    )


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
