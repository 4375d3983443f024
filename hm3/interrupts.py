"""Ctrl-C that is never lost: an interrupt swallowed where it arrived is raised again before the next candidate.

``hm3``'s entry point (``cli.main``) runs every command inside :func:`remembered_interrupts`, from before the
subcommand's module is imported: a Ctrl-C that a finaliser swallows while a command starts (``regex``'s
``Group.__del__`` under lm-eval's start-up) is remembered too, and stops the search at its first candidate.

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT arrives. Inside a ctypes callback
it cannot propagate: ctypes prints "Exception ignored on calling ctypes callback function" and carries on — and
numba's compiler (llvmlite) calls back into Python while it compiles the merge kernels at a search's first
merge. A Ctrl-C in those seconds was dropped and the search ran to its end (seen in the test suite, on a CPU
whose compile the interrupt happened to hit). :func:`remembered_interrupts` installs a SIGINT handler that
remembers the interrupt as well as raising it, and :func:`raise_if_interrupted`, called before every candidate
is scored, raises it again if it was swallowed; the traceback ctypes would print for the swallowed one (through
``sys.unraisablehook``) is not shown, since the interrupt is not lost.

An interrupt that lands in llvmlite's own Python code can leave an LLVM object half closed (``ObjectRef.detach``
cut between its two lines): its finaliser then fails when Python collects it — at exit, after hm3's one line —
with ``AttributeError: 'ModuleRef' object has no attribute '_as_parameter_'``. Once an interrupt has arrived,
those reports of llvmlite's finalisers are not shown either, for the rest of the process (seen once in the test
suite, on a loaded machine).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_pending = False
_interrupted = False
"""An interrupt arrived in this process (never reset: the process is on its way out)."""


def _remember_and_raise(signum: int, frame: FrameType | None) -> None:
    global _pending, _interrupted
    _pending = _interrupted = True
    raise KeyboardInterrupt


def _quiet(report: Callable[[Any], object]) -> Callable[[Any], None]:
    """``report`` (an unraisable hook) without what an interrupt leaves behind: ctypes' report of the interrupt
    it swallowed, and llvmlite's finalisers failing on objects the interrupt left half closed."""

    def hook(unraisable: Any) -> None:
        swallowed = _pending and isinstance(unraisable.exc_value, KeyboardInterrupt)
        left_over = _interrupted and str(getattr(unraisable.object, "__module__", "")).startswith("llvmlite.")
        if not (swallowed or left_over):
            report(unraisable)

    return hook


@contextmanager
def remembered_interrupts() -> Iterator[None]:
    """Run the block with the remembering SIGINT handler (main thread only; an ignored SIGINT stays ignored,
    as for a process started in the background); the previous handler is restored after."""
    global _pending
    previous = signal.getsignal(signal.SIGINT)
    install = threading.current_thread() is threading.main_thread() and previous is not signal.SIG_IGN
    report = sys.unraisablehook
    if install:
        signal.signal(signal.SIGINT, _remember_and_raise)
        sys.unraisablehook = _quiet(report)
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGINT, previous)
            sys.unraisablehook = _quiet(report) if _interrupted else report  # left-overs are collected later
            _pending = False


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if an interrupt arrived and was swallowed before it could stop the work."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


@contextmanager
def interrupts_ignored() -> Iterator[None]:
    """Run the block to its end through Ctrl-C (main thread only; an ignored SIGINT stays ignored): a SIGINT
    that arrives inside it is dropped, as the work it would have stopped is done by the time the block ends.
    The previous handler is restored after."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
        yield
        return

    def drop(signum: int, frame: FrameType | None) -> None:
        pass

    signal.signal(signal.SIGINT, drop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
