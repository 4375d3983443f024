"""Where HM3's budget goes between its two levels: a path search continues while it pays, and what it does not
spend goes back to the optimised upper level.

* **Patience** (``agent.patience``): a preference's path search stops once its last ⌈patience × iterations⌉
  new paths (at least :data:`MIN_PATIENCE`) did not raise its best reward. The merge the search starts from is
  its first candidate, so a path level that never beats its merge stops after the patience window. The window
  counts what was spent, in full scorings: a path screened out (``architecture_level.screen_paths``) counts
  its screen's share, and a screen never raises the best (its reward is on other documents). With the
  optimised upper level, a better path restarts the window only if the upper level's first round does not
  dominate it (:meth:`FrontGain.adds`): one that beats its merge for λ but lies under the round's front adds
  nothing to it, so the window goes on counting (the agent still edits from it) — progress is measured as
  paying is.
* **Never more than a round of merges** (with the optimised upper level): the window is at most the upper level's
  first round (:func:`hm3.search.upper_level.upper_level_budget`, at least :data:`MIN_PATIENCE`). What a
  stalled path search spends is budget the merges do not get, so the floor of exploration is measured in
  their currency: with the toy recipes' 1000 iterations, ⌈0.25 × 1000⌉ = 250 full scorings without progress
  would be ten first rounds (`benchmarks/results/path_payoff.md`: the deep zoo's probe spent 360 full scorings
  against the upper level's 48 merges); the cap makes it 24. At the benchmarks' budgets the window (4-7) is
  below the round (56-112) and nothing changes. The agent's PPO rollout is sized to the window, not to the
  iterations (:func:`hm3.routing.agent.scaled_to_budget`'s ``horizon``): sized to 1000 paths (125 episodes per
  update) a search stopped after 24 would never have updated its policy.
* **Where it pays** (``agent.unpaid_patience``): the run's first preference is the probe, searched with the full
  window. If its paths did not pay (below), the path level has not paid in this run, and every later preference
  gets a window of ``unpaid_patience`` paths (default 1) until its own paths pay — then the full window. The
  probe is one fixed preference, not "the preferences so far", so the decision is the same in a process and on
  Ray (where the probe runs first and the others after it, in parallel).
* **What paying means** (:class:`FrontGain`): with the optimised upper level, a preference's paths pay when the
  hypervolume they add to the upper level's first round (search split, the fine-tuned models' scale) is at
  least what the same spend bought there at the end of that round — the hypervolume its last
  ⌈:data:`RATE_WINDOW` × round⌉ merges added, per merge — since what the paths do not spend buys more of those
  merges. A path that beats its merge for λ but adds less to the front than a merge would have does not pay.
  Without the optimised upper level (``weights: preference``: nothing to compare with), a path pays when it
  beats the merge it routes over.
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hm3.moo.hypervolume import REFERENCE_OFFSET, hypervolume
from hm3.moo.pareto import non_dominated_mask
from hm3.recipe import Recipe
from hm3.search.upper_level import upper_level_budget

MIN_PATIENCE = 3
"""The fewest non-improving paths after which a path search may stop."""
IMPROVEMENT = 1e-9
"""A reward counts as better than the best only by more than this (float noise is not progress)."""


RATE_WINDOW = 0.25
"""The end of the upper level's first round whose hypervolume gain per merge is the bar paths must meet."""


def stall_window(recipe: Recipe, paths: int) -> int | None:
    """Full scorings without progress after which a search of ``paths`` (a preference's paths, or a conditioned
    agent's training) stops: ⌈``agent.patience`` × paths⌉, at least :data:`MIN_PATIENCE`, and with the optimised
    upper level at most its first round (what the stalled search takes from the merges). None: never."""
    fraction = recipe.agent.patience
    if fraction is None:
        return None
    window = max(MIN_PATIENCE, math.ceil(fraction * paths))
    if recipe.parameter_level.optimised:
        window = min(window, max(MIN_PATIENCE, upper_level_budget(recipe)))
    return window


def _hypervolume(points: np.ndarray) -> float:
    return hypervolume(points, np.full(points.shape[1], REFERENCE_OFFSET)) if len(points) else 0.0


@dataclass(frozen=True)
class FrontGain:
    """Whether paths pay for their spend in hypervolume, against the optimised upper level's first round.

    Attributes:
        archive: The first round's non-dominated merges: their search-split scores, oriented and normalised on
            the fine-tuned models' scale (0 = nadir, 1 = ideal).
        base: Their hypervolume (reference point −0.1 on each axis).
        bar: Hypervolume per full scoring that the round's last ⌈:data:`RATE_WINDOW` × round⌉ merges added.
    """

    archive: np.ndarray
    base: float
    bar: float

    @classmethod
    def of_round(cls, points: np.ndarray) -> FrontGain | None:
        """From the first round's merges (normalised points, in the order scored); None without any."""
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or not len(points):
            return None
        last = max(1, math.ceil(RATE_WINDOW * len(points)))
        base = _hypervolume(points)
        bar = max(0.0, base - _hypervolume(points[:-last])) / last
        return cls(points[non_dominated_mask(points)], base, bar)

    def adds(self, point: np.ndarray) -> bool:
        """Whether ``point`` lies outside what the round already dominates (only such a point can add to it)."""
        point = np.asarray(point, dtype=np.float64)
        return not bool(np.any(np.all(self.archive >= point, axis=1)))

    def pays(self, paths: np.ndarray, cost: float) -> bool:
        """Whether ``paths`` (normalised points), which cost ``cost`` full scorings, raised the hypervolume by
        more than nothing and by at least ``bar`` per full scoring."""
        paths = np.asarray(paths, dtype=np.float64)
        if cost <= 0 or not len(paths):
            return False
        gain = _hypervolume(np.vstack([self.archive, paths.reshape(-1, self.archive.shape[1])])) - self.base
        return gain > IMPROVEMENT and gain >= self.bar * cost


