"""Merging a plan's tensors on worker threads, for ``hm3 merge --mergekit``: which tensor goes when, how far
the workers may run ahead of the writer, shared readers, and recycled output buffers.

Each tensor is merged start to finish on one thread (:mod:`hm3.merge.runtime`), so the bits never depend on
the worker count. The workers start with the outsized tensors (embeddings, LM head), then follow plan order,
at most :data:`LOOKAHEAD_ENTRIES` merged entries ahead of the consumer; results are yielded in plan order, or
as they are done (``ordered=False``: the checkpoint writer puts each tensor at its offset, so no worker waits
for a slow tensor ahead of its own).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import numpy as np

from hm3.errors import UserError
from hm3.merge.mergekit_plan import MergePlan, PlannedTensor
from hm3.merge.tensor_reader import TensorReader

if TYPE_CHECKING:
    import torch

LOOKAHEAD_ENTRIES = 32 * 2**20
"""How far the workers may run ahead of the writer, in merged entries (64 MB of bfloat16 output)."""


class Readers:
    """The readers of a streaming merge, shared by its worker threads: each read is made under one lock
    (the readers' file handles and indexes are shared)."""

    def __init__(self, plan: MergePlan) -> None:
        self.readers = [TensorReader(checkpoint) for checkpoint in plan.models]
        self.lock = threading.Lock()

    def load(self, index: int, name: str) -> torch.Tensor:
        with self.lock:
            return self.readers[index].load(name)

    def array(self, index: int, name: str) -> tuple[np.ndarray, str, tuple[int, ...]]:
        with self.lock:
            return self.readers[index].array(name)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


def stream(
    plan: MergePlan, merge: Callable[[Readers, PlannedTensor], Any], workers: int, ordered: bool = True
) -> Iterator[tuple[str, Any]]:
    """``merge(readers, planned)`` for every planned tensor, ``workers`` at a time (see
    the module docstring for the order and the lookahead); yielded in plan order, or with
    ``ordered=False`` as they are done (no worker then waits for a slow tensor ahead of its own)."""
    merge = _reported(merge)
    readers = Readers(plan)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hm3-merge") if workers > 1 else None
    try:
        if pool is None:
            for planned in plan.tensors:
                yield planned.name, merge(readers, planned)
            return
        sizes = [_numel(plan, planned) for planned in plan.tensors]
        order = merge_order(sizes)
        futures: dict[int, object] = {}
        submitted = 0
        ahead = 0  # output entries submitted and not yet yielded
        written = 0
        while written < len(order):
            # past the lookahead, submit only what the consumer needs next: the next tensor in plan order,
            # or (unordered) anything at all when nothing is under way
            while submitted < len(order) and (
                ahead < LOOKAHEAD_ENTRIES or (written not in futures if ordered else not futures)
            ):
                chosen = order[submitted]
                futures[chosen] = pool.submit(merge, readers, plan.tensors[chosen])
                ahead += sizes[chosen]
                submitted += 1
            if ordered:
                done = [written]
            else:
                finished = wait(list(futures.values()), return_when=FIRST_COMPLETED).done
                done = [index for index, future in futures.items() if future in finished]
            for index in done:
                result = futures.pop(index).result()  # type: ignore[attr-defined]
                ahead -= sizes[index]
                written += 1
                yield plan.tensors[index].name, result
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        readers.close()


def _reported(merge: Callable[[Readers, PlannedTensor], Any]) -> Callable[[Readers, PlannedTensor], Any]:
    """``merge``, with any error other than a :class:`UserError` turned into one naming the tensor: an error
    on a worker thread then reaches the user as one line (exit 2), and the writer removes its partial output."""

    def reported(readers: Readers, planned: PlannedTensor) -> Any:
        try:
            return merge(readers, planned)
        except UserError:
            raise
        except Exception as error:
            first = (str(error).strip().splitlines() or [""])[0]
            raise UserError(
                f"tensor {planned.name}: the merge failed ({type(error).__name__}: {first})"
            ) from error

    return reported


def _numel(plan: MergePlan, planned: PlannedTensor) -> int:
    index, name = planned.inputs[0]
    count = 1
    for dim in plan.models[index].tensors[name].shape:
        count *= dim
    return count


def merge_order(sizes: list[int]) -> list[int]:
    """Plan order, except that outsized tensors (embeddings, LM head: more than 4x the mean size) go first,
    largest first."""
    if not sizes:
        return []
    outsized = 4 * sum(sizes) / len(sizes)
    big = sorted((i for i, size in enumerate(sizes) if size > outsized), key=lambda i: -sizes[i])
    chosen = set(big)
    return big + [i for i in range(len(sizes)) if i not in chosen]


class Buffers:
    """Flat uint8 buffers of merged tensors, kept for reuse by size (thread-safe)."""

    def __init__(self) -> None:
        self.free: dict[int, list] = {}
        self.lock = threading.Lock()

    def take(self, like: np.ndarray) -> np.ndarray:
        """An uninitialised array shaped and typed like ``like``."""
        with self.lock:
            spare = self.free.get(like.nbytes)
            raw = spare.pop() if spare else None
        if raw is None:
            raw = np.empty(like.nbytes, dtype=np.uint8)
        return raw.view(like.dtype)

    def give_back(self, array: np.ndarray) -> None:
        """Keep the buffer under ``array`` (one :meth:`take` made) for a later :meth:`take`."""
        raw = array.base
        if isinstance(raw, np.ndarray) and raw.dtype == np.uint8 and raw.ndim == 1:
            with self.lock:
                self.free.setdefault(raw.nbytes, []).append(raw)
