"""The numba kernels behind :mod:`hm3.merge.fused` (compiled on first call, cached on disk).

Arrays are flat: bfloat16 tensors arrive as their uint16 bit patterns, float32 tensors as float32. Values
are computed in float32 and rounded to the storage dtype after every step (:func:`rounded`), as torch's
bfloat16 kernels do (round to nearest even).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

HIST_BUCKETS = 1 << 15
"""Magnitude histogram size: the 15 magnitude bits of bfloat16, the high 15 magnitude bits of float32."""

_KERNEL = dict(nogil=True, cache=True, error_model="numpy")


@intrinsic
def _float_of_bits(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of the integer ``bits``.

    (numba widens integer arithmetic to 64 bits, so callers hand over 64-bit values.)
    """
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        elif bits.bitwidth < 32:
            value = builder.zext(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _bits_of_float(typingctx, value):
    """The bit pattern (uint32) of the float32 ``value``."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


def load(array, index):
    """Entry ``index`` of ``array`` as float32."""


def rounded(value, array):
    """Float32 ``value`` rounded to ``array``'s storage dtype (returned as float32)."""


def store(array, index, value):
    """Write the (already rounded) float32 ``value`` into ``array``."""


def magnitude_bits(value, array):
    """The bit pattern of ``|value|`` in ``array``'s storage dtype (orders like the magnitudes)."""


@njit(**_KERNEL)
def is_finite(value):
    """Whether the float32 ``value`` is neither NaN nor infinite."""
    exponent = np.uint64(0x7F800000)
    return (np.uint64(_bits_of_float(value)) & exponent) != exponent


@overload(load, jit_options={"nogil": True})
def _load(array, index):
    if array.dtype == types.uint16:
        return lambda array, index: _float_of_bits(np.uint64(array[index]) << np.uint64(16))
    return lambda array, index: array[index]


@overload(rounded, jit_options={"nogil": True})
def _rounded(value, array):
    if array.dtype == types.uint16:

        def to_bfloat16(value, array):
            bits = np.uint64(_bits_of_float(value))
            bias = np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))
            return _float_of_bits((bits + bias) & np.uint64(0xFFFF0000))

        return to_bfloat16
    return lambda value, array: value


@overload(store, jit_options={"nogil": True})
def _store(array, index, value):
    if array.dtype == types.uint16:

        def store_bfloat16(array, index, value):
            array[index] = np.uint16(np.uint64(_bits_of_float(value)) >> np.uint64(16))

        return store_bfloat16

    def store_float(array, index, value):
        array[index] = value

    return store_float


@overload(magnitude_bits, jit_options={"nogil": True})
def _magnitude_bits(value, array):
    if array.dtype == types.uint16:
        return lambda value, array: (np.uint64(_bits_of_float(value)) >> np.uint64(16)) & np.uint64(0x7FFF)
    return lambda value, array: np.uint64(_bits_of_float(value)) & np.uint64(0x7FFFFFFF)


def histogram_bucket(bits, array):
    """The histogram bucket of magnitude bits: all 15 of bfloat16, the high 15 of float32."""


@overload(histogram_bucket, jit_options={"nogil": True})
def _histogram_bucket(bits, array):
    if array.dtype == types.uint16:
        return lambda bits, array: bits
    return lambda bits, array: bits >> np.uint64(16)


@njit(**_KERNEL)
def _mix(x):
    """A 32-bit integer hash (Wellons' lowbias32); every step is cast back to 32 bits so that LLVM keeps
    the arithmetic (and its vectorization) at 32 bits."""
    x = np.uint32(x ^ (x >> np.uint32(16)))
    x = np.uint32(x * np.uint32(0x7FEB352D))
    x = np.uint32(x ^ (x >> np.uint32(15)))
    x = np.uint32(x * np.uint32(0x846CA68B))
    return np.uint32(x ^ (x >> np.uint32(16)))


