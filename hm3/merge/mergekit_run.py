"""``hm3 merge --mergekit CONFIG --out DIR``: run a mergekit configuration, streaming to a checkpoint.

Inputs are read lazily (one tensor of each model at a time, through memory maps), merged, and handed to
``hm3.export`` which writes each tensor straight into its shard, so memory stays near a few tensors' worth.
When every tensor is a task-arithmetic / TIES / DARE merge or a plain copy in its stored dtype (bfloat16 or
float32), the run never imports torch: numpy arrays go through the fused numba kernels
(:func:`merged_arrays`); other configs merge torch tensors (:func:`merged_tensors`). Progress is shown
with rich; an error or Ctrl-C leaves no output folder behind.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from hm3.export import RawTensor, TensorLayout, check_output_folder, write_hf_checkpoint
from hm3.merge import fused
from hm3.merge.mergekit_export import model_card
from hm3.merge.mergekit_plan import MergePlan, PlannedTensor, plan_merge
from hm3.merge.mergekit_schema import load_mergekit_config
from hm3.merge.mergekit_vocab import aligned
from hm3.merge.runtime import collection_paused, merge_workers, reuse_freed_memory
from hm3.merge.streaming import Buffers, Readers, stream
from hm3.merge.tensor_merge import check_finite, check_finite_array, fusable, mask_seed, merge_tensor
from hm3.merge.tensor_reader import TORCH_DTYPES
from hm3.output_guard import check_no_overlap

if TYPE_CHECKING:
    import torch


def run_mergekit_config(
    config_path: str | Path,
    out: str | Path,
    *,
    shard_size: str | int = "5GB",
    force: bool = False,
    show_progress: bool = True,
) -> Path:
    """Run a mergekit YAML config and write the merged model to ``out``.

    Raises:
        UserError: the config is outside the supported subset, a model or tensor is missing or bad
            (NaN/Inf, mismatched shapes), or ``out`` cannot be written.
    """
    with collection_paused():
        return _run(Path(config_path), Path(out), shard_size, force, show_progress)


def _run(config_path: Path, out: Path, shard_size: str | int, force: bool, show_progress: bool) -> Path:
    config = load_mergekit_config(config_path)
    reuse_freed_memory()
    out = Path(out).resolve()
    check_output_folder(out, force=force, expected_bytes=None)
    plan = plan_merge(config, base_dir=config_path.resolve().parent)
    check_no_overlap(out, [("config", config_path), *(("input model", m.folder) for m in plan.models)])
    layout = output_layout(plan)
    total = sum(entry.nbytes for entry in layout)
    card = model_card(
        config.merge_method,
        [c.name for c in plan.models],
        config.base_model,
        config_path.read_text(),
    )
    if without_torch(plan):
        stream = merged_arrays(plan, workers=merge_workers(uses_torch=False), recycle=True, ordered=False)
    else:
        stream = merged_tensors(plan, workers=merge_workers(), ordered=False)
    with _Progress(len(plan.tensors), total, show_progress) as progress:
        return write_hf_checkpoint(
            stream,
            plan.config,
            out,
            tokenizer_from=plan.tokenizer_folder,
            shard_size=shard_size,
            force=force,
            model_card=card,
            num_layers=plan.num_layers,
            layer_origin=plan.layer_origin,
            expected_bytes=total,
            on_tensor=progress.advance,
            extra_files={"mergekit_config.yml": config_path.read_text()},
            layout=layout,
        )


def merged_tensors(
    plan: MergePlan, workers: int = 1, ordered: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, merged tensor)`` for each planned output tensor, in plan order (``ordered=False``: as
    they are done), reading inputs lazily.

    With ``workers`` > 1, that many tensors are merged at once on worker threads, outsized ones first and
    the rest a bounded distance ahead of the consumer (:mod:`hm3.merge.streaming`). The tensors are
    bit-identical for every ``workers``.
    """
    # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
    import torch

    dtype = getattr(torch, plan.dtype) if plan.dtype else None
    out_dtype = getattr(torch, plan.out_dtype) if plan.out_dtype else None

    def merge(readers: Readers, planned: PlannedTensor) -> torch.Tensor:
        tensors = [readers.load(index, name) for index, name in planned.inputs]
        base = readers.load(*planned.base) if planned.base is not None else None
        if plan.method is None:
            for tensor, (index, name) in zip(tensors, planned.inputs, strict=True):
                check_finite(tensor, plan.models[index].name, name)
        if planned.vocabulary is not None:
            tensors, base = _aligned(plan, planned, tensors, base, dtype)
        merged = _merge_one(plan, planned, tensors, base, dtype)
        return merged.to(out_dtype) if out_dtype is not None else merged

    return stream(plan, merge, workers, ordered)


