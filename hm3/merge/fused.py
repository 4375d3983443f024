"""Task-vector merges in two fused passes over the inputs (numba), for CPU tensors in bfloat16 or float32.

:func:`hm3.merge.task_arithmetic.task_arithmetic` runs one torch operation at a time, each a full pass over
memory: subtract, trim, weight, elect, sum, divide, add back (about 15 passes per merged model for TIES).
Here every output entry is computed start to finish in one loop, in registers, after one statistics pass:

1. per task vector ``δ_k = θ_k − θ_base``: the histogram of its magnitudes' bit patterns (TIES trim: the
   k-th largest magnitude, as :func:`hm3.merge.sparsify.kth_largest`), the L1 norms before and after the
   trim (rescale), and whether any input is NaN or Inf;
2. the merge itself: trim, rescale, weight, sign election, disjoint sum, normalize, scale, add the base.

Every step rounds as the torch kernel does (elementwise work rounded to the inputs' dtype, sums over models
accumulated in float32, ties at the trim threshold kept lowest index first, DARE masks from
:func:`hm3.merge.sparsify.random_keep`'s counter-based hash), so the result is bit-identical to the torch
kernel, except the L1 rescale factors: their sums are accumulated in float64 here and pairwise in float32 by
torch, which can move a factor by one unit in its last place (tests/test_fused_merge.py checks both).

Each kernel runs on the calling thread without the GIL: ``hm3 merge --mergekit`` merges several tensors at
once on worker threads (:mod:`hm3.merge.runtime`). Compiled code is cached next to this file (numba's
``cache=True``), so only the first merge after an install pays the compilation (a few seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from hm3.merge import _fused_kernels as kernels
from hm3.merge.trim_params import RESCALE_EPS, keep_threshold, mask_keys

if TYPE_CHECKING:
    import torch

NO_TRIM, MAGNITUDE, RANDOM = 0, 1, 2
"""Trim modes of :func:`merge`: none, TIES magnitude trim, DARE random drop."""

TRIM_MODES = {None: NO_TRIM, "magnitude": MAGNITUDE, "random": RANDOM}
"""The registry's sparsification names the fused kernels run, and their modes."""

SUPPORTED_DTYPES = ("bfloat16", "float32")


