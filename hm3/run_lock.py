"""One process at a time in a run folder: an exclusive ``flock`` on ``RUN/.hm3.lock``.

::

    with RunLock(run_dir):      # UserError at once if another process holds it
        ...                     # search, append candidates, write the front

The lock is the kernel's (``fcntl.flock``), so it ends with its process however that process ends: a lock
file left by a killed run holds no lock, and the next process takes it over (it only reads the dead holder's
line for its message). The file holds the holder's pid, host, command and start time, which a refused
process names. Within one process the lock is re-entrant (a resumed store opened while the first is still
referenced shares it). The file is removed when the last holder lets go; an acquirer that locked a file
removed meanwhile notices (the path no longer names the file it holds) and tries again.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hm3.errors import UserError

LOCK_FILE = ".hm3.lock"


@dataclass
class _Held:
    descriptor: int
    count: int


_HELD: dict[tuple[int, int], _Held] = {}
"""This process's locks: (device, inode) of the lock file -> its descriptor and how many holders share it."""


class RunLock:
    """An exclusive, per-process lock on one run folder.

    Args:
        folder: The run folder (it must exist). If the folder is renamed while locked, set :attr:`folder` to
            its new path so that :meth:`release` removes the right file.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._identity: tuple[int, int] | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    @property
    def held(self) -> bool:
        return self._identity is not None

    def acquire(self) -> RunLock:
        """Take the lock (a dead process's stale lock file included); returns ``self``.

        Raises:
            UserError: another live process holds it (its pid and command are named).
        """
        if self._identity is not None:
            return self
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            status = os.fstat(descriptor)
            identity = (status.st_dev, status.st_ino)
            shared = _HELD.get(identity)
            if shared is not None:
                os.close(descriptor)
                shared.count += 1
                self._identity = identity
                return self
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(os.pread(descriptor, 4096, 0))
                os.close(descriptor)
                raise UserError(
                    f"run {self.folder} is in use by {holder}; wait for it to end (or stop it), then retry"
                ) from None
            if _identity_of(self.path) != identity:  # its last holder removed it before we locked it
                os.close(descriptor)
                continue
            _write_holder(descriptor)
            _HELD[identity] = _Held(descriptor, 1)
            self._identity = identity
            return self

    def release(self) -> None:
        """Let go; the last holder in this process removes the file and unlocks it. Safe to call twice."""
        identity, self._identity = self._identity, None
        if identity is None:
            return
        shared = _HELD.get(identity)
        if shared is None:
            return
        shared.count -= 1
        if shared.count > 0:
            return
        del _HELD[identity]
        if _identity_of(self.path) == identity:
            try:
                self.path.unlink()
            except OSError:
                pass
        os.close(shared.descriptor)  # closing the last descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _identity_of(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_dev, status.st_ino)


def _write_holder(descriptor: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(["hm3", *sys.argv[1:]]) if sys.argv else "hm3",
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    data = (json.dumps(holder) + "\n").encode()
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, data, 0)
    os.fsync(descriptor)


def _describe(data: bytes) -> str:
    try:
        holder = json.loads(data)
        return f"process {holder['pid']} on {holder['host']} ({holder['command']}, since {holder['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
