"""Process settings that make tensor-by-tensor merging fast: parallelism and allocator behaviour.

A streaming merge runs thousands of short tensor operations. Spreading each operation over torch's intra-op
threads works badly on a shared machine: every operation waits at its end for the slowest thread, and when the
cores are busy with other work that wait is a whole scheduler time slice (measured on the 2-core machine at
load ~8, ``--quick`` TIES merge: 1 thread 18 s wall / 4.5 CPU s, torch's default 2 threads 63-124 s wall /
19-35 CPU s). It also changes the merged bits: float32 sums over a tensor (the L1 rescale of DARE) are split
per thread, so 1 and 2 threads round differently.

``hm3 merge --mergekit`` therefore parallelises across tensors instead (:func:`merge_workers`): each tensor
is merged start to finish on one thread, by one of several worker threads (torch releases the GIL inside its
kernels). No worker ever waits for another inside an operation, and every tensor's bits are those of a
one-thread merge, whatever the worker count and the machine's load.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
from collections.abc import Iterator

from hm3.errors import UserError

_DONE: set[str] = set()

MAX_MERGE_WORKERS = 4
"""Default cap on tensors merged at once (each holds its inputs in memory while it is merged)."""


def merge_workers(uses_torch: bool = True) -> int:
    """Number of tensors to merge at once; with ``uses_torch``, torch's intra-op threads are set to one.

    ``HM3_NUM_THREADS`` (else ``OMP_NUM_THREADS``) sets the count; the default is the machine's cores, at most
    :data:`MAX_MERGE_WORKERS`. The count changes speed and peak memory, never the merged bits.
    """
    workers = _threads_asked() or min(os.cpu_count() or 1, MAX_MERGE_WORKERS)
    if uses_torch:
        # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
        import torch

        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
    return workers


def _threads_asked() -> int | None:
    """The count ``HM3_NUM_THREADS`` asks for (a whole number, else one line), or the first level of
    ``OMP_NUM_THREADS`` (``4`` or ``4,2``; OpenMP's own variable, ignored here when it is not a number)."""
    own = os.environ.get("HM3_NUM_THREADS", "").strip()
    if own:
        if not own.isdigit() or int(own) < 1:
            raise UserError(f"HM3_NUM_THREADS must be a whole number of threads (1 or more), not {own!r}")
        return int(own)
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return max(1, int(first)) if first.isdigit() else None


def reuse_freed_memory() -> None:
    """Let glibc keep freed blocks for reuse instead of returning them to the system (once per process).

    A merge allocates and frees buffers of the same few sizes tensor after tensor; by default glibc maps each
    large one afresh and the kernel zero-fills its pages on first touch, which costs more than the arithmetic.
    Peak memory does not grow: the kept blocks are the ones the next tensor needs. No-op off glibc.
    """
    if "malloc" in _DONE:
        return
    _DONE.add("malloc")

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 2**30)  # M_MMAP_THRESHOLD: serve blocks up to 1 GiB from the heap
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: do not give the heap top back after each tensor
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (restored on exit).

    A streaming merge creates no reference cycles worth collecting, but importing torch allocates enough
    objects to trigger dozens of collections: ~0.3 s of a ``hm3 merge --mergekit`` run's start-up.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