def front_gain(
    records: Iterable[Mapping[str, Any]],
    first_round: int,
    normalised: Callable[[Mapping[str, float]], np.ndarray],
    label: str,
) -> FrontGain | None:
    """The :class:`FrontGain` of a run's log: its first ``first_round`` distinct search-split records labelled
    ``label`` (the upper level's), ``normalised(scores)`` each."""
    seen: set[str] = set()
    points = []
    for record in records:
        if record.get("label") != label or record.get("split") != "search" or record["key"] in seen:
            continue
        seen.add(record["key"])
        points.append(normalised(record["scores"]))
        if len(points) == first_round:
            break
    return FrontGain.of_round(np.array(points)) if points else None


@dataclass
class Patience:
    """Tracks a path search's best reward over the candidates charged to it, in order (the first is its start:
    the merge it routes over).

    Attributes:
        window: Non-improving candidates in a row after which it stops (None: never).
        unpaid_window: The window until its paths pay (None: ``window``).
        gain: What paying means (:class:`FrontGain`), and which better paths restart the window (those it
            does not dominate); None: a candidate after the start beats the best before it, and any better
            one restarts the window.
    """

    window: int | None
    unpaid_window: int | None = None
    gain: FrontGain | None = None
    best: float = -math.inf
    since_best: float = 0.0
    """Spent since the last progress (the best raised; with :attr:`gain`, by a path the round does not
    dominate), in full scorings."""
    seen: int = 0
    paid: bool = False
    """Whether the candidates after the start paid (:attr:`gain`)."""
    spent: float = 0.0
    """Spent after the start, in full scorings (screens included)."""
    points: list[np.ndarray] = field(default_factory=list)
    """The normalised scores of the fully scored candidates after the start that the round does not dominate
    (with :attr:`gain`)."""

    @classmethod
    def from_recipe(
        cls, recipe: Recipe, paths: int, path_level_paid: bool = True, gain: FrontGain | None = None
    ) -> Patience:
        """The recipe's patience for a search of ``paths`` new paths (:func:`stall_window`; none: it never stops
        early); ``path_level_paid`` False: the run's probe preference's paths did not pay, so the window is
        ``agent.unpaid_patience`` until this search's own paths pay (``gain``: what paying means)."""
        window = stall_window(recipe, paths)
        if window is None:
            return cls(window=None, gain=gain)
        unpaid = None if path_level_paid else recipe.agent.unpaid_patience
        return cls(window=window, unpaid_window=None if unpaid is None else min(unpaid, window), gain=gain)

    def see(
        self, reward: float, cost: float = 1.0, screen: bool = False, point: np.ndarray | None = None
    ) -> None:
        """Count one more charged candidate with ``reward``, which cost ``cost`` full scorings (``screen``: a
        screen's reward, which never counts as an improvement; ``point``: its normalised scores, for
        :attr:`gain`)."""
        if screen or self.seen:
            self.spent += cost
        if screen:
            self.since_best += cost
            return
        self.seen += 1
        adds = self.gain is not None and self.seen > 1 and point is not None and self.gain.adds(point)
        if adds:
            self.points.append(np.asarray(point, dtype=np.float64))  # the others add nothing: not kept
        better = reward > self.best + IMPROVEMENT
        if better:
            if self.gain is None:
                self.paid = self.paid or self.seen > 1
            self.best = reward
        # with a gain, only a better path the round does not dominate is progress the window waits for
        progress = better and (self.gain is None or self.seen == 1 or adds)
        self.since_best = 0.0 if progress else self.since_best + cost
        if self.gain is not None and not self.paid and self.points:
            self.paid = self.gain.pays(np.array(self.points), self.spent)

    def stalled(self) -> bool:
        """Whether the last ``window`` spent (``unpaid_window`` while nothing paid) raised the best reward by no
        path the round does not dominate (with :attr:`gain`; else by none)."""
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
        """The recipe's ``agent.patience`` over a training of ``paths`` new paths (:func:`stall_window`)."""
        return cls(window=stall_window(recipe, paths))

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
    """Whether a preference's paths paid (its probe verdict): as its search decided (:class:`Patience`'s
    ``paid``, in its record); in a record from before that, whether it holds a path that beat its merge."""
    if "paid" in record:
        return bool(record["paid"])
    merged = [c["reward"] for c in record["candidates"] if c["path"] == record["merged_path"]]
    start = merged[0] if merged else -math.inf
    return any(
        c["reward"] > start + IMPROVEMENT for c in record["candidates"] if c["path"] != record["merged_path"]
    )
