"""One model folder on disk, read lazily: ``config.json`` and the safetensors headers, tensors on demand.

Validation needs names, shapes and dtypes only, and those live in each safetensors file's JSON header, so
nothing is loaded until :meth:`Checkpoint.load` asks for a tensor (memory-mapped through ``safe_open``).
Pickle checkpoints (``pytorch_model.bin``) are refused unless the recipe opts in with ``allow_pickle: true``.
Where a recipe's model is (:func:`resolve_model_folder`: its own folder, or the hub snapshot of its id) and its
``config.json`` alone (:func:`read_model_config`) need no torch either.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import snapshot_download
from safetensors import safe_open

from hm3.errors import ModelError, UserError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from hm3.recipe import ModelRef


TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
)
"""Files of a model folder that are neither weights nor config: its tokenizer, and CLIP's image preprocessor
(an export copies those ``tokenizer_from`` has)."""

SAFETENSORS_INDEX = "model.safetensors.index.json"
SINGLE_SAFETENSORS = "model.safetensors"
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
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it looks like, without loading it. ``name`` is the name stored in the
    file, which a pool may index under another (:meth:`Checkpoint.rename_tensors`)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in its stored dtype."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count * _DTYPE_BYTES.get(self.dtype, 4)


def read_safetensors_header(file: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (names, dtypes, shapes, offsets), without reading the data.

    The header is checked against the file: every entry names a known dtype, a shape of non-negative integers
    and the byte range its shape and dtype need, inside the file (a truncated download fails here, not in the
    middle of a search).

    Raises:
        UserError: the file is not a safetensors file, its header is malformed, or its data is cut short.
    """
    try:
        with open(file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise ValueError(f"header length {length} does not fit the file's {size} bytes")
            header = json.loads(handle.read(length).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
        header.pop("__metadata__", None)
        data_bytes = size - 8 - length
        for name, meta in header.items():
            _check_header_entry(name, meta, data_bytes)
    except (OSError, ValueError, struct.error) as error:  # UnicodeDecodeError and JSONDecodeError included
        raise UserError(f"{file}: not a readable safetensors file ({_one_line(error)})") from None
    return header


def _check_header_entry(name: str, meta: Any, data_bytes: int) -> None:
    """ValueError unless ``meta`` is a well-formed header entry whose bytes lie in the ``data_bytes`` after it."""
    if not isinstance(meta, dict):
        raise ValueError(f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and o >= 0 for o in offsets)
    ):
        raise ValueError(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    count = 1
    for dim in shape:
        count *= dim
    begin, end = offsets
    if end - begin != count * _DTYPE_BYTES[dtype]:
        raise ValueError(
            f"tensor {name!r}: data_offsets {offsets} do not hold a {dtype} tensor of shape {shape}"
        )
    if end > data_bytes:
        raise ValueError(
            f"tensor {name!r} ends at byte {end} of the data, which has {data_bytes}: truncated file"
        )


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def _read_json(file: Path, name: str) -> dict[str, Any]:
    """A JSON object file of a model folder (config, index); ModelError if it is not one."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ModelError(name, f"{file.name} is not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ModelError(name, f"{file.name} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ModelError(name, f"{file.name} holds a JSON {type(data).__name__}, not an object")
    return data


def hub_is_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve_model_folder(ref: ModelRef) -> Path:
    """The local folder holding a model: its own path, or the hub snapshot of its id.

    Raises:
        UserError: the folder does not exist, or the hub id is neither cached nor downloadable.
    """
    if not ref.is_hub:
        folder = Path(ref.path)
        if not folder.exists():
            raise ModelError(ref.name, f"folder not found: {folder}")
        return folder

    try:
        return Path(
            snapshot_download(
                ref.path,
                revision=ref.revision,
                local_files_only=hub_is_offline(),
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"],
            )
        )
    except Exception as error:  # the hub client raises many kinds; all mean "not available here"
        where = "in the local cache (HF_HUB_OFFLINE=1)" if hub_is_offline() else "on the hub"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(ref.name, f"hub id {ref.path!r} not available {where}: {reason}") from None


def read_model_config(folder: Path, name: str) -> dict[str, Any]:
    """A model folder's ``config.json`` (ModelError if missing or not a JSON object)."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise ModelError(name, f"no config.json in {folder}")
    return _read_json(config_file, name)


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
        if self.folder.exists() and not self.folder.is_dir():
            raise ModelError(self.name, f"{self.folder} is a file, not a model folder")
        if not self.folder.is_dir():
            raise ModelError(self.name, f"folder not found: {self.folder}")
        self.config: dict[str, Any] = read_model_config(self.folder, self.name)
        self._handles: dict[Path, Any] = {}
        self._pickled: dict[str, torch.Tensor] | None = None  # set by _index for pickle weights
        self.tensors: dict[str, TensorInfo] = self._index()

    # -- index --------------------------------------------------------------------------------------------

    def _index(self) -> dict[str, TensorInfo]:
        index_file = self.folder / SAFETENSORS_INDEX
        if index_file.is_file():
            shards = self._shards_from(index_file)
            if (
                self.folder / SINGLE_SAFETENSORS
            ).is_file() and self.folder / SINGLE_SAFETENSORS not in shards:
                raise ModelError(
                    self.name,
                    f"holds both {SINGLE_SAFETENSORS} and {SAFETENSORS_INDEX} listing other files: transformers "
                    f"reads the first, hm3 would read the second; keep one of them",
                )
            return self._index_from_files(shards)
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
        weight_map = _read_json(index_file, self.name).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(shard, str) and shard and Path(shard).name == shard for shard in weight_map.values()
        ):
            raise ModelError(
                self.name,
                f"{index_file.name} is malformed ('weight_map' must map tensor names to file names)",
            )
        shards = sorted({self.folder / shard for shard in weight_map.values()})
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise ModelError(self.name, f"missing shard(s) {shown} listed in {index_file.name}")
        return shards

    def _index_from_files(self, files: list[Path]) -> dict[str, TensorInfo]:
        tensors: dict[str, TensorInfo] = {}
        for file in files:
            try:
                header = read_safetensors_header(file)
            except UserError as error:
                raise ModelError(self.name, str(error)) from None
            for tensor_name, meta in header.items():
                tensors[tensor_name] = TensorInfo(tensor_name, tuple(meta["shape"]), meta["dtype"], file)
        return tensors

    def _index_from_pickles(self, files: list[Path]) -> dict[str, TensorInfo]:
        # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
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

    def rename_tensors(self, rename: Callable[[str], str]) -> None:
        """Index every tensor under ``rename(name)``; reads still use the name stored in the file (a pool
        lines a checkpoint's naming up with its base's: :meth:`hm3.pool.ModelPool.__init__`)."""
        self.tensors = {rename(key): info for key, info in self.tensors.items()}

    def load(self, tensor_name: str) -> torch.Tensor:
        """One tensor, read from disk (memory-mapped); raises UserError if the checkpoint lacks it."""
        info = self.tensors.get(tensor_name)
        if info is None:
            raise ModelError(self.name, f"has no tensor {tensor_name!r}")
        if self._pickled is not None:
            return self._pickled[info.name]
        handle = self._handles.get(info.file)
        if handle is None:
            handle = self._handles[info.file] = safe_open(str(info.file), framework="pt")
        return handle.get_tensor(info.name)

    def close(self) -> None:
        """Drop open file handles (they are reopened on the next load)."""
        self._handles.clear()

    def __repr__(self) -> str:
        return f"Checkpoint({self.name!r}, {self.folder}, {len(self.tensors)} tensors)"
