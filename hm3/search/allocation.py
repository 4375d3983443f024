"""Where HM3's budget goes between its two levels: a path search continues while it pays, and what it does not
spend goes back to the optimised upper level.

* **Patience** (``agent.patience``): a preference's path search stops once its last ⌈patience × iterations⌉
  new paths (at least :data:`MIN_PATIENCE`) did not raise its best reward. The merge the search starts from is
  its first candidate, so a path level that never beats its merge stops after the patience window.
* **Giving back** (:func:`hm3.search.run.budget_allocation`): with ``parameter_level.weights: optimised``, the budget the preferences
  left unspent is given to a second round of the upper level, which continues the same optimiser (its first
  round is replayed from the log, scoring nothing twice) with that many more merges.

Both decisions are functions of the candidates charged, in order — answered from the log or scored — so a
resumed run makes exactly the decisions of an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hm3.recipe import Recipe

MIN_PATIENCE = 3
"""The fewest non-improving paths after which a path search may stop."""
IMPROVEMENT = 1e-9
"""A reward counts as better than the best only by more than this (float noise is not progress)."""


@dataclass
class Patience:
    """Tracks a path search's best reward over the candidates charged to it, in order."""

    window: int | None
    best: float = -math.inf
    since_best: int = 0
    seen: int = 0

    @classmethod
    def from_recipe(cls, recipe: Recipe, paths: int) -> Patience:
        """The recipe's patience for a search of ``paths`` new paths (no window: it never stops early)."""
        fraction = recipe.agent.patience
        if fraction is None:
            return cls(window=None)
        return cls(window=max(MIN_PATIENCE, math.ceil(fraction * paths)))

    def see(self, reward: float) -> None:
        """Count one more charged candidate with ``reward``."""
        self.seen += 1
        if reward > self.best + IMPROVEMENT:
            self.best, self.since_best = reward, 0
        else:
            self.since_best += 1

    def stalled(self) -> bool:
        """Whether the last ``window`` candidates did not improve the best."""
        return self.window is not None and self.since_best >= self.window
