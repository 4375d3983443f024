"""A Ctrl-C swallowed where it arrived (a ctypes callback, as numba's compiler makes) still stops the search."""

from __future__ import annotations

import ctypes
import os
import signal
import time

import pytest

from hm3.interrupts import raise_if_interrupted, remembered_interrupts


@pytest.fixture(autouse=True)
def _sigint_as_at_a_terminal():
    """A suite started in the background (``cmd &``) inherits SIGINT ignored; these tests need it delivered."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupt_inside_a_ctypes_callback() -> None:
    """SIGINT arriving while Python runs inside a ctypes callback: ctypes prints and drops the exception."""

    def callback() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler runs here and raises KeyboardInterrupt, which ctypes swallows

    ctypes.CFUNCTYPE(None)(callback)()


def test_an_interrupt_a_ctypes_callback_swallowed_is_raised_at_the_next_check(monkeypatch) -> None:
    reports = []
    monkeypatch.setattr("sys.unraisablehook", reports.append)
    with remembered_interrupts():
        _interrupt_inside_a_ctypes_callback()  # returns: the interrupt was swallowed, and its report not shown
        assert reports == []
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
        raise_if_interrupted()  # raised once, then forgotten


def test_without_an_interrupt_nothing_is_raised_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    with remembered_interrupts():
        raise_if_interrupted()
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt):  # a plain interrupt still raises where it arrives
        with remembered_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    raise_if_interrupted()  # leaving the block forgets it


def test_the_search_checks_before_every_candidate() -> None:
    """Every candidate goes through ``BudgetedEvaluator.score``, which raises a swallowed interrupt first."""
    from hm3.search.budget import BudgetedEvaluator

    evaluator = BudgetedEvaluator(search=None, method="hm3")  # type: ignore[arg-type]  # never reached
    with remembered_interrupts():
        _interrupt_inside_a_ctypes_callback()
        with pytest.raises(KeyboardInterrupt):
            evaluator.score(None, level="merge")  # type: ignore[arg-type]


def test_an_llvm_object_an_interrupt_left_half_closed_is_not_reported_after_it(monkeypatch) -> None:
    """A Ctrl-C inside llvmlite's ``ObjectRef.detach`` (between its two lines) leaves an object whose finaliser
    fails when it is collected, after hm3 printed its one line; that report is not shown, others still are."""
    import gc

    from llvmlite.binding import ffi

    import hm3.interrupts

    monkeypatch.setattr(hm3.interrupts, "_interrupted", False, raising=False)
    reports = []
    monkeypatch.setattr("sys.unraisablehook", reports.append)
    with pytest.raises(KeyboardInterrupt), remembered_interrupts():
        half_closed = ffi.ObjectRef(ctypes.c_void_p(1))
        del half_closed._as_parameter_  # detach() got this far when the interrupt arrived
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)

    class Other:
        def __del__(self) -> None:
            raise RuntimeError("not an interrupt's left-over")

    del half_closed
    other = Other()
    del other
    gc.collect()
    assert [type(r.exc_value).__name__ for r in reports] == ["RuntimeError"]


def test_an_interrupt_a_finaliser_swallowed_while_a_command_starts_stops_it(monkeypatch) -> None:
    """A Ctrl-C landing in a ``__del__`` while a command imports and loads (``regex``'s ``Group.__del__`` in
    lm-eval's start-up) was reported as "Exception ignored" and lost: the handler that remembers it was only
    installed around the search itself, which then ran to its end. ``hm3``'s entry point installs it before the
    subcommand's module is even imported, so the first check raises it."""
    import types

    import cli.main

    reports = []
    monkeypatch.setattr("sys.unraisablehook", reports.append)

    class Finalised:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs here; Python cannot raise out of a finaliser

    def run(args) -> int:
        Finalised()  # collected at once: the interrupt lands in its finaliser and is swallowed there
        raise_if_interrupted()  # what the search does before each candidate
        return 0

    real_import = cli.main.importlib.import_module
    module = types.SimpleNamespace(run=run, add_arguments=real_import("cli.validate").add_arguments)
    monkeypatch.setattr(
        cli.main.importlib,
        "import_module",
        lambda name: module if name == "cli.validate" else real_import(name),
    )
    assert cli.main.main(["validate", "whatever.yaml"]) == 130
    assert not [r for r in reports if isinstance(r.exc_value, KeyboardInterrupt)]
