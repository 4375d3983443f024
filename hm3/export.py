"""Writing a Hugging Face checkpoint: sharded safetensors, a fixed config, the tokenizer, a model card.

Used for every model hm3 writes (parameter-level merges, routed models)::

    from hm3.export import write_hf_checkpoint

    write_hf_checkpoint(
        merged_tensors,                       # a mapping, or an iterator of (name, tensor) pairs (streamed)
        config=base.config,                   # config.json contents of the model the tensors follow
        out=Path("merged"),
        tokenizer_from=base.folder,           # tokenizer files and generation_config.json are copied from here
        shard_size="5GB",
        num_layers=30,                        # a routed model: num_hidden_layers and layer_types follow
    )

Everything is written into a hidden staging folder beside ``out``, fsynced, and swapped into place at the end
(:mod:`hm3.folder_swap`), so an interrupted run (an error, Ctrl-C, a kill) never leaves a folder that looks like
a finished model, and what a killed run left is cleared by the next write to ``out``. The folder is marked as
hm3's (:data:`hm3.output_guard.MARKER`): ``force`` replaces only such a folder, never an input. Tensors given as
an iterator are written shard by shard: at most one shard is held in memory.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hm3.arch import detect_family
from hm3.checkpoint import TOKENIZER_FILES
from hm3.errors import UserError
from hm3.folder_swap import clear_leftovers, staging_folder, swap_into_place
from hm3.output_guard import InputPath, announce_replacement, check_no_overlap, check_replaceable, mark

if TYPE_CHECKING:
    import torch

SAFETENSORS_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class RawTensor:
    """A tensor the writer takes without torch: its bytes as a flat numpy array, its shape and its dtype
    (torch's name, e.g. ``bfloat16``; the array may hold the bit patterns). ``hm3 merge --mergekit`` yields
    these when no torch is needed (:func:`hm3.merge.mergekit_run.merged_arrays`)."""

    data: Any
    shape: tuple[int, ...]
    dtype: str


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_SAFETENSORS_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
DISK_MARGIN_BYTES = 64 * 2**20
"""Free space kept on top of the checkpoint's own size when checking the disk up front."""


def parse_size(size: str | int) -> int:
    """Bytes in a size such as ``5GB``, ``500MB`` or ``2000000`` (decimal units, as Hugging Face uses).

    Raises:
        UserError: the text is not a size.
    """
    if isinstance(size, int):
        if size <= 0:
            raise UserError(f"shard size must be positive, not {size}")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(size).upper())
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"not a size: {size!r} (expected e.g. 5GB, 500MB)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def write_hf_checkpoint(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    config: dict[str, Any],
    out: Path,
    *,
    tokenizer_from: Path | None,
    shard_size: str | int = "5GB",
    force: bool = False,
    model_card: str | None = None,
    num_layers: int | None = None,
    layer_origin: Sequence[int] | None = None,
    expected_bytes: int | None = None,
    on_tensor: Callable[[str, int], None] | None = None,
    extra_files: Mapping[str, str] | None = None,
    layout: Sequence[TensorLayout] | None = None,
    inputs: Sequence[InputPath] = (),
) -> Path:
    """Write a standard Hugging Face checkpoint folder and return its path.

    Args:
        tensors: The weights, as a mapping or as an iterator of ``(name, tensor)`` pairs (streamed: written
            shard by shard as they come).
        config: ``config.json`` contents of the model the weights follow (not modified).
        out: The folder to create.
        tokenizer_from: A model folder whose tokenizer files and ``generation_config.json`` are copied.
        shard_size: Largest shard, e.g. ``5GB``; one shard is written as ``model.safetensors``, several as
            ``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``.
        force: Replace an existing non-empty ``out``.
        model_card: Text of ``README.md`` (none written when None).
        num_layers: New layer count: ``num_hidden_layers`` and per-layer config lists (``layer_types``...)
            are fixed to it.
        layer_origin: For each new layer, the original layer its per-layer config entries come from
            (default: the original entries, repeated cyclically when the model grows).
        expected_bytes: Size of the weights, checked against the free disk space before anything is written
            (computed from a mapping when not given).
        on_tensor: Called with ``(name, nbytes)`` after each tensor is buffered (progress reporting).
        extra_files: More text files to write, name -> contents (e.g. ``mergekit_config.yml``).
        layout: ``(name, shape, dtype)`` of every tensor, in the order the iterator yields them. Known up
            front, shards are laid out before any tensor arrives and each tensor goes straight to its file:
            nothing is buffered (memory stays at one tensor). The tensors must then match it exactly.
        inputs: What the tensors are read from, ``(label, path)``: ``out`` may not overlap any of them (nor
            ``tokenizer_from``).

    Raises:
        UserError: ``out`` overlaps an input, is not empty (without ``force``; with it, is not a model folder hm3
            wrote), is not writable, or the disk is too small.
    """
    out = Path(out)
    if isinstance(tensors, Mapping):
        if expected_bytes is None:
            expected_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        items: Iterable[tuple[str, torch.Tensor]] = tensors.items()
    else:
        items = tensors
    if layout is not None and expected_bytes is None:
        expected_bytes = sum(entry.nbytes for entry in layout)
    sources = [*inputs, *([("tokenizer source", tokenizer_from)] if tokenizer_from is not None else [])]
    replaced = check_output_folder(out, force=force, expected_bytes=expected_bytes, inputs=sources)
    staging = staging_folder(out)
    try:
        if layout is not None:
            _write_laid_out(items, list(layout), staging, parse_size(shard_size), on_tensor)
        else:
            _write_shards(items, staging, parse_size(shard_size), on_tensor)
        fixed = fix_config(config, num_layers, layer_origin) if num_layers is not None else dict(config)
        (staging / "config.json").write_text(json.dumps(fixed, indent=2, sort_keys=True) + "\n")
        if tokenizer_from is not None:
            copy_tokenizer_files(Path(tokenizer_from), staging)
        if model_card is not None:
            (staging / "README.md").write_text(model_card)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        mark(staging, "model")
        announce_replacement(replaced)
        move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def check_output_folder(
    out: Path, *, force: bool, expected_bytes: int | None, inputs: Sequence[InputPath] = ()
) -> str | None:
    """Refuse an output folder that cannot or should not receive a checkpoint, before any work is done.

    First clears what an interrupted earlier write to ``out`` left beside it (:func:`clear_leftovers`: a
    replaced folder comes back if the swap was killed half-way).

    Returns:
        What ``force`` will replace (a model folder hm3 wrote), or None.

    Raises:
        UserError: ``out`` is, contains or lies inside one of ``inputs``; is a file; is a non-empty folder
            (without ``force``; with it, one hm3 did not write as a model); its parent is missing or not
            writable; or the disk lacks ``expected_bytes`` (plus a margin) of free space.
    """
    out = Path(out)
    clear_leftovers(out)
    check_no_overlap(out, inputs)
    replaced = check_replaceable(out, "model", force)
    parent = out.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise UserError(f"cannot write {out}: {parent} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: folder {parent} is not writable")
    if expected_bytes is not None:
        free = shutil.disk_usage(parent).free
        if free < expected_bytes + DISK_MARGIN_BYTES:
            raise UserError(
                f"not enough free disk for {out}: {(expected_bytes + DISK_MARGIN_BYTES) / 2**20:,.1f} MiB "
                f"needed (the checkpoint plus a {DISK_MARGIN_BYTES // 2**20} MiB margin), "
                f"{free / 2**20:,.1f} MiB free on {parent}"
            )
    return replaced


