"""NSGA-II (pymoo, ask and tell) over a box, until the caller stops it: the weight search of the optimised upper
level and of the ``nsga2`` baseline."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.evaluator import Evaluator
from pymoo.core.problem import Problem
from pymoo.core.termination import NoTermination
from pymoo.problems.static import StaticProblem


class NSGA2Search:
    """NSGA-II over a box that can be continued: :meth:`run` evaluates generations until told to stop, and a
    later :meth:`run` goes on from there — the same points as one longer run (a generation cut short by an
    exception is finished first)."""

    def __init__(
        self, low: Sequence[float], high: Sequence[float], objectives: int, population: int, seed: int
    ) -> None:
        self.problem = Problem(n_var=len(low), n_obj=objectives, xl=np.asarray(low), xu=np.asarray(high))
        self.algorithm = NSGA2(pop_size=population)
        self.algorithm.setup(self.problem, termination=NoTermination(), seed=seed, verbose=False)
        self._offspring = None
        self._values: list[list[float]] = []

    def run(self, evaluate: Callable[[np.ndarray], Sequence[float]], more: Callable[[], bool]) -> None:
        """Evaluate generations while ``more()`` holds (checked between generations); ``evaluate``: a point ->
        the values to minimise. An exception from ``evaluate`` ends the run mid-generation."""
        self.run_batches(lambda points: [evaluate(x) for x in points], more, lambda: 1)

    def run_batches(
        self,
        evaluate: Callable[[list[np.ndarray]], Sequence[Sequence[float]]],
        more: Callable[[], bool],
        room: Callable[[], int] | None = None,
    ) -> None:
        """:meth:`run`, with ``evaluate`` given several points of a generation at once (all its points not yet
        evaluated, at most ``room()`` of them, at least one): the points asked are the same whatever the batch,
        since a generation's offspring are drawn before any of them is scored."""
        while self._offspring is not None or more():
            if self._offspring is None:
                self._offspring, self._values = self.algorithm.ask(), []
            points = self._offspring.get("X")
            while len(self._values) < len(points):
                done, left = len(self._values), len(points) - len(self._values)
                size = max(1, min(left, room() if room is not None else left))
                answers = evaluate([points[i] for i in range(done, done + size)])
                self._values.extend([float(v) for v in answer] for answer in answers)
            Evaluator().eval(
                StaticProblem(self.problem, F=np.array(self._values, dtype=float)), self._offspring
            )
            self.algorithm.tell(infills=self._offspring)
            self._offspring = None


def nsga2_minimise(
    evaluate: Callable[[np.ndarray], Sequence[float]],
    low: Sequence[float],
    high: Sequence[float],
    objectives: int,
    population: int,
    seed: int,
    more: Callable[[], bool],
) -> None:
    """Run NSGA-II on ``evaluate`` (a point of the box -> the values to minimise) while ``more()`` holds.

    Deterministic for a seed: the same answers give the same points asked, so a resumed search whose answers
    come from its log retraces the interrupted one. ``evaluate`` may raise to end the search early (a budget).
    """
    NSGA2Search(low, high, objectives, population, seed).run(evaluate, more)
