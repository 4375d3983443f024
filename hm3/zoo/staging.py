"""Where a zoo build writes, and the processes that write there: a staging folder locked while any of them lives.

A build trains into ``.<name>.building-<pid>`` beside its zoo (``pid``: the ``hm3 zoo build`` process,
:func:`locked_staging_folder`). That process holds an exclusive ``flock`` on the folder and hands the locked
descriptor to its training child (:mod:`hm3.zoo.child`), so the lock is held while either process lives,
however it ends, and the kernel lets go when both are gone. The next build of the zoo removes a staging folder
only when its pid is gone and nothing holds its lock (:func:`remove_dead_builds`): never one a live process
still writes. The child dies with its parent (:func:`die_with_parent`), so a killed ``hm3 zoo build`` leaves
no training running either.

Example::

    with locked_staging_folder(target) as staging:
        subprocess.run(child_command, pass_fds=(staging.lock,))   # the child shares the lock
        ...                                                        # swap staging.folder into place
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import glob
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hm3.folder_swap import hidden_stem, process_alive

PR_SET_PDEATHSIG = 1
"""``prctl(2)`` option (Linux): the signal the kernel sends this process when the thread that started it ends."""
PARENT_POLL_SECONDS = 0.5
"""How often a child without the kernel's parent-death signal checks that its parent still lives."""


@dataclass(frozen=True)
class Staging:
    """A build's staging folder and the descriptor that holds its lock (hand it to the processes that write)."""

    folder: Path
    lock: int


@contextlib.contextmanager
def locked_staging_folder(target: Path) -> Iterator[Staging]:
    """Create this process's empty, locked staging folder beside the zoo ``target``; at the end remove what
    is left of it (nothing, once it was swapped into place) and let go of the lock."""
    folder = target.parent / f"{hidden_stem(target.name)}.building-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)  # a build of an earlier process of this pid was killed
    folder.mkdir()
    lock = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # a file system without flock: the pid alone keeps it, as before
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield Staging(folder, lock)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)


def remove_dead_builds(target: Path) -> None:
    """Delete the staging folders of the zoo ``target``'s builds whose process is gone (killed before its
    cleanup could run) and that no process still writes (holds the folder's lock)."""
    for folder in target.parent.glob(f"{glob.escape(hidden_stem(target.name))}.building-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            _remove_unless_locked(folder)


def _remove_unless_locked(folder: Path) -> None:
    try:
        lock = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # removed meanwhile, or not a folder
    try:
        if not _locked_elsewhere(lock):
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(lock)


def _locked_elsewhere(lock: int) -> bool:
    """Whether another open descriptor (a live process of that build) holds the flock of ``lock``'s folder."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # a file system without flock: the pid alone decides
    return False


def die_with_parent(parent: int) -> None:
    """End this process (SIGKILL) when its parent, process ``parent``, ends, however it ends: by the kernel's
    parent-death signal on Linux, elsewhere by a thread that watches; at once if ``parent`` is already gone
    (it may have ended while this process started)."""
    if not _parent_death_signal():
        threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()
    if os.getppid() != parent:
        _end_now()


def _parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when its parent ends; False where that cannot be asked."""
    if not sys.platform.startswith("linux"):
        return False
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    _end_now()


def _end_now() -> None:
    """Its parent is gone and nobody waits for what it builds: stop at once (the next build clears up)."""
    os.kill(os.getpid(), signal.SIGKILL)