def merged_arrays(
    plan: MergePlan, workers: int = 1, recycle: bool = False, ordered: bool = True
) -> Iterator[tuple[str, RawTensor | torch.Tensor]]:
    """:func:`merged_tensors` without torch, for a plan where :func:`without_torch` holds: inputs are numpy
    arrays over memory maps, merged by :func:`hm3.merge.fused.merge_arrays` (the same bits as
    :func:`merged_tensors`), copies passed through as stored. Skips torch's import, most of a short
    merge's start-up.

    With ``recycle``, the buffer of a yielded tensor is reused for a later one as soon as the next tensor is
    asked for (the consumer must be done with each tensor by then, as the checkpoint writer is): fresh
    memory costs the kernel a page zeroing on first touch, about a tenth of a merge's CPU time.
    """
    buffers = Buffers()

    def merge(readers: Readers, planned: PlannedTensor) -> RawTensor | torch.Tensor:
        arrays = [readers.array(index, name) for index, name in _sources(planned)]
        return _merged_array(plan, planned, arrays, buffers if recycle else None)

    for name, merged in stream(plan, merge, workers, ordered):
        yield name, merged
        if recycle and plan.method is not None and isinstance(merged, RawTensor):
            buffers.give_back(merged.data)  # (a torch tensor: the rare fallback of an overflowing merge)


def without_torch(plan: MergePlan) -> bool:
    """Whether every output tensor is a fused-kernel merge or a plain copy, in the dtype its inputs are
    stored in (bfloat16 or float32), read from safetensors files: then no tensor needs torch."""
    method = plan.method
    if method is not None and (
        method.kernel != "task_arithmetic" or method.sparsification not in fused.TRIM_MODES
    ):
        return False
    if any(checkpoint.pickled for checkpoint in plan.models):
        return False
    if any(planned.vocabulary is not None for planned in plan.tensors):
        return False  # re-indexing vocabulary rows (tokenizer_source) is done on torch tensors
    for planned in plan.tensors:
        if method is None and planned.scale is not None:
            return False
        if method is not None and not fusable(method, planned.parameters):  # type: ignore[arg-type]
            return False
        stored = {plan.models[index].tensors[name].dtype for index, name in _sources(planned)}
        dtype = TORCH_DTYPES.get(stored.pop(), "") if len(stored) == 1 else ""
        if (
            not fused.supports_dtype(dtype)
            or plan.dtype not in (None, dtype)
            or plan.out_dtype not in (None, dtype)
        ):
            return False
    return True


def _merged_array(
    plan: MergePlan,
    planned: PlannedTensor,
    arrays: list[tuple[np.ndarray, str, tuple[int, ...]]],
    buffers: Buffers | None = None,
) -> RawTensor | torch.Tensor:
    values = [array for array, _, _ in arrays]
    _, stored, shape = arrays[0]
    dtype = TORCH_DTYPES[stored]
    models = [plan.models[index].name for index, _ in _sources(planned)]
    if plan.method is None:
        check_finite_array(values[0], models[0], planned.name)
        return RawTensor(values[0], shape, dtype)
    params = planned.parameters
    assert params is not None
    out = buffers.take(values[-1]) if buffers is not None else np.empty_like(values[-1])
    finite = fused.merge_arrays(
        values[-1],
        values[:-1],
        out,
        params.weights,
        mode=fused.TRIM_MODES[plan.method.sparsification],
        densities=params.densities,
        seeds=[mask_seed(0, index, planned.name) for index, _ in planned.inputs],
        rescale=params.rescale,
        consensus=plan.method.consensus,
        normalize=params.normalize,
        scale=params.scale,
    )
    if finite:
        return RawTensor(out, shape, dtype)
    for array, model in zip(values, models, strict=True):
        check_finite_array(array, model, planned.name)
    # every input is finite but a task vector overflowed: the torch kernel merges this tensor, as it would
    import torch  # not at the top: a fused mergekit run never imports torch (this module's docstring)

    kind = getattr(torch, dtype)
    tensors = [
        torch.from_numpy(v.view(np.int16) if v.dtype == np.uint16 else v).view(kind).reshape(shape)
        for v in values
    ]
    return _merge_one(plan, planned, tensors[:-1], tensors[-1], None)


