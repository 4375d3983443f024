"""Process settings that make tensor-by-tensor merging fast: thread count and allocator behaviour.

Both matter more than the arithmetic on a shared machine: a merge runs thousands of short tensor operations,
and each one that torch spreads over several threads waits at its end for the slowest thread; when the
cores are busy with other work that wait is a whole scheduler time slice. So hm3 runs on the cores that
are idle (never more than torch's default, never fewer than one), unless ``OMP_NUM_THREADS`` says otherwise.
"""

from __future__ import annotations

import os

_DONE: set[str] = set()


def use_idle_cores() -> int:
    """Set torch's intra-op threads to the cores not busy with other work (by the 1-minute load average).

    Returns the thread count in use. An explicit ``OMP_NUM_THREADS`` (or ``HM3_NUM_THREADS``) wins.
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
