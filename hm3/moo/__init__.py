"""Multi-objective pieces of the search: preferences, scalarization, a candidate's reward, Pareto fronts,
hypervolume, plots.

All scores here are oriented so that **higher is better** (a lower-is-better metric is negated before it gets
here, see :func:`hm3.moo.scalarization.oriented`).
"""

from hm3.moo.hypervolume import Normalization, hypervolume
from hm3.moo.pareto import dominates, non_dominated_mask
from hm3.moo.preferences import preference_vectors
from hm3.moo.scalarization import scalarize

__all__ = [
    "Normalization",
    "dominates",
    "hypervolume",
    "non_dominated_mask",
    "preference_vectors",
    "scalarize",
]