@njit(**_KERNEL)
def fill_draws(words, first_pair, key_low, key_high):
    """The 16-bit uniform draws of entries ``2 * first_pair`` onwards, as 32-bit words (one per pair of
    entries: the low half for the even entry, the high half for the odd one). ``words.view(np.uint16)``
    gives one draw per entry (see :func:`hm3.merge.sparsify.mask_draws`)."""
    for j in range(words.size):
        words[j] = _mix(np.uint32(_mix(np.uint32(first_pair + j) ^ key_low) ^ key_high))


@njit(**_KERNEL)
def delta(base, tensor, index):
    """Entry ``index`` of the task vector ``tensor − base``, rounded to the storage dtype."""
    return rounded(load(tensor, index) - load(base, index), base)


@njit(**_KERNEL)
def _count_block(base, tensor, buckets, lanes):
    """Count one block's magnitude buckets into four interleaved histograms (consecutive equal buckets do
    not wait on each other's increments); the buckets are computed first, in a vectorized loop.
    Returns whether the block's task vector is finite."""
    width = base.size
    bad = False
    for j in range(width):
        value = delta(base, tensor, j)
        bad |= not is_finite(value)
        buckets[j] = histogram_bucket(magnitude_bits(value, base), base)
    quads = width // 4
    for q in range(quads):
        lanes[0, buckets[4 * q]] += 1
        lanes[1, buckets[4 * q + 1]] += 1
        lanes[2, buckets[4 * q + 2]] += 1
        lanes[3, buckets[4 * q + 3]] += 1
    for j in range(4 * quads, width):
        lanes[0, buckets[j]] += 1
    return not bad


@njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def _norms_block(base, tensor, draws, everything, threshold):
    """One block's L1 norm of the task vector, the same over the entries whose draw is below ``threshold``
    (all with ``everything``), and whether it is finite (sums in an order of LLVM's choosing: vectorized)."""
    total = 0.0
    kept = 0.0
    bad = False
    for j in range(base.size):
        value = delta(base, tensor, j)
        bad |= not is_finite(value)
        size = abs(value)
        total += size
        kept += size if (everything | (draws[j] < threshold)) else 0.0
    return total, kept, not bad


@njit(**_KERNEL)
def _finite_block(base, tensor):
    bad = False
    for j in range(base.size):
        bad |= not is_finite(delta(base, tensor, j))
    return not bad


