"""Folders that appear whole: built beside their place, made durable, swapped in; a killed swap is undone.

A writer builds ``OUT`` in a hidden sibling named after itself, then swaps it in::

    staging = staging_folder(out)              # .OUT.partial-<pid>-<random>, beside OUT
    ...write files into staging...
    swap_into_place(staging, out)              # fsync, old OUT aside, staging -> OUT, old deleted

:func:`swap_into_place` fsyncs every file and folder of ``staging`` before the rename and the parent after it,
so after a crash ``OUT`` is the old folder or the complete new one. Replacing an existing ``OUT`` takes two
renames (``OUT -> .OUT.replaced-<pid>-<random>``, then ``staging -> OUT``); a kill between them leaves no
``OUT``, and :func:`clear_leftovers`, which every writer calls before it starts, renames the old one back. It
also deletes what dead writers left beside ``OUT`` (staging folders, a replaced folder whose successor is in
place). Leftovers of a process that is still alive (by pid, on this host) are left alone, and so is anything
named otherwise: only the exact names these functions make (one of :data:`TAGS`, a pid, 8 hex digits) are
hm3's — a user's ``.OUT.backup-2024`` beside ``OUT`` is not.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

NAME_MAX = 255
"""The longest file name, in bytes, that common file systems take (ext4, XFS, APFS, NTFS in UTF-16 units)."""
LONGEST_TAG = len(".replaced-4194304-00000000")
"""The longest suffix a hidden sibling's name carries (a tag, Linux's largest pid, 8 hex digits)."""
TEMPORARY_FILE = re.compile(r"^\..+\.tmp-(\d+)$")
"""The name of a file :func:`replace_file` is writing (``.NAME.tmp-<pid>``); group 1: the writer's pid."""
REPLACED = "replaced"
TAGS = ("partial", "routed", REPLACED)
"""The tags of the hidden siblings hm3 makes: staging folders (:func:`staging_folder`) and a replaced ``OUT``."""


def hidden_stem(name: str) -> str:
    """``.NAME`` — the start of every hidden sibling of ``NAME`` — shortened where a sibling's name would pass
    :data:`NAME_MAX`: NAME's first characters and ``~`` plus 8 hex digits of a hash of the whole name, so that a
    name the file system takes gets siblings it takes too (the same stem each time, for :func:`clear_leftovers`)."""
    room = NAME_MAX - LONGEST_TAG - 1
    if len(name.encode()) <= room:
        return f".{name}"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name.encode()[: room - 9].decode(errors="ignore")  # never half a character
    return f".{head}~{digest}"


def staging_folder(out: Path, tag: str = "partial") -> Path:
    """Create and return an empty hidden folder beside ``out`` named for this process (``tag``: one of
    :data:`TAGS`)."""
    if tag not in TAGS:
        raise ValueError(f"staging tag {tag!r} is not one of {TAGS}: clear_leftovers would not know it")
    out = Path(out)
    while True:
        staging = out.parent / f"{hidden_stem(out.name)}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
            return staging
        except FileExistsError:
            continue


def swap_into_place(staging: Path, out: Path) -> None:
    """Make ``staging`` durable and rename it to ``out``, replacing an existing ``out`` (see the module doc)."""
    staging, out = Path(staging), Path(out)
    fsync_tree(staging)
    aside = None
    if out.exists() or out.is_symlink():
        aside = out.parent / f"{hidden_stem(out.name)}.{REPLACED}-{os.getpid()}-{secrets.token_hex(4)}"
        out.rename(aside)
    try:
        staging.rename(out)
    except BaseException:
        if aside is not None and not out.exists():
            aside.rename(out)
        raise
    fsync_folder(out.parent)
    if aside is not None:
        _remove(aside)


def clear_leftovers(out: Path) -> None:
    """Undo a swap killed half-way (``out`` missing, its old version aside) and delete dead writers' leftovers."""
    out = Path(out)
    parent = out.parent
    if not parent.is_dir():
        return
    tags = "|".join(TAGS)
    pattern = re.compile(rf"^{re.escape(hidden_stem(out.name))}\.({tags})-(\d+)-[0-9a-f]{{8}}$")
    leftovers = []
    for entry in parent.iterdir():
        match = pattern.match(entry.name)
        if match and not process_alive(int(match.group(2))):
            leftovers.append((match.group(1), entry))
    for tag, entry in sorted(leftovers, key=lambda item: item[0] != REPLACED):
        if tag == REPLACED and not out.exists() and not out.is_symlink():
            entry.rename(out)  # the swap was killed between its two renames: the old folder comes back
            fsync_folder(parent)
        else:
            _remove(entry)


def replace_file(target: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write a file whole: ``write(handle)`` fills ``.NAME.tmp-<pid>`` beside ``target``, which is made durable
    and renamed onto it (a link at ``target`` is replaced, never followed); on any failure the temporary is
    removed and ``target`` is as it was."""
    target = Path(target)
    temporary = target.with_name(temporary_name(target.name))
    temporary.unlink(missing_ok=True)  # what a killed earlier write of this process id left
    try:
        with open(temporary, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_folder(target.parent)
    return target


def temporary_name(name: str) -> str:
    """``.NAME.tmp-<pid>``: the name this process writes ``NAME`` under before renaming it (see
    :data:`TEMPORARY_FILE`)."""
    return f"{hidden_stem(name)}.tmp-{os.getpid()}"


def clear_stale_temporaries(folder: Path) -> None:
    """Delete the ``.NAME.tmp-<pid>`` files and folders that dead processes left anywhere under ``folder``."""
    for root, folders, files in os.walk(folder):
        for name in [*files, *folders]:
            match = TEMPORARY_FILE.match(name)
            if match and not process_alive(int(match.group(1))):
                _remove(Path(root) / name)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then every folder (bottom up), so a rename publishes durable data."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        fsync_folder(Path(root))


def fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems do not sync folders
    finally:
        os.close(descriptor)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass
