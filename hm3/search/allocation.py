"""Where HM3's budget goes between its two levels: a path search continues while it pays, and what it does not
spend goes back to the optimised upper level.

* **Patience** (``agent.patience``): a preference's path search stops once its last ⌈patience × iterations⌉
  new paths (at least :data:`MIN_PATIENCE`) did not raise its best reward. The merge the search starts from is
  its first candidate, so a path level that never beats its merge stops after the patience window. The window
  counts what was spent, in full scorings: a path screened out (``architecture_level.screen_paths``) counts
  its screen's share, and a screen never raises the best (its reward is on other documents).
* **Where it pays** (``agent.unpaid_patience``): the run's first preference is the probe, searched with the full
  window. If no path beat its merge there, the path level has not paid in this run, and every later preference
  gets a window of ``unpaid_patience`` paths (default 1) until one of its own paths beats its merge — then the
  full window. The probe is one fixed preference, not "the preferences so far", so the decision is the same
  in a process and on Ray (where the probe runs first and the others after it, in parallel).
* **The conditioned agent's training** (``agent.mode: conditioned``) has the same patience over its own budget
  (:class:`TrainingPatience`): it stops once its last ⌈patience × iterations⌉ spent raised no episode's best —
  the best path for that episode's λ over that λ's merge.
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
    """Tracks a path search's best reward over the candidates charged to it, in order (the first is its start:
    the merge it routes over).

    Attributes:
        window: Non-improving candidates in a row after which it stops (None: never).
        unpaid_window: The window until a candidate after the start improves on it (None: ``window``).
    """

    window: int | None
    unpaid_window: int | None = None
    best: float = -math.inf
    since_best: float = 0.0
    """Spent since the best was raised, in full scorings."""
    seen: int = 0
    paid: bool = False
    """Whether a candidate after the start beat the best before it."""

    @classmethod
    def from_recipe(cls, recipe: Recipe, paths: int, path_level_paid: bool = True) -> Patience:
        """The recipe's patience for a search of ``paths`` new paths (no window: it never stops early);
        ``path_level_paid`` False: the run's probe preference found no path better than its merge, so the
        window is ``agent.unpaid_patience`` until this search's own paths pay."""
        fraction = recipe.agent.patience
        if fraction is None:
            return cls(window=None)
        window = max(MIN_PATIENCE, math.ceil(fraction * paths))
        unpaid = None if path_level_paid else recipe.agent.unpaid_patience
        return cls(window=window, unpaid_window=None if unpaid is None else min(unpaid, window))

    def see(self, reward: float, cost: float = 1.0, screen: bool = False) -> None:
        """Count one more charged candidate with ``reward``, which cost ``cost`` full scorings (``screen``: a
        screen's reward, which never counts as an improvement)."""
        if screen:
            self.since_best += cost
            return
        self.seen += 1
        if reward > self.best + IMPROVEMENT:
            self.paid = self.paid or self.seen > 1
            self.best, self.since_best = reward, 0.0
        else:
            self.since_best += cost

    def stalled(self) -> bool:
        """Whether the last ``window`` candidates (``unpaid_window`` while nothing paid) did not improve the best."""
        if self.window is None:
            return False
        limit = self.window if self.paid or self.unpaid_window is None else self.unpaid_window
        return self.since_best >= limit - IMPROVEMENT


@dataclass
class TrainingPatience:
    """Tracks whether a conditioned agent's training still pays: each episode either raised the best reward for
    its λ over its merge or not; the training stops once the last ``window`` spent (in full scorings) raised
    none (None: never).
    """

    window: int | None
    since_raised: float = 0.0
    raised: int = 0

    @classmethod
    def from_recipe(cls, recipe: Recipe, paths: int) -> TrainingPatience:
        """The recipe's ``agent.patience`` over a training of ``paths`` new paths."""
        fraction = recipe.agent.patience
        return cls(window=None if fraction is None else max(MIN_PATIENCE, math.ceil(fraction * paths)))

    def see(self, raised: bool, cost: float) -> None:
        """Count one episode that cost ``cost`` full scorings and did or did not raise its λ's best."""
        if raised:
            self.raised += 1
            self.since_raised = 0.0
        else:
            self.since_raised += cost

    def stalled(self) -> bool:
        """Whether the last ``window`` spent raised no episode's best."""
        return self.window is not None and self.since_raised >= self.window - IMPROVEMENT


def path_level_paid(record: dict) -> bool:
    """Whether a preference's record holds a path that beat the merge it routed over (its probe verdict)."""
    merged = [c["reward"] for c in record["candidates"] if c["path"] == record["merged_path"]]
    start = merged[0] if merged else -math.inf
    return any(
        c["reward"] > start + IMPROVEMENT for c in record["candidates"] if c["path"] != record["merged_path"]
    )
