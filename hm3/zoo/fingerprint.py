"""The fingerprint of a zoo's weights: one hash that says whether two zoos hold the same models, bit for bit.

The hash covers every tensor of every ``*.safetensors`` file under the zoo (base, specialists, vision heads):
for each file in path order, each tensor in name order, its file path, name, dtype, shape and raw bytes. It
reads the safetensors headers itself, so it does not depend on how the files were serialised (metadata,
tensor order on disk) and imports neither torch nor safetensors. The README lists the reference fingerprints,
so a user can tell whether their zoo is the one the documented numbers came from.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from pathlib import Path

SHORT = 16
"""Hex digits shown in ``scores.md`` and the README (the manifest keeps the whole digest)."""


def zoo_fingerprint(folder: Path, files: Iterable[str] | None = None) -> str:
    """``sha256:<hex>`` over every tensor of every safetensors file under ``folder`` (or of those among
    ``files``, paths relative to ``folder``: what a zoo's build wrote, not a user's file put beside them)."""
    if files is None:
        paths = folder.rglob("*.safetensors")
    else:
        paths = (folder / name for name in files if name.endswith(".safetensors"))
    digest = hashlib.sha256()
    for file in sorted(paths):
        _add_file(digest, file, file.relative_to(folder).as_posix())
    return f"sha256:{digest.hexdigest()}"


def short(fingerprint: str) -> str:
    """The first :data:`SHORT` hex digits of a fingerprint, as shown to people."""
    return fingerprint.removeprefix("sha256:")[:SHORT]


def _add_file(digest: hashlib._Hash, file: Path, name: str) -> None:
    with file.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        header.pop("__metadata__", None)
        start = 8 + length
        for tensor in sorted(header):
            info = header[tensor]
            begin, end = info["data_offsets"]
            handle.seek(start + begin)
            identity = f"{name}\0{tensor}\0{info['dtype']}\0{info['shape']}\0".encode()
            digest.update(identity)
            digest.update(handle.read(end - begin))