def fix_config(
    config: dict[str, Any], num_layers: int, layer_origin: Sequence[int] | None = None
) -> dict[str, Any]:
    """A copy of ``config`` declaring ``num_layers`` layers, per-layer lists cut or extended to match."""
    backbone = detect_family(config)
    fixed = copy.deepcopy(config)
    section = backbone.backbone_config(fixed)
    section[backbone.num_layers_key] = num_layers
    for key in backbone.per_layer_config_lists:
        values = section.get(key)
        if not isinstance(values, list) or not values:
            continue
        origin = layer_origin if layer_origin is not None else range(num_layers)
        if len(origin) != num_layers:
            raise ValueError(f"layer_origin has {len(origin)} entries for {num_layers} layers")
        section[key] = [values[i % len(values)] for i in origin]
    return fixed


def copy_tokenizer_files(source: Path, target: Path) -> list[str]:
    """Copy the tokenizer files and ``generation_config.json`` that ``source`` has; returns their names."""
    copied = []
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
            copied.append(name)
    return copied


# -- shards ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorLayout:
    """Name, shape and dtype (``float32``, ``bfloat16``...) of a tensor to be written."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count * _DTYPE_SIZES[self.dtype]


_DTYPE_SIZES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2}
_DTYPE_SIZES.update({"int8": 1, "uint8": 1, "bool": 1})


def _shard_groups(layout: list[TensorLayout], limit: int) -> list[list[TensorLayout]]:
    groups: list[list[TensorLayout]] = [[]]
    size = 0
    for entry in layout:
        if groups[-1] and size + entry.nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += entry.nbytes
    return groups


def _header(entries: Sequence[tuple[str, tuple[int, ...], str, int]]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded


def _write_laid_out(
    items: Iterable[tuple[str, torch.Tensor | RawTensor]],
    layout: list[TensorLayout],
    folder: Path,
    limit: int,
    on_tensor: Callable[[str, int], None] | None,
) -> None:
    """Write tensors straight into shards laid out in advance (no buffering), in whatever order they come:
    every shard is created at its final size with its header, and each tensor is written at its offset."""
    if not layout:
        raise ValueError("no tensors to write")
    groups = _shard_groups(layout, limit)
    total = len(groups)
    names = (
        ["model.safetensors"]
        if total == 1
        else [f"model-{i:05d}-of-{total:05d}.safetensors" for i in range(1, total + 1)]
    )
    places: dict[str, tuple[int, int, TensorLayout]] = {}  # name -> (shard, byte offset, entry)
    descriptors: list[int] = []
    try:
        for number, group in enumerate(groups):
            entries = [(e.name, e.shape, _SAFETENSORS_DTYPES[e.dtype], e.nbytes) for e in group]
            header = _header(entries)
            descriptor = os.open(folder / names[number], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            descriptors.append(descriptor)
            _write_at(descriptor, memoryview(header), 0)
            offset = len(header)
            for entry in group:
                places[entry.name] = (number, offset, entry)
                offset += entry.nbytes
            os.ftruncate(descriptor, offset)
        for name, tensor in items:
            place = places.pop(name, None)
            dtype = str(tensor.dtype).removeprefix("torch.")
            if place is None or (tuple(tensor.shape), dtype) != (place[2].shape, place[2].dtype):
                wanted = (
                    "nothing (unknown or repeated)"
                    if place is None
                    else f"{list(place[2].shape)} {place[2].dtype}"
                )
                raise ValueError(
                    f"tensor {name} {list(tensor.shape)} {dtype} does not follow the layout ({wanted})"
                )
            number, offset, entry = place
            _write_at(descriptors[number], _raw_bytes(tensor), offset)
            if on_tensor is not None:
                on_tensor(name, entry.nbytes)
    finally:
        for descriptor in descriptors:
            os.close(descriptor)
    if places:
        raise ValueError(f"the tensors ended before {next(iter(places))}")
    if total > 1:
        weight_map = {e.name: names[i] for i, group in enumerate(groups) for e in group}
        size = sum(e.nbytes for e in layout)
        index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _write_at(descriptor: int, data: memoryview, offset: int) -> None:
    """All of ``data`` at ``offset`` (``os.pwrite`` may write less than asked)."""
    data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    while len(data):
        written = os.pwrite(descriptor, data, offset)
        data = data[written:]
        offset += written


class _ShardWriter:
    """Buffers tensors up to the shard size, then writes one safetensors file without an extra copy."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self.buffer: list[tuple[str, torch.Tensor]] = []
        self.buffered = 0
        self.files: list[tuple[Path, list[str]]] = []
        self.seen: set[str] = set()

    def add(self, name: str, tensor: torch.Tensor) -> int:
        if name in self.seen:
            raise ValueError(f"tensor {name!r} given twice")
        self.seen.add(name)
        nbytes = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffered + nbytes > self.limit:
            self.flush()
        self.buffer.append((name, tensor))
        self.buffered += nbytes
        return nbytes

    def flush(self) -> None:
        if not self.buffer:
            return
        path = self.folder / f"shard-{len(self.files):05d}.tmp"
        write_safetensors(self.buffer, path)
        self.files.append((path, [name for name, _ in self.buffer]))
        self.buffer, self.buffered = [], 0


