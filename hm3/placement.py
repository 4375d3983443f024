"""Where the search's tensors live: the recipe's ``device``, ``dtype`` and ``device_memory``, checked against
free memory up front.

Resident, the search keeps K + 2 models on the device at once — the base, the K fine-tuned models and one
merged model — plus the routed candidate, which shares their tensors. Offloaded
(:mod:`hm3.routing.residency`), the models stay in host memory and the device holds a bounded cache of layers:
one candidate needs its shared tensors plus its distinct layers at once — at most max(T_max, L): a routed path
has at most T_max steps, but the merges and the merged model itself (its identity path) run all L layers, so a
T_max below the depth does not make a candidate smaller than L layers.

:func:`plan_memory` decides before any weight is read (GPU: ``torch.cuda.mem_get_info``; CPU: the kernel's
``MemAvailable``): ``device_memory`` set — offload with that bound; unset — resident when the K + 2 models fit,
else offload with what is free; a bound that cannot hold one candidate is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hm3.errors import UserError
from hm3.routing.pool import default_max_length
from hm3.routing.residency import readable_bytes

if TYPE_CHECKING:
    from hm3.pool import ModelPool
    from hm3.recipe import Recipe

GIB = 1024**3

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


@dataclass(frozen=True)
class PoolSizes:
    """Bytes of the pool's parts in the run's dtype, from the safetensors headers (nothing is read).

    Attributes:
        model: One model's backbone tensors.
        layer: One layer of one model.
        shared: One model's tensors outside the layers (embeddings, final norm, head).
        models: Models a resident search holds (K + 2).
        members: Models paths choose from (K + 1).
        layers: L.
    """

    model: int
    layer: int
    shared: int
    models: int
    members: int
    layers: int

    @classmethod
    def of(cls, pool: ModelPool, dtype: str) -> PoolSizes:
        size = DTYPE_BYTES[dtype]
        layer = sum(_elements(pool.base.tensors[n].shape) for n in pool.layer_tensor_names(0))
        shared = sum(_elements(pool.base.tensors[n].shape) for n in pool.shared_tensor_names())
        return cls(
            model=pool.parameters_per_model * size,
            layer=layer * size,
            shared=shared * size,
            models=len(pool.models) + 2,
            members=len(pool.models) + 1,
            layers=pool.num_layers,
        )

    def candidate_layers(self, max_length: int) -> int:
        """The most distinct layers one candidate runs: ``max_length`` (T_max) for a routed path, L for a merge
        or the merged model's identity path — the larger, at most the pool's layers."""
        return min(max(max_length, self.layers), self.members * self.layers)

    def candidate(self, max_length: int) -> int:
        """Bytes one candidate needs on the device at once: shared tensors and its distinct layers
        (:meth:`candidate_layers`)."""
        return self.shared + self.candidate_layers(max_length) * self.layer


@dataclass(frozen=True)
class MemoryPlan:
    """What the device will hold.

    Attributes:
        device_memory: The layer cache's bound in bytes when offloaded; None: every model resident.
        line: One line saying so (printed when the search offloads).
    """

    device_memory: int | None
    line: str

    @property
    def offload(self) -> bool:
        return self.device_memory is not None


def plan_memory(
    sizes: PoolSizes,
    max_length: int,
    placement: Placement,
    device_memory: int | None,
    free: int | None,
) -> MemoryPlan:
    """Resident or offloaded, and with what bound (see the module's text).

    Args:
        sizes: The pool's sizes in the run's dtype.
        max_length: The most steps a routed path has (T_max); a merge runs the pool's L layers, so a candidate
            is sized for the larger (:meth:`PoolSizes.candidate_layers`).
        placement: The device and dtype.
        device_memory: The recipe's bound, or None.
        free: Free bytes on the device (:func:`free_bytes`); None: unknown (``hm3 validate`` leaves out what
            depends on this machine).

    Raises:
        UserError: nothing fits: the bound (asked for, or what is free) cannot hold one candidate.
    """
    resident = int(sizes.model * sizes.models * HEADROOM)
    one = sizes.candidate(max_length)
    layers = sizes.candidate_layers(max_length)
    host_is_device = placement.device == "cpu"
    # offloaded on a CPU, the merged model's host copy shares the RAM with the cache
    host_share = int(sizes.model * HEADROOM) if host_is_device else 0
    where = f"{placement.device} in {placement.dtype}"
    if device_memory is None:
        if free is None or resident <= free:
            return MemoryPlan(
                None, f"resident: {sizes.models} models, about {readable_bytes(resident, 1)} on {where}"
            )
        bound = int((free - host_share) / HEADROOM)
        if bound < one:
            raise UserError(
                f"the search keeps {sizes.models} models in memory: about {readable_bytes(resident, 1)} on {where}, "
                f"but {readable_bytes(free, 1)} are free, and offloading needs {readable_bytes(one * HEADROOM, 1)} "
                f"for one candidate of up to {layers} layers; use dtype: bfloat16, fewer models, "
                f"{_shorter_paths(max_length, sizes.layers)}or another device"
            )
        return _offload_plan(
            sizes,
            bound,
            max_length,
            where,
            f"the {sizes.models} models ({readable_bytes(resident, 1)}) "
            f"do not fit the {readable_bytes(free, 1)} free, so ",
        )
    if device_memory < one:
        raise UserError(
            f"device_memory: {readable_bytes(device_memory)} cannot hold one candidate: its shared tensors and up "
            f"to {layers} distinct layers take {readable_bytes(one)} in {placement.dtype}; raise it"
            + (" or lower architecture_level.max_path_length" if max_length > sizes.layers else "")
            + _depth_floor(max_length, sizes.layers)
        )
    if free is not None and int(device_memory * HEADROOM) + host_share > free:
        raise UserError(
            f"device_memory: {readable_bytes(device_memory)} (plus {HEADROOM - 1:.0%} for activations) is more "
            f"than the {readable_bytes(free, 1)} free on {placement.device}; lower it"
        )
    return _offload_plan(sizes, device_memory, max_length, where, "")


def _shorter_paths(max_length: int, num_layers: int) -> str:
    """The advice to shorten paths, where a shorter T_max makes a candidate smaller (above the depth L)."""
    return "a shorter architecture_level.max_path_length, " if max_length > num_layers else ""


def _depth_floor(max_length: int, num_layers: int) -> str:
    """Why lowering T_max cannot help once it is at most the depth: the merges run every layer."""
    if max_length > num_layers:
        return ""
    return f" (a merge runs all {num_layers} layers, whatever architecture_level.max_path_length is)"


def _offload_plan(sizes: PoolSizes, bound: int, max_length: int, where: str, why: str) -> MemoryPlan:
    cached = (bound - sizes.shared) // sizes.layer if sizes.layer else 0
    pool_layers = sizes.members * sizes.layers
    return MemoryPlan(
        bound,
        f"offload: {why}the models stay in host memory and the device holds at most {readable_bytes(bound)} of "
        f"layers ({min(cached, pool_layers)} of the pool's {pool_layers}, a candidate uses up to "
        f"{sizes.candidate_layers(max_length)}) on {where}",
    )


def candidate_length(recipe: Recipe, num_layers: int) -> int:
    """The most layers a candidate of the run runs: with the path level, T_max (1.5 × L unless set) or L where
    T_max is below it (the merges and the merged model's identity path run all L layers); else L."""
    level = recipe.architecture_level
    if not level.enabled:
        return num_layers
    return max(level.max_path_length or default_max_length(num_layers), num_layers)


def check_frame(recipe: Recipe, num_layers: int) -> None:
    """Refuse fixed first and last layers (``architecture_level.fixed_first`` / ``fixed_last``) that leave no
    layer of an ``num_layers``-layer pool to edit, or no step of a path within ``max_path_length`` (below the
    depth, the edit agent edits the merge fitted into T_max: :meth:`hm3.routing.edits.EditSpace.fit`); and an
    upper level of more coefficients per model (``parameter_level.granularity: block:N``) than layers, whose
    extra coefficients would decide no layer.

    Raises:
        UserError: one line naming the fields.
    """
    level = recipe.architecture_level
    first, last = level.frame
    if level.enabled and first + last >= num_layers:
        raise UserError(
            f"architecture_level.fixed_first + fixed_last: {first} + {last} fixes every one of the models' "
            f"{num_layers} layers; leave at least one to edit"
        )
    if level.enabled and level.max_path_length is not None and first + last >= level.max_path_length:
        raise UserError(
            f"architecture_level.fixed_first + fixed_last: {first} + {last} fill every step of a path of "
            f"max_path_length {level.max_path_length}; leave at least one to edit"
        )
    blocks = recipe.parameter_level.blocks
    if recipe.parameter_level.optimised and blocks > num_layers:
        raise UserError(
            f"parameter_level.granularity: block:{blocks} gives each model {blocks} coefficients, more than the "
            f"models' {num_layers} layers: some would decide no layer; use block:{num_layers} at most"
        )


def _elements(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count
