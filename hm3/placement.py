"""Where the search's tensors live: the recipe's ``device`` and ``dtype``, checked against free memory up front.

The search keeps K + 2 models in memory at once — the base, the K fine-tuned models and one merged model —
plus the routed candidate, which shares their tensors. :func:`check_fits` refuses, in one line, a pool that
cannot fit on the chosen device before any weight is read (GPU: ``torch.cuda.mem_get_info``; CPU: the
kernel's ``MemAvailable``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hm3.errors import UserError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
HEADROOM = 1.15
"""Activations, the evaluator's batches and allocator slack on top of the weights."""


@dataclass(frozen=True)
class Placement:
    """A resolved device (``cpu``, ``cuda``, ``cuda:1``) and torch dtype name."""

    device: str
    dtype: str

    @property
    def torch_dtype(self):
        return getattr(torch, self.dtype)


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA GPU is visible, else ``cpu``; ``cuda`` without a GPU is a user error."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"device: {requested} asked for, but no CUDA GPU is visible (use device: cpu or auto)"
        )
    return requested


def free_bytes(device: str) -> int | None:
    """Free memory on ``device`` in bytes (None when unknown)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(parameters_per_model: int, models: int, placement: Placement) -> None:
    """Refuse a pool of ``models`` models of ``parameters_per_model`` parameters that cannot fit.

    Raises:
        UserError: naming the bytes needed and free, and what to change.
    """
    needed = int(parameters_per_model * DTYPE_BYTES[placement.dtype] * models * HEADROOM)
    free = free_bytes(placement.device)
    if free is not None and needed > free:
        gib = 1024**3
        raise UserError(
            f"the search keeps {models} models in memory: about {needed / gib:.1f} GiB on {placement.device} "
            f"in {placement.dtype}, but {free / gib:.1f} GiB are free; use dtype: bfloat16, fewer models, "
            "or another device"
        )
