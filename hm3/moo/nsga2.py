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
    problem = Problem(n_var=len(low), n_obj=objectives, xl=np.asarray(low), xu=np.asarray(high))
    algorithm = NSGA2(pop_size=population)
    algorithm.setup(problem, termination=NoTermination(), seed=seed, verbose=False)
    while more():
        offspring = algorithm.ask()
        values = [list(evaluate(x)) for x in offspring.get("X")]
        Evaluator().eval(StaticProblem(problem, F=np.array(values, dtype=float)), offspring)
        algorithm.tell(infills=offspring)
