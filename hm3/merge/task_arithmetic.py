"""Task arithmetic and its trimmed / sign-elected variants (TIES, DARE, breadcrumbs, DELLA) in one kernel.

``θ = θ_base + λ · Σ_k w_k · M_k ⊙ (θ_k − θ_base)`` (divided per entry by the sum of the weights that take
part when ``normalize``), where ``M_k`` is a trim of the task vector (``hm3.merge.sparsify``) and, with
``consensus``, only deltas agreeing with the elected sign are summed (``hm3.merge.consensus``). This is
mergekit's ``GeneralizedTaskArithmeticMerge``, with the same rounding at every step (elementwise work in the
inputs' dtype, sums over models accumulated in float32 for half precision as ``torch.sum`` does), written
to reuse buffers instead of allocating a new tensor per operation.

This op-by-op kernel is the reference: on CPU, for bfloat16 and float32 with no trim, a TIES or a DARE trim,
``hm3.merge.tensor_merge.merge_tensor`` runs ``hm3.merge.fused`` instead, which gives the same bits in two
passes over memory; this kernel merges everything else (GPUs, float16, breadcrumbs and DELLA trims).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hm3.merge.consensus import elect_and_merge

Trim = Callable[["torch.Tensor", int], "torch.Tensor"]
"""``(delta, model_index) -> trimmed delta``: a sparsifier with its density, seed and options bound; it may
overwrite ``delta`` and return it."""


def task_arithmetic(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    trim: Trim | None = None,
    consensus: bool = False,
    normalize: bool = False,
    scale: float = 1.0,
) -> torch.Tensor:
    """Merge fine-tuned tensors into ``base`` through their task vectors.

    Args:
        base: The base model's tensor.
        tensors: One tensor per fine-tuned model, shaped like ``base``, same dtype (not modified).
        weights: One weight per fine-tuned model.
        trim: Sparsifier applied to each task vector (None: keep everything).
        consensus: TIES sign election and disjoint merge.
        normalize: Divide by the sum of the weights (per entry, of the agreeing models, with ``consensus``).
        scale: λ, multiplies the merged task vector (mergekit's ``lambda``).

    Returns:
        The merged tensor, in ``base``'s dtype.
    """
    if not tensors:
        return base
    dtype = base.dtype
    coefficients = torch.tensor(list(weights), dtype=dtype, device=base.device)
    if consensus:
        stacked = base.new_empty((len(tensors), *base.shape))
        for index, tensor in enumerate(tensors):
            delta = torch.sub(tensor, base, out=stacked[index])
            if trim is not None:
                trimmed = trim(delta, index)
                if trimmed.data_ptr() != delta.data_ptr():
                    delta.copy_(trimmed)
            delta.mul_(coefficients[index])
        mixed, divisor = elect_and_merge(stacked, coefficients, with_divisor=normalize)
        del stacked
    else:
        accumulate = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
        total = torch.zeros(base.shape, dtype=accumulate, device=base.device)
        delta = torch.empty_like(base)
        for index, tensor in enumerate(tensors):
            torch.sub(tensor, base, out=delta)
            trimmed = trim(delta, index) if trim is not None else delta
            total.add_(trimmed.mul_(coefficients[index]))
        mixed = total if accumulate == dtype else total.to(dtype)
        divisor = coefficients.sum()
        if divisor.abs() < 1e-8:
            divisor = divisor.new_ones(())
    if normalize:
        mixed.div_(divisor)
    if scale != 1:
        mixed.mul_(scale)
    return mixed.add_(base).to(dtype)
