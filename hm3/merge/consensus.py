"""TIES sign election: each entry keeps only the deltas that agree with the sign of their weighted sum."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def elect_and_merge(weighted: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint merge of weighted task vectors under the elected sign (mergekit's ``consensus: sum``).

    Args:
        weighted: ``[K, *shape]`` task vectors already trimmed and multiplied by their weights.
        weights: ``[K]`` the weights (for the per-entry divisor).

    Returns:
        ``(mixed, divisor)``: the sum of the agreeing deltas, and the sum of their weights (1 where none agree).
    """
    import torch

    positive = weighted.sum(dim=0) >= 0
    mixed = torch.zeros_like(weighted[0])
    divisor = torch.zeros_like(weighted[0])
    for delta, weight in zip(weighted, weights, strict=True):
        agrees = torch.where(positive, delta > 0, delta < 0)
        mixed.add_(torch.where(agrees, delta, 0))
        divisor.add_(agrees.to(divisor.dtype) * weight)
    divisor[divisor == 0] = 1
    return mixed, divisor