def _write_shards(
    items: Iterable[tuple[str, torch.Tensor]],
    folder: Path,
    limit: int,
    on_tensor: Callable[[str, int], None] | None,
) -> None:
    writer = _ShardWriter(folder, limit)
    for name, tensor in items:
        nbytes = writer.add(name, tensor)
        if on_tensor is not None:
            on_tensor(name, nbytes)
    writer.flush()
    if not writer.files:
        raise ValueError("no tensors to write")
    if len(writer.files) == 1:
        writer.files[0][0].rename(folder / "model.safetensors")
        return
    total = len(writer.files)
    weight_map: dict[str, str] = {}
    size = 0
    for number, (path, names) in enumerate(writer.files, start=1):
        final = f"model-{number:05d}-of-{total:05d}.safetensors"
        path.rename(folder / final)
        size += (folder / final).stat().st_size
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def write_safetensors(tensors: Sequence[tuple[str, torch.Tensor]], path: Path) -> None:
    """Write one safetensors file, streaming each tensor's bytes from its own memory (no serialised copy)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tensor in tensors:
        dtype = _SAFETENSORS_DTYPES.get(str(tensor.dtype).removeprefix("torch."))
        if dtype is None:
            raise ValueError(f"cannot write {name}: dtype {tensor.dtype} is not supported by safetensors")
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for _, tensor in tensors:
            handle.write(_raw_bytes(tensor))


def _raw_bytes(tensor: torch.Tensor | RawTensor) -> memoryview:
    if isinstance(tensor, RawTensor):
        return memoryview(tensor.data).cast("B") if tensor.data.size else memoryview(b"")
    # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def move_into_place(staging: Path, out: Path) -> None:
    """fsync the finished folder and swap it in as ``out`` (:func:`hm3.folder_swap.swap_into_place`: an
    existing ``out`` is moved aside, then deleted; a kill in between is undone by the next write to ``out``)."""
    swap_into_place(staging, out)
