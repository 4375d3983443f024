"""The one way any method scores a candidate: answered from the run's log, else scored, logged and charged.

Every method — HM3's two levels, its ablations, the baselines — and the end of a run spend through a
:class:`BudgetedEvaluator`::

    evaluations = BudgetedEvaluator(search, method="grid", budget=112)
    scores = evaluations.score(Candidate.of_merge(spec), level="merge")     # BudgetSpent past the budget

* **The log first.** A candidate whose key is in ``candidates.jsonl`` is answered from it (a resumed run
  replays its method deterministically and scores nothing twice).
* **The budget** counts the documents a method has scored on the search split at the levels it searches
  (``merge``, ``path``), in units of one full scoring of the search split: a candidate scored on the whole
  split costs 1, one screened on the ``screen`` part of it (:mod:`hm3.evaluate.split`) that part's share of the
  documents. Each distinct (candidate, split) is charged once, whether scored now or answered from the log, so
  that a resumed run spends exactly what an uninterrupted one does. A new candidate that would pass the budget
  raises :class:`BudgetSpent` before anything is built. The fine-tuned models and the references
  (``finetuned``, ``reference``) and every held-out score are scored for every method alike and never charged.
* **Shared, not charged twice.** Preferences whose path searches start from the same merge search one routing
  pool: a candidate an earlier one of them charged (its ``prepaid`` keys, :func:`shared_keys`) is answered from
  the log at no cost to a later one — the budget counts documents scored, and those were scored once. So is
  one the conditioned agent's training charged to the preferences its rollouts serve
  (:func:`hm3.search.preference.training_keys`).
* **The ledger** counts, per level, the candidates charged, the documents their scores cover (partial scoring
  on a subset is counted by its documents), and how many of them were scored in this session; the summary
  reports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hm3.errors import BudgetSpent
from hm3.interrupts import raise_if_interrupted
from hm3.search.candidate import LEVELS, SEARCHED_LEVELS, Candidate

if TYPE_CHECKING:
    from hm3.search.session import Search

__all__ = [
    "CHARGED_SPLITS",
    "BudgetSpent",
    "BudgetedEvaluator",
    "Ledger",
    "LedgerLine",
    "ScoreNew",
    "charged_documents",
    "charged_keys",
    "shared_keys",
]


ScoreNew = Callable[[list[Candidate]], Iterator[tuple[Mapping[str, float], float]]]
"""Scores new candidates together elsewhere (a Ray worker pool), yielding (scores, seconds) of each in order."""

CHARGED_SPLITS = ("search", "screen")
"""The splits whose scorings at the searched levels are charged."""


@dataclass
class LedgerLine:
    """What one level spent: distinct candidates, the documents their scores cover, and the new ones."""

    candidates: int = 0
    documents: int = 0
    scored_now: int = 0
    shared: int = 0
    """Candidates another preference's search of the same merge had charged: answered free, not counted above."""

    def to_json(self) -> dict[str, int]:
        return {
            "candidates": self.candidates,
            "documents": self.documents,
            "scored_now": self.scored_now,
            "shared": self.shared,
        }


