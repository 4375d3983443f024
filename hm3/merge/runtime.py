"""Process settings that make tensor-by-tensor merging fast: thread count and allocator behaviour.

Both matter more than the arithmetic on a shared machine: a merge runs thousands of short tensor operations,
and each one that torch spreads over several threads waits at its end for the slowest thread; when the
cores are busy with other work that wait is a whole scheduler time slice.

``hm3 merge --mergekit`` therefore runs on a fixed :data:`MERGE_THREADS` (one) thread unless
``HM3_NUM_THREADS`` or ``OMP_NUM_THREADS`` says otherwise (:func:`use_merge_threads`). Measured on the
shared 2-core machine at load average ~8 (``--quick`` TIES merge, 40M parameters, bf16): 1 thread 18 s wall
and 4.5 CPU s; torch's default of 2 threads 63-124 s wall and 19-35 CPU s (spin-waiting). The count is fixed
rather than read from the load because it changes the merged bits: float32 sums over a tensor (the L1
rescale of DARE and breadcrumbs) are split per thread, so 1 and 2 threads round differently.

:func:`use_idle_cores` (threads from the 1-minute load average) is kept for callers that want it, with that
caveat: its results depend on what else the machine is running.
"""

from __future__ import annotations

import os

_DONE: set[str] = set()

MERGE_THREADS = 1
"""Default torch intra-op threads of a streaming merge (see the module docstring for why one)."""


def use_merge_threads(default: int = MERGE_THREADS) -> int:
    """Set torch's intra-op threads to ``HM3_NUM_THREADS``, else ``OMP_NUM_THREADS``, else ``default``.

    Returns the thread count in use. The same count on the same machine gives the same bits, whatever the
    machine's load.
    """
    import torch

    explicit = os.environ.get("HM3_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    threads = max(1, int(explicit)) if explicit else default
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def use_idle_cores() -> int:
    """Set torch's intra-op threads to the cores not busy with other work (by the 1-minute load average).

    Returns the thread count in use. An explicit ``OMP_NUM_THREADS`` (or ``HM3_NUM_THREADS``) wins. Results
    of reductions then depend on the machine's load (see the module docstring); merges use
    :func:`use_merge_threads` instead.
    """
    import torch

    explicit = os.environ.get("HM3_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if explicit:
        threads = max(1, int(explicit))
    else:
        cores = os.cpu_count() or 1
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
        threads = max(1, min(torch.get_num_threads(), int(cores - busy + 0.5)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def reuse_freed_memory() -> None:
    """Let glibc keep freed blocks for reuse instead of returning them to the system (once per process).

    A merge allocates and frees buffers of the same few sizes tensor after tensor; by default glibc maps each
    large one afresh and the kernel zero-fills its pages on first touch, which costs more than the arithmetic.
    Peak memory does not grow: the kept blocks are the ones the next tensor needs. No-op off glibc.
    """
    if "malloc" in _DONE:
        return
    _DONE.add("malloc")
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 2**30)  # M_MMAP_THRESHOLD: serve blocks up to 1 GiB from the heap
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: do not give the heap top back after each tensor
    except (OSError, AttributeError):
        pass
