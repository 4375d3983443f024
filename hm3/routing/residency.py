"""Layer offload: the pool's models live in host memory and a candidate's layers are moved to the device as its
path needs them, through a cache of recently used layers bounded in bytes.

Without offload the search keeps the K fine-tuned models, the base and the merged model on the device (K + 2
models; ~67 GB for the LLaMA-2-7B group in bfloat16). With ``device_memory`` set, :class:`DeviceLayerCache` holds
on the device only what candidates use: the shared tensors (embeddings, final norm, head) of the models
candidates take them from, and the layers of recent paths, least recently used first out. One candidate needs
its shared tensors plus its *distinct* layers at once (a repeated layer is the same tensors twice), so any bound
of at least ``shared + T_max`` layers works; a larger one keeps more of the next candidates' layers.

The host tensors of the fine-tuned models and the base are their safetensors files, memory-mapped as stored
(:class:`hm3.merge.tensor_reader.TensorReader`: pages the kernel may drop again); a move casts them to the run's
dtype, which is what the resident search does when it loads them, so the device copies hold the same values. The
merged model is computed on the device from inputs cast the same way and brought back to host memory. Scores do
not change. On a CPU "device" the move is a copy too, so the bound is real memory there as well: the process's
own memory is the bounded cache and the merged model, whatever the models' size or stored dtype — a CPU search
whose models exceed RAM.

Evicting a layer drops the cache's reference; its memory is freed once the candidate built from it is gone (the
search builds, scores and drops one candidate at a time).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from hm3.errors import UserError

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def readable_bytes(count: float, decimals: int = 2) -> str:
    """``count`` bytes in the largest binary unit that keeps the number at least 1 (``0.29 MiB``, ``20.00 GiB``):
    a bound of a few hundred KB for a micro model reads as what it is, not as ``0.00 GiB``."""
    value = float(count)
    for unit in BYTE_UNITS[:-1]:
        if abs(value) < 1024:
            return f"{value:.{decimals}f} {unit}"
        value /= 1024
    return f"{value:.{decimals}f} {BYTE_UNITS[-1]}"


@dataclass
class CacheStats:
    """What the cache did: requests answered from the device, moves, bytes moved, the most it held."""

    hits: int = 0
    moves: int = 0
    bytes_moved: int = 0
    peak_bytes: int = 0


@dataclass(eq=False)
class DeviceLayerCache:
    """Tensor groups (one layer of one model, or one model's shared tensors) on ``device``, at most
    ``limit_bytes`` of them, least recently used evicted first.

    Attributes:
        device: Where candidates run (``cuda``, ``cuda:1``, ``cpu``).
        limit_bytes: The bound on what the cache holds.
    """

    device: str
    limit_bytes: int
    stats: CacheStats = field(default_factory=CacheStats)
    _entries: OrderedDict[Hashable, list[torch.Tensor]] = field(default_factory=OrderedDict, repr=False)
    _sizes: dict[Hashable, int] = field(default_factory=dict, repr=False)

    @property
    def held_bytes(self) -> int:
        """Bytes the cache holds now."""
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def fetch(
        self, groups: Sequence[tuple[Hashable, Sequence[torch.Tensor], torch.dtype | None]]
    ) -> dict[Hashable, list[torch.Tensor]]:
        """The device copies of every group one candidate needs, moving the missing ones.

        Args:
            groups: ``(key, host tensors, dtype)`` per group (``dtype``: what floating tensors are cast to on
                the move; None: as they are); a key names the same tensors and dtype on every call.

        Raises:
            UserError: the candidate's groups alone exceed the bound.
        """
        wanted = {key: (tensors, dtype) for key, tensors, dtype in groups}
        needed = sum(self._sizes.get(k) or _nbytes(*wanted[k]) for k in wanted)
        if needed > self.limit_bytes:
            raise UserError(
                f"device_memory: a candidate needs {readable_bytes(needed)} of layers and shared tensors on "
                f"{self.device} at once, but device_memory is {readable_bytes(self.limit_bytes)}; raise it or "
                "lower architecture_level.max_path_length"
            )
        missing = [k for k in wanted if k not in self._entries]
        incoming = sum(_nbytes(*wanted[k]) for k in missing)
        self._evict(self.limit_bytes - incoming, keep=wanted.keys())
        for key in wanted:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.stats.hits += 1
        for key in missing:
            host, dtype = wanted[key]
            tensors = [self._to_device(t, dtype) for t in host]
            self._entries[key] = tensors
            self._sizes[key] = _nbytes(tensors, None)
            self.stats.moves += 1
            self.stats.bytes_moved += self._sizes[key]
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.held_bytes)
        return {key: self._entries[key] for key in wanted}

    def forget(self, member: Hashable) -> None:
        """Drop every group of one pool member (keys ``(member, ...)``): its host tensors are being replaced."""
        for key in [k for k in self._entries if isinstance(k, tuple) and k and k[0] == member]:
            self._drop(key)

    def _evict(self, room: int, keep) -> None:
        """Evict least recently used groups not in ``keep`` until at most ``room`` bytes are held."""
        held = self.held_bytes
        for key in list(self._entries):
            if held <= room:
                return
            if key not in keep:
                held -= self._sizes[key]
                self._drop(key)

    def _drop(self, key: Hashable) -> None:
        del self._entries[key]
        del self._sizes[key]

    def _to_device(self, tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        # copy=True: on a CPU device too, so that the bound is memory of the cache's own (not file pages)
        cast = dtype if dtype is not None and tensor.is_floating_point() else None
        return tensor.to(self.device, dtype=cast, copy=True)


def _nbytes(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None) -> int:
    """Bytes of ``tensors`` once floating ones are cast to ``dtype`` (None: as they are)."""
    return sum(
        t.numel() * (dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size())
        for t in tensors
    )
