"""The thread policy of scoring: a model scored on the CPU runs its operations on exactly one intra-op thread.

The toy and small models hm3 scores on a CPU run thousands of short operations (a 64-wide linear layer takes
~0.2 ms). Spread over torch's intra-op threads, each operation ends by waiting for the slowest thread, and on a
machine whose cores are busy with other work that wait is a whole scheduler time slice: the issue that asked
for this policy measured a 64-wide linear at 6.8 ms per call with 2 threads beside other jobs, against 0.22 ms
with one, and a search ~30x slower than idle (``benchmarks/eval_profile.py`` measures it here). The count is
also part of what a score is: float sums split over threads round differently. So the count is fixed — one —
and never read from the machine's load; a search is parallelised across candidates instead (Ray workers,
``hm3 merge --ray-address``). Models on a GPU are not affected.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

SCORING_THREADS = 1


def on_cpu(model: Any) -> bool:
    """Whether ``model``'s parameters live on the CPU (a model without parameters counts as on the CPU)."""
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter is None or parameter.device.type == "cpu"


@contextmanager
def scoring_threads(model: Any) -> Iterator[None]:
    """Run the block with :data:`SCORING_THREADS` intra-op threads when ``model`` is on the CPU."""
    with pinned_threads(on_cpu(model)):
        yield


@contextmanager
def pinned_threads(cpu: bool) -> Iterator[None]:
    """Run the block with :data:`SCORING_THREADS` intra-op threads when its work is on the CPU (``cpu``); the
    count is restored after. HiMoLE's training and evaluation of toy-sized models use it too."""
    if not cpu:
        yield
        return
    previous = torch.get_num_threads()
    if previous != SCORING_THREADS:
        torch.set_num_threads(SCORING_THREADS)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
