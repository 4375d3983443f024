"""TIES sign election: each entry keeps only the deltas that agree with the sign of their weighted sum."""

from __future__ import annotations

import torch


def elect_and_merge(
    weighted: torch.Tensor, weights: torch.Tensor, with_divisor: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Disjoint merge of weighted task vectors under the elected sign (mergekit's ``consensus: sum``).

    The elected sign m = ±1 is that of ``Σ_k δ_k``; the merge is ``Σ_k δ_k [sign δ_k = m]``, computed as
    ``m · Σ_k relu(m · δ_k)`` (exact: multiplying by ±1 and negating commute with rounding), with sums
    accumulated in float32 for half-precision inputs as ``torch.sum`` does. ``weighted`` is overwritten.

    Args:
        weighted: ``[K, *shape]`` task vectors already trimmed and multiplied by their weights (clobbered).
        weights: ``[K]`` the weights, in the tensors' dtype (for the per-entry divisor).
        with_divisor: Also return the per-entry sum of the agreeing models' weights (for ``normalize``).

    Returns:
        ``(mixed, divisor)``: the sum of the agreeing deltas, and the sum of their weights (1 where none
        agree; None without ``with_divisor``), both in the input dtype.
    """
    dtype = weighted.dtype
    accumulate = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    majority = (weighted.sum(dim=0) >= 0).to(dtype).mul_(2).sub_(1)
    mixed = torch.zeros(weighted.shape[1:], dtype=accumulate, device=weighted.device)
    divisor = (
        torch.zeros(weighted.shape[1:], dtype=accumulate, device=weighted.device) if with_divisor else None
    )
    for delta, weight in zip(weighted, weights.tolist(), strict=True):
        agreeing = delta.mul_(majority).clamp_(min=0)
        if divisor is not None:
            divisor.add_(agreeing > 0, alpha=weight)
        mixed.add_(agreeing)
    merged = mixed.to(dtype).mul_(majority)
    if divisor is None:
        return merged, None
    divisor = divisor.add_(divisor == 0).to(dtype)  # 1 where no model agrees (faster than masked_fill_)
    return merged, divisor
