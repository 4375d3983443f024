"""Reading tensors of a checkpoint, each through its own small memory map.

Mapping a whole checkpoint keeps its pages counted in the process's resident memory for as long as the file
stays mapped; merging a whole model that way makes every input model look resident. Here each tensor gets a
private (copy-on-write) mapping of just its bytes, unmapped when the tensor is freed: a streaming merge stays
at one tensor's inputs, and reading costs no copy (the tensor's pages are the page cache's until written).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hm3.checkpoint import Checkpoint
from hm3.errors import ModelError

if TYPE_CHECKING:
    import torch

TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


NUMPY_DTYPES = {"F32": "float32", "BF16": "uint16"}
"""Safetensors dtypes :meth:`TensorReader.array` reads (bfloat16 as its bit patterns)."""


class TensorReader:
    """Reads tensors of a (safetensors) checkpoint by offset, one buffer per tensor.

    Args:
        checkpoint: The checkpoint whose files are read (pickle checkpoints fall back to ``load``).
    """

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._where: dict[str, tuple[Path, int, int, str, tuple[int, ...]]] = {}
        self._files: dict[Path, object] = {}
        self._sizes: dict[Path, int] = {}

    def _locate(self, name: str) -> tuple[Path, int, int, str, tuple[int, ...]]:
        if not self._where:
            for file in sorted({info.file for info in self.checkpoint.tensors.values()}):
                with open(file, "rb") as handle:
                    (length,) = struct.unpack("<Q", handle.read(8))
                    header = json.loads(handle.read(length))
                header.pop("__metadata__", None)
                for tensor_name, meta in header.items():
                    start, end = meta["data_offsets"]
                    self._where[tensor_name] = (
                        file,
                        8 + length + start,
                        end - start,
                        meta["dtype"],
                        tuple(meta["shape"]),
                    )
        info = self.checkpoint.tensors.get(name)  # the name stored in the file, where the pool renamed it
        stored = name if info is None else info.name
        if stored not in self._where:
            raise ModelError(self.checkpoint.name, f"has no tensor {name!r}")
        return self._where[stored]

    def load(self, name: str) -> torch.Tensor:
        """Tensor ``name``, backed by a private memory map of its bytes (freed with the tensor)."""
        # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
        import torch

        if self.checkpoint._pickled is not None:
            return self.checkpoint.load(name)
        dtype = getattr(torch, TORCH_DTYPES[self._locate(name)[3]])
        raw, _, shape = self._bytes(name, dtype.itemsize)
        return torch.from_numpy(raw).view(dtype).reshape(shape)

    def array(self, name: str) -> tuple[np.ndarray, str, tuple[int, ...]]:
        """Tensor ``name`` as a flat numpy array over a private memory map of its bytes (freed with the
        array), with its safetensors dtype and shape; bfloat16 arrives as its ``uint16`` bit patterns.
        For the dtypes of :data:`NUMPY_DTYPES`; no torch needed."""
        kind = np.dtype(NUMPY_DTYPES[self._locate(name)[3]])
        raw, dtype, shape = self._bytes(name, kind.itemsize)
        return raw.view(kind), dtype, shape

    def _bytes(self, name: str, itemsize: int) -> tuple[np.ndarray, str, tuple[int, ...]]:
        """The bytes of tensor ``name`` (uint8, over a private memory map; copied when they are not aligned
        to ``itemsize``: safetensors does not promise alignment), its safetensors dtype and its shape."""
        file, offset, size, dtype, shape = self._locate(name)
        mapped, start = self._map(file, offset, size, name)
        if mapped is None:
            return np.empty(0, dtype=np.uint8), dtype, shape
        raw = np.frombuffer(mapped, dtype=np.uint8, count=size, offset=offset - start)
        return (raw.copy() if (offset - start) % itemsize else raw), dtype, shape

    def _map(self, file: Path, offset: int, size: int, name: str):
        """A private (copy-on-write) memory map covering ``size`` bytes at ``offset`` of ``file``, and the
        file offset it starts at (a multiple of the allocation granularity); ``(None, 0)`` when empty."""
        if size == 0:
            return None, 0
        handle = self._files.get(file)
        if handle is None:
            handle = self._files[file] = open(file, "rb")  # noqa: SIM115 (kept open across reads)
            self._sizes[file] = os.fstat(handle.fileno()).st_size  # type: ignore[attr-defined]
        if offset + size > self._sizes[file]:
            raise ModelError(self.checkpoint.name, f"{file.name} is truncated (tensor {name})")
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        fileno = handle.fileno()  # type: ignore[attr-defined]
        return mmap.mmap(fileno, offset + size - start, access=mmap.ACCESS_COPY, offset=start), start

    def close(self) -> None:
        """Close the open files."""
        for handle in self._files.values():
            handle.close()  # type: ignore[attr-defined]
        self._files.clear()
