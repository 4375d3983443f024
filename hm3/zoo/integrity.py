"""Whether a finished zoo still holds what its build wrote: the check before :func:`hm3.zoo.build.build_zoo`
reuses one.

A build records every file's SHA-256 in its manifest (``checksums``: path -> ``sha256:<hex>``, the files of
``files``); a zoo is reused only if each of them is there with those bytes, so an edited, truncated or deleted
file is named (the first, in path order). A zoo built before the manifest carried checksums is checked against
what it does carry: every file ``files`` lists is there, and the fingerprint of its weights
(:mod:`hm3.zoo.fingerprint`, over the listed safetensors files) is the one recorded; an edit of another of its
files (a config, a data set, ``scores.md``) goes unseen there. Files a user put beside the build's are not
checked (:func:`hm3.zoo.build.foreign_files` keeps a rebuild off them). Either check reads the whole zoo, in
25 ms or less for the deep language zoo (8.6 MB), the largest (measured from the page cache, 2 cores).

Example::

    difference = first_difference(folder, read_manifest(folder))
    if difference is not None:
        ...  # e.g. "rotated/model.safetensors is not the file its build wrote"
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hm3.zoo.fingerprint import short, zoo_fingerprint

UNREADABLE_WEIGHTS = (OSError, ValueError, KeyError, TypeError, struct.error)
"""What reading a damaged safetensors file for its fingerprint raises."""


def file_checksum(path: Path) -> str:
    """``sha256:<hex>`` of the bytes of ``path``."""
    with path.open("rb") as handle:
        return f"sha256:{hashlib.file_digest(handle, 'sha256').hexdigest()}"


def file_checksums(folder: Path, files: Iterable[str]) -> dict[str, str]:
    """The manifest's ``checksums``: each of ``files`` (relative to ``folder``) and its :func:`file_checksum`."""
    return {name: file_checksum(folder / name) for name in files}


def first_difference(folder: Path, manifest: dict[str, Any]) -> str | None:
    """How the zoo ``folder`` differs from what its build wrote, naming the first file that does; None if it
    does not (as far as the manifest tells: see the module's doc)."""
    checksums = manifest.get("checksums")
    if checksums is not None:
        return _changed_file(folder, checksums)
    listed = manifest.get("files")
    missing = next((name for name in sorted(listed or []) if not (folder / name).is_file()), None)
    if missing is not None:
        return f"{missing} is missing"
    return _changed_weights(folder, listed, manifest.get("fingerprint"))


def _changed_file(folder: Path, checksums: dict[str, str]) -> str | None:
    for name, checksum in sorted(checksums.items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_checksum(path) != checksum:
            return f"{name} is not the file its build wrote"
    return None


def _changed_weights(folder: Path, files: list[str] | None, recorded: str | None) -> str | None:
    if recorded is None:
        return None
    try:
        fingerprint = zoo_fingerprint(folder, files)
    except UNREADABLE_WEIGHTS as error:
        return f"its weights cannot be read ({error})"
    if fingerprint != recorded:
        return (
            f"a *.safetensors file is not the one its build wrote (weights {short(fingerprint)}, "
            f"built as {short(recorded)})"
        )
    return None
