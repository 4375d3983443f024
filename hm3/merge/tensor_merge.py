"""One output tensor from its inputs: the dispatch from a registry row to its kernel, with checks.

No I/O here: callers load the inputs (from a pool, a cached state dict, or checkpoints of a mergekit config)
and hand them over with the parameters resolved for this tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hm3.errors import UserError
from hm3.merge import fused
from hm3.merge.registry import MergeMethod

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TensorParameters:
    """Parameters of one output tensor, resolved (gradients and filters evaluated).

    Attributes:
        weights: One per merged model (fine-tuned models for task-vector methods, every input for linear).
        densities: One per merged model (1.0: not trimmed).
        normalize: Divide by the weight sum.
        rescale: L1-rescale trimmed task vectors.
        scale: λ.
        gamma: Breadcrumbs outlier fraction: one for every model, or one per merged model.
        epsilon: DELLA spread: one for every model, or one per merged model.
    """

    weights: tuple[float, ...]
    densities: tuple[float, ...]
    normalize: bool
    rescale: bool
    scale: float = 1.0
    gamma: float | tuple[float, ...] = 0.01
    epsilon: float | tuple[float, ...] = 0.15

    def gamma_of(self, index: int) -> float:
        """``gamma`` of merged model ``index``."""
        return self.gamma[index] if isinstance(self.gamma, tuple) else self.gamma

    def epsilon_of(self, index: int) -> float:
        """``epsilon`` of merged model ``index``."""
        return self.epsilon[index] if isinstance(self.epsilon, tuple) else self.epsilon


def mask_seed(seed: int, model_id: int | str, tensor_name: str) -> int:
    """The seed of one random mask: fixed by the merge seed, the model and the tensor (order-independent)."""
    digest = hashlib.blake2b(f"{seed}\0{model_id}\0{tensor_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def merge_tensor(
    method: MergeMethod,
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    params: TensorParameters,
    *,
    seed: int = 0,
    tensor_name: str = "",
    model_ids: Sequence[int | str] | None = None,
    check_inputs: Sequence[str] | None = None,
) -> torch.Tensor:
    """Merge one tensor with ``method``; inputs must already share shape and dtype.

    Args:
        method: The registry row.
        base: The base tensor (task-vector methods), or None (linear).
        tensors: The merged models' tensors, in the order of ``params.weights``.
        params: The resolved parameters.
        seed: Merge seed (random masks).
        tensor_name: Name used to derive the masks' seeds.
        model_ids: Identity of each model for the masks' seeds (default: positions).
        check_inputs: Names of the models of ``tensors`` then the base: refuse NaN/Inf inputs here, naming
            them (free on the fused path, whose statistics pass sees every entry). None: the caller checked.

    Raises:
        UserError: an input holds NaN or Inf (with ``check_inputs``), or a task-vector method has no base.
    """
    if method.kernel == "linear":
        # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
        from hm3.merge.linear import linear

        _check_all(tensors, None, check_inputs, tensor_name)
        return linear(tensors, params.weights, normalize=params.normalize)
    # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
    from hm3.merge.task_arithmetic import task_arithmetic

    if base is None:
        raise UserError(f"{method.name} merges task vectors and needs a base model")
    ids = list(model_ids) if model_ids is not None else list(range(len(tensors)))
    if tensors and fusable(method, params) and fused.supports([base, *tensors]):
        merged = _fused_merge(method, base, tensors, params, seed, tensor_name, ids)
        if merged is not None:
            return merged
    _check_all(tensors, base, check_inputs, tensor_name)  # (on the fused path: only after it saw NaN/Inf)
    trim = _trim(method, params, seed, tensor_name, ids)
    return task_arithmetic(
        base,
        tensors,
        params.weights,
        trim=trim,
        consensus=method.consensus,
        normalize=params.normalize,
        scale=params.scale,
    )


def fusable(method: MergeMethod, params: TensorParameters) -> bool:
    """Whether :mod:`hm3.merge.fused` merges a tensor of ``method`` with ``params`` (on CPU, in bfloat16 or
    float32). Not a deterministic trim that rescales (TIES with ``rescale: true``): the fused kernels sum the
    L1 norms in float64, which can move the factor by one unit in its last place, while torch's float32
    sums give mergekit's bits. (DARE's random masks never give mergekit's bits, so DARE stays fused.)"""
    if method.sparsification not in fused.TRIM_MODES:
        return False
    return not (
        params.rescale and method.sparsification == "magnitude" and any(d < 1 for d in params.densities)
    )