@njit(**_KERNEL)
def statistics(base, inputs, histogram, norms, thresholds, keys, random):
    """One pass over every task vector, block by block (a block of the base serves every model from cache):
    magnitude histograms, L1 norms before and after a random trim, finiteness.

    Returns ``(hist [K, 2^15], before [K], after [K], finite)``; ``hist[k]`` is filled where ``histogram[k]``,
    the norms where ``norms[k]`` (``after`` only for ``random``, whose masks keep draws below
    ``thresholds[k]``; float64 sums).
    """
    count = len(inputs)
    size = base.size
    lanes = np.zeros((count, 4, HIST_BUCKETS), dtype=np.int32)
    before = np.zeros(count, dtype=np.float64)
    after = np.zeros(count, dtype=np.float64)
    finite = True
    buckets = np.empty(BLOCK, dtype=np.uint16)
    words = np.empty(BLOCK // 2, dtype=np.uint32)
    draws = words.view(np.uint16)
    for start in range(0, size, BLOCK):
        stop = min(start + BLOCK, size)
        base_block = base[start:stop]
        for k in range(count):
            tensor_block = inputs[k][start:stop]
            if histogram[k]:
                finite &= _count_block(base_block, tensor_block, buckets, lanes[k])
            if norms[k]:
                everything = (not random) | (thresholds[k] >= 65536)
                if not everything:
                    fill_draws(words, start // 2, np.uint32(keys[k, 0]), np.uint32(keys[k, 1]))
                total, kept, fine = _norms_block(
                    base_block, tensor_block, draws, everything, np.uint16(min(thresholds[k], 65535))
                )
                before[k] += total
                after[k] += kept
                finite &= fine
            elif not histogram[k]:
                finite &= _finite_block(base_block, tensor_block)
    hist = np.zeros((count, HIST_BUCKETS), dtype=np.int64)
    for k in range(count):
        for lane in range(4):
            for b in range(HIST_BUCKETS):
                hist[k, b] += lanes[k, lane, b]
    return hist, before, after, finite


@njit(**_KERNEL)
def low_histogram(base, tensor, top):
    """Float32 second level: counts of the low 16 magnitude bits among entries whose high bits are ``top``."""
    counts = np.zeros(1 << 16, dtype=np.int64)
    for i in range(base.size):
        bits = magnitude_bits(delta(base, tensor, i), base)
        if bits >> np.uint64(16) == top:
            counts[bits & np.uint64(0xFFFF)] += 1
    return counts


@njit(**_KERNEL)
def index_of_nth_tie(base, tensor, pattern, n):
    """Index of the ``n``-th (1-based) entry whose magnitude bits equal ``pattern``: ties are counted block by
    block (a vectorized loop), and only the block holding the ``n``-th is scanned entry by entry."""
    size = base.size
    seen = 0
    pattern = np.uint32(pattern)
    for start in range(0, size, BLOCK):
        stop = min(start + BLOCK, size)
        base_block, tensor_block = base[start:stop], tensor[start:stop]
        ties = 0
        for j in range(stop - start):
            ties += np.uint32(magnitude_bits(delta(base_block, tensor_block, j), base)) == pattern
        if seen + ties < n:
            seen += ties
            continue
        for j in range(stop - start):
            if np.uint32(magnitude_bits(delta(base_block, tensor_block, j), base)) == pattern:
                seen += 1
                if seen == n:
                    return start + j
    return size


@njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def kept_l1(base, tensor, pattern, tie_cut):
    """L1 norm of the magnitude-trimmed task vector (threshold ``pattern``, ties kept up to ``tie_cut``)."""
    total = 0.0
    for i in range(base.size):
        value = delta(base, tensor, i)
        bits = magnitude_bits(value, base)
        kept = bits > pattern or (bits == pattern and i <= tie_cut)
        total += abs(value) if kept else 0.0
    return total


@njit(**_KERNEL)
def _weighted_block(
    base, tensor, first, row, draws, mode, with_ties, without_ties, threshold, tie_cut, factor, coefficient
):
    """``row[:len(base)]`` = one model's trimmed, rescaled, weighted task vector over one block of entries
    (``base`` and ``tensor`` are the block's slices, ``first`` its first entry's index).

    Magnitude trim (mode 1): entries up to ``tie_cut`` are kept where ``|δ| >= with_ties``, later ones where
    ``|δ| >= without_ties`` (float32 limits; +inf keeps nothing). Random trim (mode 2): where the entry's
    draw is below ``threshold`` (65536: every entry)."""
    zero = np.float32(0.0)
    if mode == 1:
        # kept: |δ| >= the threshold up to the tie cut, |δ| > it after (the next float up: same on the grid)
        width = base.size
        split = min(max(tie_cut - first + 1, 0), width)
        for j in range(split):
            value = delta(base, tensor, j)
            kept = abs(value) >= with_ties
            row[j] = rounded((rounded(value * factor, base) if kept else zero) * coefficient, base)
        for j in range(split, width):
            value = delta(base, tensor, j)
            kept = abs(value) >= without_ties
            row[j] = rounded((rounded(value * factor, base) if kept else zero) * coefficient, base)
    elif mode == 2:
        everything = threshold >= 65536
        below = np.uint16(threshold) if threshold < 65536 else np.uint16(65535)
        for j in range(base.size):
            value = rounded(delta(base, tensor, j) * factor, base)
            kept = everything | (draws[j] < below)
            row[j] = rounded((value if kept else zero) * coefficient, base)
    else:
        for j in range(base.size):
            row[j] = rounded(delta(base, tensor, j) * coefficient, base)


@njit(**_KERNEL)
def _sign_elected(base, rows, out, sums, weights, coefficients, normalize, scale):
    """TIES: the disjoint sum of the rows agreeing with their sum's sign, normalized, scaled, added to base.

    Loops run model by model over the whole block (each a simple loop that LLVM vectorizes); ``sums`` and
    ``weights`` are scratch rows, and so is the last of ``rows``."""
    count = rows.shape[0] - 1
    width = base.size
    zero = np.float32(0.0)
    one = np.float32(1.0)
    signs = sums  # first the sum of the rows, then its sign
    signs[:width] = rows[0, :width]
    for k in range(1, count):
        row = rows[k]
        for j in range(width):
            signs[j] += row[j]
    for j in range(width):
        signs[j] = one if rounded(signs[j], base) >= zero else -one
    agreeing_sum = rows[count]  # a spare row
    agreeing_sum[:width] = zero
    weights[:width] = zero
    for k in range(count):
        row = rows[k]
        coefficient = coefficients[k]
        for j in range(width):
            agreeing = row[j] * signs[j]
            agreeing = agreeing if agreeing > zero else zero
            weights[j] += coefficient if agreeing > zero else zero
            agreeing_sum[j] += agreeing
    for j in range(width):
        merged = rounded(agreeing_sum[j], base) * signs[j]
        if normalize:
            weight = one if weights[j] == zero else weights[j]
            merged = rounded(merged / rounded(weight, base), base)
        if scale != one:
            merged = rounded(merged * scale, base)
        store(out, j, rounded(merged + load(base, j), base))


@njit(**_KERNEL)
def _summed(base, rows, out, sums, normalize, divisor, scale):
    """Task arithmetic: the sum of the rows (but the last, a spare), normalized, scaled, added to base."""
    count = rows.shape[0] - 1
    width = base.size
    one = np.float32(1.0)
    sums[:width] = rows[0, :width]
    for k in range(1, count):
        row = rows[k]
        for j in range(width):
            sums[j] += row[j]
    for j in range(width):
        merged = rounded(sums[j], base)
        if normalize:
            merged = rounded(merged / divisor, base)
        if scale != one:
            merged = rounded(merged * scale, base)
        store(out, j, rounded(merged + load(base, j), base))


BLOCK = 4096
"""Entries merged per block: each model's weighted task vector for a block is computed in one simple loop
(which LLVM vectorizes) into a small buffer, then the models are combined entry by entry."""


@njit(**_KERNEL)
def merge_entries(
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
    divisor,
    scale,
):
    """The merged tensor into ``out`` (see :func:`hm3.merge.fused.merge` for the steps)."""
    count = len(inputs)
    size = base.size
    rows = np.empty((count + 1, BLOCK), dtype=np.float32)  # one per model, one spare
    sums = np.empty(BLOCK, dtype=np.float32)
    weights = np.empty(BLOCK, dtype=np.float32)
    words = np.empty(BLOCK // 2, dtype=np.uint32)
    draws = words.view(np.uint16)
    for start in range(0, size, BLOCK):
        stop = min(start + BLOCK, size)
        base_block = base[start:stop]
        for k in range(count):
            if mode == 2:
                fill_draws(words, start // 2, np.uint32(keys[k, 0]), np.uint32(keys[k, 1]))
            _weighted_block(
                base_block,
                inputs[k][start:stop],
                start,
                rows[k],
                draws,
                mode,
                limits[k, 0],
                limits[k, 1],
                thresholds[k],
                tie_cuts[k],
                factors[k],
                coefficients[k],
            )
        if consensus:
            _sign_elected(base_block, rows, out[start:stop], sums, weights, coefficients, normalize, scale)
        else:
            _summed(base_block, rows, out[start:stop], sums, normalize, divisor, scale)
