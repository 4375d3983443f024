"""Linear merge (model soup): the weighted average of the models themselves, no base."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """``Σ w_i θ_i`` (divided by ``Σ w_i`` when ``normalize``), computed in float32 like mergekit.

    Args:
        tensors: One tensor per model, same shape and dtype.
        weights: One weight per tensor.
        normalize: Divide by the sum of the weights.
    """
    first = tensors[0]
    work = torch.float64 if first.dtype == torch.float64 else torch.float32
    coefficients = torch.tensor(list(weights), dtype=work)
    result = torch.zeros_like(first, dtype=work)
    for tensor, coefficient in zip(tensors, coefficients, strict=True):
        result.addcmul_(tensor, coefficient)
    if normalize:
        result.div_(coefficients.sum())
    return result.to(first.dtype)