def _sources(planned: PlannedTensor) -> list[tuple[int, str]]:
    """``(model index, tensor name)`` of the merged inputs, then of the base (if any)."""
    return [*planned.inputs, *([planned.base] if planned.base is not None else [])]


def output_layout(plan: MergePlan) -> list[TensorLayout]:
    """Name, shape and dtype of every output tensor, in order (lets the writer stream without buffering)."""
    layout = []
    for tensor in plan.tensors:
        index, name = tensor.inputs[0]
        info = plan.models[index].tensors[name]
        stored = [info.dtype] + (
            [plan.models[tensor.base[0]].tensors[tensor.base[1]].dtype] if tensor.base else []
        )
        stored += [plan.models[i].tensors[n].dtype for i, n in tensor.inputs[1:]]
        if plan.out_dtype or plan.dtype:
            dtype = plan.out_dtype or plan.dtype
        elif len(set(stored)) == 1:
            dtype = TORCH_DTYPES[stored[0]]
        else:
            # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
            import torch

            promoted = _promoted([getattr(torch, TORCH_DTYPES[stored_dtype]) for stored_dtype in stored])
            dtype = str(promoted).removeprefix("torch.")
        shape = tuple(info.shape) if tensor.rows is None else (tensor.rows, *info.shape[1:])
        layout.append(TensorLayout(tensor.name, shape, dtype))
    return layout


def _merge_one(
    plan: MergePlan,
    planned: PlannedTensor,
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    dtype: torch.dtype | None,
) -> torch.Tensor:

    everything = [*tensors, *([base] if base is not None else [])]
    work = dtype if dtype is not None else _promoted([t.dtype for t in everything])
    tensors = [t.to(work) for t in tensors]
    if plan.method is None:
        return tensors[0] if planned.scale is None else tensors[0] * planned.scale
    assert planned.parameters is not None
    sources = [*planned.inputs, *([planned.base] if planned.base is not None else [])]
    return merge_tensor(
        plan.method,
        base.to(work) if base is not None else None,
        tensors,
        planned.parameters,
        tensor_name=planned.name,
        model_ids=[i for i, _ in planned.inputs],
        check_inputs=[plan.models[index].name for index, _ in sources],
    )


def _aligned(
    plan: MergePlan,
    planned: PlannedTensor,
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    dtype: torch.dtype | None,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The inputs of a vocabulary tensor with their rows re-indexed to ``tokenizer_source``'s vocabulary, in
    the merge's working dtype (as mergekit re-indexes after its loader's dtype conversion)."""

    assert planned.vocabulary is not None and plan.vocabulary is not None
    by_model = dict(zip([i for i, _ in planned.inputs], tensors, strict=True))
    if base is not None and planned.base is not None:
        by_model[planned.base[0]] = base
    work = (
        dtype if dtype is not None else _promoted([tensors[0].dtype, *(t.dtype for t in by_model.values())])
    )
    group = planned.vocabulary
    rows = aligned([by_model[i].to(work) for i in group.models], group, plan.vocabulary)
    result = dict(zip(group.models, rows, strict=True))
    return [result[i] for i, _ in planned.inputs], (
        result[planned.base[0]] if planned.base is not None else None
    )


class _Progress:
    """A rich progress bar over bytes written (silent when disabled or not on a terminal)."""

    def __init__(self, count: int, total_bytes: int, enabled: bool) -> None:
        self.enabled = enabled
        self.total = total_bytes
        self.count = count

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task(f"merging {self.count} tensors", total=self.total)
        return self

    def advance(self, name: str, nbytes: int) -> None:
        if self.enabled:
            self.bar.advance(self.task, nbytes)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)  # type: ignore[arg-type]


def _promoted(dtypes: list[torch.dtype]) -> torch.dtype:
    """The dtype all of ``dtypes`` promote to, by torch's rules (torch imported here: the torch-free path)."""
    # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
    import torch

    return functools.reduce(torch.promote_types, dtypes)
