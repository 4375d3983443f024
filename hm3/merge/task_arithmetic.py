"""Task arithmetic and its trimmed / sign-elected variants (TIES, DARE, breadcrumbs, DELLA) in one kernel.

``θ = θ_base + λ · Σ_k w_k · M_k ⊙ (θ_k − θ_base)`` (divided per entry by the sum of the weights that take
part when ``normalize``), where ``M_k`` is a trim of the task vector (``hm3.merge.sparsify``) and, with
``consensus``, only deltas agreeing with the elected sign are summed (``hm3.merge.consensus``). This is
mergekit's ``GeneralizedTaskArithmeticMerge`` with the same order of operations, in the inputs' dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Trim = Callable[["torch.Tensor", int], "torch.Tensor"]
"""``(delta, model_index) -> trimmed delta``: a sparsifier with its density, seed and options bound."""


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
        tensors: One tensor per fine-tuned model, shaped like ``base``, same dtype.
        weights: One weight per fine-tuned model.
        trim: Sparsifier applied to each task vector (None: keep everything).
        consensus: TIES sign election and disjoint merge.
        normalize: Divide by the sum of the weights (per entry, of the agreeing models, with ``consensus``).
        scale: λ, multiplies the merged task vector (mergekit's ``lambda``).

    Returns:
        The merged tensor, in ``base``'s dtype.
    """
    import torch

    if not tensors:
        return base
    coefficients = torch.tensor(list(weights), dtype=base.dtype, device=base.device)
    if consensus:
        stacked = base.new_empty((len(tensors), *base.shape))
        for index, tensor in enumerate(tensors):
            torch.sub(tensor, base, out=stacked[index])
            if trim is not None:
                stacked[index] = trim(stacked[index], index)
            stacked[index].mul_(coefficients[index])
        from hm3.merge.consensus import elect_and_merge

        mixed, divisor = elect_and_merge(stacked, coefficients)
        del stacked
    else:
        mixed = torch.zeros_like(base)
        for index, tensor in enumerate(tensors):
            delta = tensor - base
            if trim is not None:
                delta = trim(delta, index)
            mixed.add_(delta.mul_(coefficients[index]))
            del delta
        divisor = _weight_sum(coefficients)
    if normalize:
        mixed.div_(divisor)
    if scale != 1:
        mixed.mul_(scale)
    return mixed.add_(base).to(base.dtype)


def _weight_sum(coefficients: torch.Tensor) -> torch.Tensor:
    total = coefficients.sum()
    return total if total.abs() >= 1e-8 else total.new_ones(())
