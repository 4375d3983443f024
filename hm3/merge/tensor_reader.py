"""Reading tensors of a checkpoint with plain file reads instead of memory maps.

A memory-mapped tensor keeps its pages counted in the process's resident memory for as long as the file
stays mapped; merging a whole model that way makes every input model look resident. Reading each tensor
into its own buffer (one copy from the page cache, freed with the tensor) keeps a streaming merge at one
tensor's inputs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

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


class TensorReader:
    """Reads tensors of a (safetensors) checkpoint by offset, one buffer per tensor.

    Args:
        checkpoint: The checkpoint whose files are read (pickle checkpoints fall back to ``load``).
    """

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._where: dict[str, tuple[Path, int, int, str, tuple[int, ...]]] = {}
        self._files: dict[Path, object] = {}

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
        if name not in self._where:
            raise ModelError(self.checkpoint.name, f"has no tensor {name!r}")
        return self._where[name]

    def load(self, name: str) -> torch.Tensor:
        """Tensor ``name``, read into a fresh buffer."""
        import torch

        if self.checkpoint._pickled is not None:
            return self.checkpoint.load(name)
        file, offset, size, dtype, shape = self._locate(name)
        buffer = torch.empty(size, dtype=torch.uint8)
        handle = self._files.get(file)
        if handle is None:
            handle = self._files[file] = open(file, "rb")  # noqa: SIM115 (kept open across reads)
        handle.seek(offset)  # type: ignore[attr-defined]
        if size and handle.readinto(memoryview(buffer.numpy())) != size:  # type: ignore[attr-defined]
            raise ModelError(self.checkpoint.name, f"{file.name} is truncated (tensor {name})")
        return buffer.view(getattr(torch, TORCH_DTYPES[dtype])).reshape(shape)

    def close(self) -> None:
        """Close the open files."""
        for handle in self._files.values():
            handle.close()  # type: ignore[attr-defined]
        self._files.clear()