@dataclass
class Ledger:
    """Candidates and documents per level (``finetuned``, ``reference``, ``merge``, ``path``, ``heldout``)."""

    lines: dict[str, LedgerLine] = field(default_factory=dict)

    def add(self, level: str, documents: int, new: bool, shared: bool = False) -> None:
        line = self.lines.setdefault(level, LedgerLine())
        if shared:
            line.shared += 1
            return
        line.candidates += 1
        line.documents += documents
        line.scored_now += int(new)

    def to_json(self) -> dict[str, dict[str, int]]:
        return {level: line.to_json() for level, line in sorted(self.lines.items())}

    @staticmethod
    def combine(ledgers: Sequence[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
        """The sum of several ledgers' JSON (one per preference)."""
        total: dict[str, dict[str, int]] = {}
        for ledger in ledgers:
            for level, counts in ledger.items():
                line = total.setdefault(
                    level, {"candidates": 0, "documents": 0, "scored_now": 0, "shared": 0}
                )
                for name in line:
                    line[name] += int(counts.get(name, 0))
        return dict(sorted(total.items()))


@dataclass
class BudgetedEvaluator:
    """Scores candidates for one method (or one preference of it) within a budget, through the run's log.

    Attributes:
        search: The open search (models, evaluator, log).
        method: Who spends (``hm3``, ``grid``, ...), recorded with every new candidate.
        budget: Full scorings of the search split this evaluator may charge at the searched levels (a screen
            costs its share); None: unlimited (the end of a run).
        preference: λ the candidates are scored for (recorded), or None.
        preference_index: Its index in the run (recorded), or None.
        on_new: Called with ``(candidate, scores, split)`` after each candidate scored in this session.
        on_charge: Called with ``(candidate, scores, split, cost)`` the first time a candidate is charged on a
            split (``search`` or ``screen``), scored now or answered from the log (a resumed run sees the same
            calls as an uninterrupted one); ``cost`` is what it was charged, in full scorings (0 when prepaid).
        prepaid: Keys of candidates another preference of the run charged already (:func:`shared_keys`):
            answered from the log and charged nothing.
    """

    search: Search
    method: str
    budget: int | None = None
    preference: Sequence[float] | None = None
    preference_index: int | None = None
    on_new: Callable[[Candidate, dict[str, float], str], None] | None = None
    on_charge: Callable[[Candidate, dict[str, float], str, float], None] | None = None
    prepaid: frozenset[str] = frozenset()
    ledger: Ledger = field(default_factory=Ledger)
    charged: dict[str, dict[str, float]] = field(default_factory=dict)
    charged_documents: int = 0
    _counted: set[tuple[str, str]] = field(default_factory=set)

    @property
    def used(self) -> float:
        """Full search-split scorings charged so far (documents charged / documents of one full scoring); a
        whole number as an ``int``."""
        value = self.charged_documents / self.search.documents("search")
        return int(value) if value.is_integer() else value

    @property
    def left(self) -> float | None:
        return None if self.budget is None else self.budget - self.used

    def cost(self, split: str) -> float:
        """What one candidate scored on ``split`` is charged: its share of a full scoring of the search split."""
        return self.search.documents(split) / self.search.documents("search")

    def affordable(self, split: str = "search") -> bool:
        """Whether one more new candidate scored on ``split`` fits the budget."""
        if self.budget is None:
            return True
        full = self.search.documents("search")
        return self.charged_documents + self.search.documents(split) <= self.budget * full

    def score(
        self,
        candidate: Candidate,
        *,
        level: str,
        split: str = "search",
        build: Callable[[], Any] | None = None,
        label: str | None = None,
        scored: tuple[Mapping[str, float], float] | None = None,
    ) -> dict[str, float]:
        """The scores of ``candidate`` on ``split``: from the log, or built (``build()``, default: from the
        search's models), scored, appended to the log and counted.

        Args:
            candidate: What to score.
            level: ``finetuned``, ``reference``, ``merge`` or ``path`` (the last two are charged on the search
                split).
            split: ``search``, ``screen`` (a part of it: successive halving) or ``heldout``.
            build: Makes the candidate's model (a path scorer's, with its alignment); None: the search's
                :meth:`~hm3.search.models.CandidateModels.build`.
            label: A name for the record (fine-tuned models and references).
            scored: The candidate's scores on ``split`` and the seconds they took, computed elsewhere (a Ray
                worker: :meth:`score_many`); used, logged and charged as if scored here.

        Raises:
            BudgetSpent: a new charged candidate that the budget cannot pay for.
        """
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}")
        raise_if_interrupted()  # a Ctrl-C a compiler's callback swallowed stops the search here
        search = self.search
        key = candidate.key(split, search.objectives, search.scoring)
        charged = split in CHARGED_SPLITS and level in SEARCHED_LEVELS
        if charged and key in self.charged:
            return dict(self.charged[key])
        prepaid = charged and key in self.prepaid
        if charged and not prepaid and not self.affordable(split):
            raise BudgetSpent(f"{self.method}: budget of {self.budget} candidates spent")
        known = search.log.get(key)
        new = known is None
        if new:
            start = time.perf_counter()
            if scored is None:
                model = build() if build is not None else search.models.build(candidate)
                scores = {
                    name: float(value) for name, value in search.evaluator.score(model, split=split).items()
                }
                seconds = time.perf_counter() - start
            else:
                scores, seconds = {name: float(value) for name, value in scored[0].items()}, scored[1]
            documents = search.documents(split)
            search.log.record(
                key,
                scores,
                split=split,
                level=level,
                method=self.method,
                preference=None if self.preference is None else [float(v) for v in self.preference],
                preference_index=self.preference_index,
                label=label,
                documents=documents,
                seconds=round(seconds, 4),
                **candidate.data(),
            )
        else:
            scores = known
            documents = search.log.documents(key, search.documents(split))
        if charged:
            self.charged[key] = dict(scores)
            self.charged_documents += 0 if prepaid else search.documents(split)
            if self.on_charge is not None:
                self.on_charge(candidate, dict(scores), split, 0.0 if prepaid else self.cost(split))
        if (key, level) not in self._counted:
            self._counted.add((key, level))
            self.ledger.add(level if split == "search" else split, documents, new, shared=prepaid)
        if new and self.on_new is not None:
            self.on_new(candidate, scores, split)
        return dict(scores)

    def score_many(
        self,
        candidates: Sequence[Candidate],
        *,
        level: str,
        label: str | None = None,
        score_new: ScoreNew | None = None,
    ) -> list[dict[str, float]]:
        """The search-split scores of several candidates, exactly as :meth:`score` one after the other gives
        them (logged, charged and refused past the budget in order). ``score_new``: scores the candidates
        that need scoring (not in the log, not charged, within the budget; each once) together — a Ray
        worker pool — and yields (scores, seconds) for each, in order; each is logged as it arrives."""
        fresh = self._unscored(candidates) if score_new is not None else []
        arriving = score_new([c for _, c in fresh]) if len(fresh) > 1 and score_new is not None else None
        waiting = {key for key, _ in fresh} if arriving is not None else set()
        results = []
        for candidate in candidates:
            key = candidate.key("search", self.search.objectives, self.search.scoring)
            scored = None
            if key in waiting:  # the next to arrive: they come in order
                waiting.discard(key)
                scored = next(arriving)  # type: ignore[arg-type]
            results.append(self.score(candidate, level=level, label=label, scored=scored))
        return results

    def _unscored(self, candidates: Sequence[Candidate]) -> list[tuple[str, Candidate]]:
        """The candidates :meth:`score` would score on the search split now, each once, in order, as many as
        the budget pays for."""
        full, split = self.search.documents("search"), "search"
        room = None if self.budget is None else self.budget * full - self.charged_documents
        out: dict[str, Candidate] = {}
        for candidate in candidates:
            key = candidate.key(split, self.search.objectives, self.search.scoring)
            if key in out or key in self.charged or self.search.log.get(key) is not None:
                continue
            if room is not None:
                if room < full:
                    break
                room -= full
            out[key] = candidate
        return list(out.items())


def shared_keys(records: Iterable[Mapping[str, Any]], earlier: Iterable[int]) -> frozenset[str]:
    """The keys of the candidates that the preferences ``earlier`` (searches of the same merge, finished before
    this one) charged at the searched levels: a later search of that merge gets them free
    (:attr:`BudgetedEvaluator.prepaid`)."""
    indexes = set(earlier)
    return charged_keys(records, lambda r: r.get("preference_index") in indexes)


def charged_keys(
    records: Iterable[Mapping[str, Any]], charged_by: Callable[[Mapping[str, Any]], bool]
) -> frozenset[str]:
    """The keys of the log ``records`` that ``charged_by`` picks and that were charged: scored on a charged
    split at a searched level (what a later search answers free, :attr:`BudgetedEvaluator.prepaid`)."""
    return frozenset(
        r["key"]
        for r in records
        if charged_by(r) and r.get("split") in CHARGED_SPLITS and r.get("level") in SEARCHED_LEVELS
    )


def charged_documents(ledger: Mapping[str, Mapping[str, int]]) -> int:
    """The documents a ledger's JSON (:meth:`Ledger.to_json`) charged at the searched levels, screens included
    (what it answered free, ``shared``, is not charged): divided by one full scoring's documents, what its
    evaluator's :attr:`~BudgetedEvaluator.used` was."""
    return sum(int(ledger.get(level, {}).get("documents", 0)) for level in (*SEARCHED_LEVELS, "screen"))