def _fused_merge(
    method: MergeMethod,
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    params: TensorParameters,
    seed: int,
    tensor_name: str,
    ids: list[int | str],
) -> torch.Tensor | None:
    """The merge through :mod:`hm3.merge.fused`, or None where an input or a task vector is not finite
    (the torch kernel then merges, after the callers' checks have named any bad input)."""
    merged, finite = fused.merge(
        base,
        tensors,
        params.weights,
        mode=fused.TRIM_MODES[method.sparsification],
        densities=params.densities,
        seeds=[mask_seed(seed, model, tensor_name) for model in ids],
        rescale=params.rescale,
        consensus=method.consensus,
        normalize=params.normalize,
        scale=params.scale,
    )
    return merged if finite else None


def _trim(method: MergeMethod, params: TensorParameters, seed: int, tensor_name: str, ids: list[int | str]):
    # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
    from hm3.merge import sparsify

    kind = method.sparsification
    if kind is None or all(d >= 1 for d in params.densities):
        return None

    def generator(index: int):
        # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
        import torch

        return torch.Generator().manual_seed(mask_seed(seed, ids[index], tensor_name))

    def trim(delta: torch.Tensor, index: int) -> torch.Tensor:
        density = params.densities[index]
        if kind == "magnitude":
            return sparsify.magnitude(delta, density, rescale=params.rescale, inplace=True)
        if kind == "magnitude_outliers":
            return sparsify.magnitude_outliers(delta, density, params.gamma_of(index), rescale=params.rescale)
        if kind == "random":
            return sparsify.random_drop(
                delta, density, mask_seed(seed, ids[index], tensor_name), rescale=params.rescale, inplace=True
            )
        return sparsify.della_magprune(
            delta, density, params.epsilon_of(index), generator(index), rescale=params.rescale
        )

    return trim


def _check_all(
    tensors: Sequence[torch.Tensor], base: torch.Tensor | None, names: Sequence[str] | None, tensor_name: str
) -> None:
    if names is None:
        return
    for tensor, name in zip([*tensors, *([base] if base is not None else [])], names, strict=False):
        check_finite(tensor, name, tensor_name)


def check_finite(tensor: torch.Tensor, model: str, tensor_name: str) -> None:
    """Refuse a tensor holding NaN or Inf, naming the model and the tensor.

    Raises:
        UserError: the tensor is not finite.
    """
    # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
    import torch

    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())):
        return  # a finite sum means no NaN and no Inf (they propagate); an overflow falls through
    if not bool(torch.isfinite(tensor).all()):
        _refuse(model, tensor_name, nan=bool(torch.isnan(tensor).any()))


def check_finite_array(values: np.ndarray, model: str, tensor_name: str) -> None:
    """:func:`check_finite` for a flat numpy array: float32, or the uint16 bit patterns of bfloat16.

    Raises:
        UserError: the array is not finite.
    """
    if values.dtype == np.uint16:
        special = (values & 0x7F80) == 0x7F80  # exponent all ones: Inf or NaN
        if special.any():
            _refuse(model, tensor_name, nan=bool(np.any(special & ((values & 0x7F) != 0))))
    elif values.dtype.kind == "f" and not np.isfinite(values.sum(dtype=np.float64)):
        if not np.isfinite(values).all():
            _refuse(model, tensor_name, nan=bool(np.isnan(values).any()))


def _refuse(model: str, tensor_name: str, nan: bool) -> None:
    bad = "NaN" if nan else "Inf"
    raise UserError(f"model {model}: tensor {tensor_name} contains {bad}; refusing to merge it")


def check_shapes(tensors: Sequence[torch.Tensor], models: Sequence[str], tensor_name: str) -> None:
    """Refuse inputs of different shapes, naming the models.

    Raises:
        UserError: the shapes differ.
    """
    first = tuple(tensors[0].shape)
    for tensor, model in zip(tensors[1:], models[1:], strict=True):
        if tuple(tensor.shape) != first:
            raise UserError(
                f"tensor {tensor_name}: shape {list(tensor.shape)} in model {model} differs from "
                f"{list(first)} in model {models[0]}"
            )
