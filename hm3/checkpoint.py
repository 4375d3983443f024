"""One model folder on disk, read lazily: ``config.json`` and the safetensors headers, tensors on demand.

Validation needs names, shapes and dtypes only, and those live in each safetensors file's JSON header, so
nothing is loaded until :meth:`Checkpoint.load` asks for a tensor (memory-mapped through ``safe_open``).
Pickle checkpoints (``pytorch_model.bin``) are refused unless the recipe opts in with ``allow_pickle: true``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hm3.errors import ModelError, UserError

if TYPE_CHECKING:
    import torch

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"

_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it looks like, without loading it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path

    @property
    def pickled(self) -> bool:
        """Whether the weights are ``pytorch_model*.bin`` pickles (loaded with torch), not safetensors."""
        return self._pickled is not None

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in its stored dtype."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count * _DTYPE_BYTES.get(self.dtype, 4)


def read_safetensors_header(file: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (names, dtypes, shapes, offsets), without reading the data."""
    try:
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as error:
        raise UserError(f"{file}: not a readable safetensors file ({error})") from None
    header.pop("__metadata__", None)
    return header


class Checkpoint:
    """A Hugging Face model folder: its config and a lazy index of its tensors.

    Args:
        folder: The model folder (``config.json`` plus weights).
        name: Name used in messages.
        allow_pickle: Accept ``pytorch_model*.bin`` weights when no safetensors exist.
    """

    def __init__(self, folder: str | Path, name: str | None = None, allow_pickle: bool = False) -> None:
        self.folder = Path(folder)
        self.name = name or self.folder.name
        self.allow_pickle = allow_pickle
        if not self.folder.is_dir():
            raise ModelError(self.name, f"folder not found: {self.folder}")
        config_file = self.folder / "config.json"
        if not config_file.is_file():
            raise ModelError(self.name, f"no config.json in {self.folder}")
        try:
            self.config: dict[str, Any] = json.loads(config_file.read_text())
        except json.JSONDecodeError as error:
            raise ModelError(self.name, f"config.json is not valid JSON ({error})") from None
        self._handles: dict[Path, Any] = {}
        self._pickled: dict[str, torch.Tensor] | None = None  # set by _index for pickle weights
        self.tensors: dict[str, TensorInfo] = self._index()

    # -- index --------------------------------------------------------------------------------------------

    def _index(self) -> dict[str, TensorInfo]:
        index_file = self.folder / SAFETENSORS_INDEX
        if index_file.is_file():
            return self._index_from_files(self._shards_from(index_file))
        single = sorted(self.folder.glob("*.safetensors"))
        if single:
            return self._index_from_files(single)
        pickles = sorted(self.folder.glob("pytorch_model*.bin"))
        if pickles or (self.folder / PICKLE_INDEX).is_file():
            if not self.allow_pickle:
                raise ModelError(
                    self.name,
                    f"only pickle weights ({pickles[0].name if pickles else PICKLE_INDEX}); "
                    "pickle can run code on load: convert to safetensors, or set 'allow_pickle: true' in the recipe",
                )
            return self._index_from_pickles(pickles)
        raise ModelError(self.name, f"no weights (*.safetensors) in {self.folder}")

    def _shards_from(self, index_file: Path) -> list[Path]:
        try:
            weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise ModelError(self.name, f"{index_file.name} is malformed ({error})") from None
        shards = sorted({self.folder / shard for shard in weight_map.values()})
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise ModelError(self.name, f"missing shard(s) {shown} listed in {index_file.name}")
        return shards

    def _index_from_files(self, files: list[Path]) -> dict[str, TensorInfo]:
        tensors: dict[str, TensorInfo] = {}
        for file in files:
            for tensor_name, meta in read_safetensors_header(file).items():
                tensors[tensor_name] = TensorInfo(tensor_name, tuple(meta["shape"]), meta["dtype"], file)
        return tensors

    def _index_from_pickles(self, files: list[Path]) -> dict[str, TensorInfo]:
        import torch

        self._pickled = {}
        for file in files:
            self._pickled.update(torch.load(file, map_location="cpu", mmap=True, weights_only=True))
        dtype_names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
        return {
            name: TensorInfo(name, tuple(t.shape), dtype_names.get(t.dtype, str(t.dtype)), files[0])
            for name, t in self._pickled.items()
        }

    # -- access -------------------------------------------------------------------------------------------

    @property
    def pickled(self) -> bool:
        """Whether the weights are ``pytorch_model*.bin`` pickles (loaded with torch), not safetensors."""
        return self._pickled is not None

    @property
    def nbytes(self) -> int:
        """Total size of the stored tensors."""
        return sum(info.nbytes for info in self.tensors.values())

    def load(self, tensor_name: str) -> torch.Tensor:
        """One tensor, read from disk (memory-mapped); raises UserError if the checkpoint lacks it."""
        info = self.tensors.get(tensor_name)
        if info is None:
            raise ModelError(self.name, f"has no tensor {tensor_name!r}")
        if self._pickled is not None:
            return self._pickled[tensor_name]
        handle = self._handles.get(info.file)
        if handle is None:
            from safetensors import safe_open

            handle = self._handles[info.file] = safe_open(str(info.file), framework="pt")
        return handle.get_tensor(tensor_name)

    def close(self) -> None:
        """Drop open file handles (they are reopened on the next load)."""
        self._handles.clear()

    def __repr__(self) -> str:
        return f"Checkpoint({self.name!r}, {self.folder}, {len(self.tensors)} tensors)"