def supports(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the fused kernels can merge these tensors: CPU, contiguous, one dtype the kernels know (else
    the torch kernel merges them)."""
    first = tensors[0]
    name = str(first.dtype).removeprefix("torch.")
    suitable = name in SUPPORTED_DTYPES and all(
        t.device.type == "cpu" and t.is_contiguous() and t.dtype == first.dtype for t in tensors
    )
    return suitable


def supports_dtype(name: str) -> bool:
    """Whether the fused kernels merge tensors stored in this dtype (torch's name, e.g. ``bfloat16``)."""
    return name in SUPPORTED_DTYPES


def merge(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    **options,
) -> tuple[torch.Tensor | None, bool]:
    """:func:`merge_arrays` on torch tensors (see :func:`supports`); returns ``(merged, finite)``, with
    ``merged`` None when an input holds NaN or Inf (the caller names it, see
    :func:`hm3.merge.tensor_merge.check_finite`)."""
    # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
    import torch

    half = base.dtype == torch.bfloat16
    out = torch.empty_like(base)
    finite = merge_arrays(
        _as_numpy(base, half), [_as_numpy(t, half) for t in tensors], _as_numpy(out, half), weights, **options
    )
    return (out, True) if finite else (None, False)


def merge_arrays(
    base: np.ndarray,
    tensors: Sequence[np.ndarray],
    out: np.ndarray,
    weights: Sequence[float],
    *,
    mode: int,
    densities: Sequence[float],
    seeds: Sequence[int],
    rescale: bool,
    consensus: bool,
    normalize: bool,
    scale: float,
) -> bool:
    """``task_arithmetic(base, tensors, weights, trim=..., consensus, normalize, scale)`` in two passes,
    into ``out``; no torch needed.

    Args:
        base: The base tensor, flat: ``uint16`` (the bit patterns of bfloat16) or ``float32``.
        tensors: The fine-tuned tensors, flat, shaped and typed like ``base``.
        out: Receives the merged tensor (shaped and typed like ``base``).
        weights: One per fine-tuned tensor.
        mode: :data:`NO_TRIM`, :data:`MAGNITUDE` (TIES) or :data:`RANDOM` (DARE).
        densities: Kept fraction per fine-tuned tensor (≥ 1: not trimmed).
        seeds: Mask seed per fine-tuned tensor (``RANDOM``; see :func:`hm3.merge.tensor_merge.mask_seed`).
        rescale: L1-rescale each trimmed task vector to its norm before the trim.
        consensus: TIES sign election and disjoint merge.
        normalize: Divide by the weight sum (per entry, of the agreeing models, with ``consensus``).
        scale: λ.

    Returns:
        Whether every task vector was finite (``out`` is then the merge; else it is undefined).
    """
    half = base.dtype == np.uint16
    count = len(tensors)
    inputs = tuple(tensors)
    trimmed = [mode != NO_TRIM and d < 1 for d in densities]
    thresholds = np.zeros(count, dtype=np.uint64)  # magnitude: bit pattern of the k-th largest; random: keep
    tie_cuts = np.full(count, -1, dtype=np.int64)  # magnitude: last index whose tie at the threshold is kept
    if mode == RANDOM:
        for k, density in enumerate(densities):
            thresholds[k] = keep_threshold(density) if trimmed[k] else 1 << 16
    keys = _keys(seeds, count)
    hist, before, after, finite = kernels.statistics(
        base,
        inputs,
        np.asarray([mode == MAGNITUDE and t for t in trimmed]),
        np.asarray([rescale and t for t in trimmed]),
        thresholds,
        keys,
        mode == RANDOM,
    )
    if not finite:
        return False
    keep = np.ones(count, dtype=np.bool_)
    if mode == MAGNITUDE:
        for k in range(count):
            if trimmed[k]:
                keep[k], thresholds[k], tie_cuts[k] = _magnitude_threshold(
                    base, inputs[k], hist[k], densities[k], half
                )
                if rescale and keep[k]:
                    after[k] = kernels.kept_l1(base, inputs[k], int(thresholds[k]), tie_cuts[k])
    limits = np.zeros((count, 2), dtype=np.float32)  # |δ| >= 0: every entry kept
    if mode == MAGNITUDE:
        limits = _magnitude_limits(thresholds, np.asarray(trimmed), keep, half)
    factors = np.ones(count, dtype=np.float32)
    if rescale:
        for k in range(count):
            if trimmed[k] and keep[k]:
                factors[k] = _rescale_factor(before[k], after[k], half)
    coefficients = rounded(weights, half)
    divisor = np.float32(1.0)
    if not consensus and normalize:
        total = np.float32(0.0)
        for coefficient in coefficients:  # summed as torch sums a short tensor: in order, in float32
            total = np.float32(total + coefficient)
        total = rounded([total], half)[0]
        divisor = total if abs(total) >= 1e-8 else np.float32(1.0)
    kernels.merge_entries(
        base,
        inputs,
        out,
        mode,
        limits,
        thresholds,
        tie_cuts,
        keys,
        factors,
        coefficients,
        consensus,
        normalize,
        np.float32(divisor),
        np.float32(scale),
    )
    return True


def rounded(values: Sequence[float], half: bool) -> np.ndarray:
    """``values`` rounded as torch rounds Python floats into a tensor: to float32, then (``half``) to
    bfloat16 (nearest, ties to even); returned as float32."""
    single = np.asarray(values, dtype=np.float64).astype(np.float32)
    if not half:
        return single
    bits = single.view(np.uint32)
    bits = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


def _magnitude_threshold(
    base: np.ndarray, tensor: np.ndarray, hist: np.ndarray, density: float, half: bool
) -> tuple[bool, int, int]:
    """TIES trim of one task vector: ``(keeps anything, threshold bit pattern, tie cut)``, where the tie cut
    is the last index whose magnitude ties at the threshold and is kept (ties kept lowest index first, as
    :func:`hm3.merge.sparsify.magnitude`)."""
    numel = base.size
    if density <= 0 or numel == 0:
        return False, 0, -1
    wanted = max(1, int(density * numel))
    top, above, tied = _bucket_of_kth(hist, wanted)
    pattern = top
    if not half:  # float32: the low 16 bits of the k-th largest, among entries whose high bits are `top`
        bottom, above_low, tied = _bucket_of_kth(kernels.low_histogram(base, tensor, top), wanted - above)
        above += above_low
        pattern = (top << 16) | bottom
    missing = wanted - above  # >= 1: how many of the `tied` entries at the threshold are kept
    if missing >= tied:
        return True, pattern, numel
    return True, pattern, int(kernels.index_of_nth_tie(base, tensor, pattern, missing))


def _as_numpy(tensor: torch.Tensor, half: bool) -> np.ndarray:
    """A flat numpy view of the tensor's memory: uint16 bit patterns for bfloat16, float32 otherwise."""
    # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
    import torch

    flat = tensor.reshape(-1)
    return flat.view(torch.int16).numpy().view("uint16") if half else flat.numpy()


def _magnitude_limits(patterns: np.ndarray, trimmed: np.ndarray, keep: np.ndarray, half: bool) -> np.ndarray:
    """Per model, the float32 magnitudes from which entries are kept before and after the tie cut: the
    threshold itself, and the next float32 above it (no entry lies in between: the entries are on the
    dtype's grid); +inf for a model that keeps nothing, 0 for one not trimmed."""
    bits = patterns.astype(np.uint32) << (16 if half else 0)
    at = bits.view(np.float32).copy()
    limits = np.stack([at, np.nextafter(at, np.float32(np.inf))], axis=1).astype(np.float32)
    limits[~trimmed] = 0
    limits[~keep] = np.inf
    return limits


def _keys(seeds: Sequence[int], count: int) -> np.ndarray:
    keys = np.zeros((count, 2), dtype=np.uint64)
    for k in range(count):
        keys[k] = mask_keys(seeds[k] if k < len(seeds) else 0)
    return keys


def _bucket_of_kth(counts: np.ndarray, k: int) -> tuple[int, int, int]:
    """The bucket holding the k-th largest value, how many values are in higher buckets, how many in it."""
    at_least = np.cumsum(counts[::-1])[::-1]
    bucket = int(np.flatnonzero(at_least >= k)[-1])
    tied = int(counts[bucket])
    return bucket, int(at_least[bucket]) - tied, tied


def _rescale_factor(before: float, after: float, half: bool) -> float:
    """The L1 rescale factor as :func:`hm3.merge.sparsify.rescale_l1` rounds it: both norms rounded to the
    dtype, compared with the threshold in the dtype, divided in float32, the quotient rounded."""
    norm_before, norm_after, eps = rounded([before, after, RESCALE_EPS], half)
    if norm_before < eps or norm_after < eps:
        return 1.0
    return float(rounded([norm_before / norm_after], half)[0])
