"""The plain-number side of the trims, shared by the torch kernels (:mod:`hm3.merge.sparsify`) and the fused
numba kernels (:mod:`hm3.merge.fused`), which must agree on them bit for bit.

No torch here: a mergekit run whose tensors all go through the fused kernels never imports torch
(:mod:`hm3.merge.mergekit_run`).
"""

from __future__ import annotations

RESCALE_EPS = 1e-7
"""Below this L1 norm (before or after the trim) a trimmed task vector is not rescaled."""


def keep_threshold(density: float) -> int:
    """Keep-probability of a random mask in units of 2^-16: entries whose 16-bit draw is below it are kept."""
    return max(0, min(round(density * 65536), 65535))


def mask_keys(seed: int) -> tuple[int, int]:
    """The two 32-bit keys of a mask seed (its low and high 32 bits)."""
    return seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
