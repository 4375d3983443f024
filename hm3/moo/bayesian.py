"""Gaussian-process Bayesian optimisation over a box (Optuna's ``GPSampler``, ask and tell), until the caller
stops it: the sample-efficient optimiser of the optimised upper level (``parameter_level.optimiser: gp``).

Optuna's sampler fits one GP per objective and, once its ``startup`` random points are scored, asks the point
of best expected hypervolume improvement (log-EHVI) — a few dozen scored merges go much further than an
evolutionary population's generations. With a ``batch`` of q, it asks q points before any of them is scored:
each later ask sees the earlier ones as running trials, and Optuna answers with its q-batch acquisition (qLogEHVI,
greedy over the batch), so q merges can be scored at once (on Ray workers); the points asked depend on q, never
on who scores them. Optuna's own storage is kept in memory: the run's candidate log is the
state that survives a kill (a resumed search asks the same points again and the log answers them).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import optuna
import torch

STARTUP_TRIALS = 10
"""Random (seeded) points before the GP takes over: Optuna's default."""
FITTING_THREADS = 1
"""torch threads while the sampler fits its GPs and maximises the acquisition: fixed, so that a resumed search
asks the same points on any machine (float sums split over threads round differently)."""


@contextmanager
def _fitting_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(FITTING_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class GPSearch:
    """A multi-objective GP search over a box that can be continued: :meth:`run` asks points until told to
    stop, and a later :meth:`run` goes on from there — the same points as one longer run.

    Deterministic for a seed and a fixed thread count: the same answers give the same points asked, so a
    resumed search whose answers come from its log retraces the interrupted one.
    """

    def __init__(
        self,
        low: Sequence[float],
        high: Sequence[float],
        objectives: int,
        seed: int,
        first: Sequence[Sequence[float]] = (),
        batch: int = 1,
    ) -> None:
        """``first``: points asked before the sampler's own (e.g. known-good merges); ``batch``: points asked
        together, before any of them is scored."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.batch = batch
        optuna.logging.set_verbosity(logging.ERROR)  # "greenlet is unavailable": sequential L-BFGS-B is fine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.GPSampler(
                seed=seed, n_startup_trials=STARTUP_TRIALS, deterministic_objective=True
            )
        self.study = optuna.create_study(directions=["maximize"] * objectives, sampler=sampler)
        self.names = [f"x{i}" for i in range(len(low))]
        for point in first:
            self.study.enqueue_trial(dict(zip(self.names, (float(v) for v in point), strict=True)))
        self.distributions = {
            name: optuna.distributions.FloatDistribution(float(lo), float(hi))
            for name, lo, hi in zip(self.names, low, high, strict=True)
        }

    def run(self, evaluate: Callable[[np.ndarray], Sequence[float]], more: Callable[[], bool]) -> None:
        """Ask points while ``more()`` holds; ``evaluate`` gives the values to maximise. An exception from
        ``evaluate`` ends the search (that point, and the rest of its batch, count as failed)."""
        self.run_batches(lambda points: [evaluate(x) for x in points], more)

    def run_batches(
        self,
        evaluate: Callable[[list[np.ndarray]], Sequence[Sequence[float]]],
        more: Callable[[], bool],
        room: Callable[[], int] | None = None,
    ) -> None:
        """Ask batches while ``more()`` holds: ``batch`` points (fewer where ``room()``, the points still
        wanted, is smaller; at least one), then ``evaluate`` gives the values to maximise of all of them, in
        order. An exception from ``evaluate`` ends the search (the batch counts as failed)."""
        while more():
            size = max(1, min(self.batch, room() if room is not None else self.batch))
            with _fitting_threads():
                trials = [self.study.ask(self.distributions) for _ in range(size)]
            points = [np.array([t.params[name] for name in self.names], dtype=float) for t in trials]
            try:
                values = [[float(v) for v in answer] for answer in evaluate(points)]
            except BaseException:
                for trial in trials:
                    self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            for trial, answer in zip(trials, values, strict=True):
                self.study.tell(trial, answer)


def gp_maximise(
    evaluate: Callable[[np.ndarray], Sequence[float]],
    low: Sequence[float],
    high: Sequence[float],
    objectives: int,
    seed: int,
    more: Callable[[], bool],
    first: Sequence[Sequence[float]] = (),
) -> None:
    """One :class:`GPSearch` run: ask points of the box while ``more()`` holds (``evaluate``: the values to
    maximise; it may raise to end the search, e.g. a budget)."""
    GPSearch(low, high, objectives, seed, first).run(evaluate, more)
