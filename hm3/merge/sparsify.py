"""Trimming a task vector: which entries of a delta survive, and how survivors are rescaled.

Pure tensor functions, one per mergekit sparsification method, each returning a new tensor shaped like its
input. They follow ``mergekit.sparsify`` exactly (same keep rules, same L1 rescale), except that

* magnitude trimming finds the k-th largest magnitude by selection (O(n)) instead of a full sort; ties at the
  threshold keep the lowest indices (mergekit's ``argsort`` leaves their order unspecified);
* random masks draw from an explicit ``torch.Generator`` (reproducible from a seed per model and tensor)
  instead of the global generator, as ``rand < density`` (the same Bernoulli law, drawn faster).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

RESCALE_EPS = 1e-7


def rescale_l1(delta: torch.Tensor, masked: torch.Tensor, eps: float = RESCALE_EPS) -> torch.Tensor:
    """``masked`` scaled to the L1 norm of ``delta`` (unchanged when either norm is below ``eps``).

    This is mergekit's ``rescale: true``; for a random mask of keep probability d the factor tends to 1/d,
    DARE's rescale by 1/(1-p).
    """
    before = delta.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked.mul_(before / after)


def magnitude(
    delta: torch.Tensor, density: float, rescale: bool = False, inplace: bool = False
) -> torch.Tensor:
    """TIES trim: keep the ``density`` fraction of entries with the largest magnitude (at least one).

    ``inplace`` overwrites ``delta`` (saves a buffer); the result is the same.
    """
    import torch

    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return delta.zero_() if inplace else torch.zeros_like(delta)
    flat = delta.abs().reshape(-1).float()
    count = flat.numel()
    keep = max(1, int(density * count))
    threshold = torch.kthvalue(flat, count - keep + 1).values
    mask = flat > threshold
    missing = keep - int(mask.sum())
    if missing > 0:
        mask[(flat == threshold).nonzero().reshape(-1)[:missing]] = True
    del flat
    before = delta.abs().sum() if rescale else None
    masked = (
        delta.mul_(mask.reshape(delta.shape))
        if inplace
        else delta * mask.reshape(delta.shape).to(delta.dtype)
    )
    return _rescaled(before, masked) if before is not None else masked


def _rescaled(before: torch.Tensor, masked: torch.Tensor, eps: float = RESCALE_EPS) -> torch.Tensor:
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked.mul_(before / after)


def magnitude_outliers(
    delta: torch.Tensor, density: float, gamma: float = 0.01, rescale: bool = False
) -> torch.Tensor:
    """Breadcrumbs trim: drop the ``gamma`` fraction of largest magnitudes, then the smallest, keeping
    ``density`` of the entries."""
    import torch

    if density >= 1:
        return delta
    count = delta.numel()
    target = int(density * count)
    top = int(gamma * count)
    bottom = max(0, count - target - top)
    order = torch.sort(delta.abs().reshape(-1).float(), descending=False).indices
    mask = torch.zeros(count, dtype=delta.dtype, device=delta.device)
    mask[order[bottom : bottom + target]] = 1
    masked = delta * mask.reshape(delta.shape)
    return rescale_l1(delta, masked) if rescale else masked


def _work_dtype(delta: torch.Tensor) -> torch.dtype:
    import torch

    # torch.bernoulli has no float16 kernel on CPU: mergekit upcasts everything but bfloat16 to float32.
    if delta.device.type != "cpu" or delta.dtype == torch.bfloat16:
        return delta.dtype
    return torch.float32


def random_drop(
    delta: torch.Tensor,
    density: float,
    generator: torch.Generator | None = None,
    rescale: bool = True,
    inplace: bool = False,
) -> torch.Tensor:
    """DARE: keep each entry with probability ``density`` (drop rate p = 1 - density), then rescale.

    ``inplace`` overwrites ``delta`` when no dtype conversion is needed.
    """
    import torch

    if density >= 1:
        return delta
    work = _work_dtype(delta)
    keep = torch.rand(delta.shape, generator=generator, device=delta.device) < density
    values = delta if (inplace and work == delta.dtype) else delta.to(work, copy=True)
    before = values.abs().sum() if rescale else None
    values.mul_(keep)
    if before is not None:
        values = _rescaled(before, values)
    return values if values.dtype == delta.dtype else values.to(delta.dtype)


def della_magprune(
    delta: torch.Tensor,
    density: float,
    epsilon: float = 0.15,
    generator: torch.Generator | None = None,
    rescale: bool = True,
) -> torch.Tensor:
    """DELLA: keep probability rising linearly with magnitude rank within each row, from density - epsilon
    to density + epsilon."""
    import torch

    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError("epsilon must keep density +/- epsilon inside (0, 1)")
    work = _work_dtype(delta)
    shape = delta.shape
    rows = delta.unsqueeze(0) if delta.dim() < 2 else delta
    ranks = torch.argsort(rows.abs(), dim=1, descending=False).argsort(dim=1).to(work) + 1
    low = ranks.min(dim=1, keepdim=True).values
    high = ranks.max(dim=1, keepdim=True).values
    probabilities = (density - epsilon) + ((ranks - low) / (high - low)).clamp(0, 1) * 2 * epsilon
    mask = torch.bernoulli(probabilities, generator=generator).to(work)
    values = rows.to(work)
    masked = values * mask
    if rescale:
        masked = rescale_l1(values, masked)
    return masked.to(delta.dtype).reshape(shape)
