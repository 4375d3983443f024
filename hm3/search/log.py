"""The run's candidate log: every scored candidate, one line of ``candidates.jsonl``, and the score cache.

A record (one JSON line, flushed and fsynced before the search goes on)::

    {"key": "9c1e...",                 # Candidate.key(split, objectives, scoring)
     "split": "search",                # which documents were scored (search or heldout)
     "level": "path",                  # finetuned | reference | merge | path (see hm3.search.candidate)
     "method": "hm3",                  # who asked for it first
     "preference": [0.5, 0.3, 0.2],    # λ it was scored for (null: none)
     "preference_index": 3,
     "merge": {...},                   # the candidate (Candidate.data()): the merge spec (null: the base),
     "path": [[0, 0], [3, 1]],         #   the inference path (null: the merge itself),
     "alignment": "none",              #   the alignment; or {"finetuned": "addition"} for a fine-tuned model
     "label": null,                    # fine-tuned models and references: "addition", "uniform ties", ...
     "scores": {"addition": 0.61, ...},
     "documents": 294,                 # documents the scores cover
     "seconds": 0.52}

The log is also the cache every evaluation asks first (:class:`hm3.search.budget.BudgetedEvaluator`): a resumed
or repeated run never scores a candidate whose line is already there, and the front is taken from it
(:mod:`hm3.search.finish`). Writing and the torn-tail repair are the run store's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hm3.errors import UserError
from hm3.search.candidate import LEVELS
from hm3.store import RunStore


def record_problem(record: Any) -> str | None:
    """Why a line of ``candidates.jsonl`` is not a usable record (an edit, a foreign file), or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a record object"
    if not isinstance(record.get("key"), str) or not record["key"]:
        return "no 'key' string"
    if record.get("level") not in LEVELS:
        return f"'level' is not one of {', '.join(LEVELS)}"
    path = record.get("path")
    if path is not None and not (
        isinstance(path, list)
        and all(isinstance(s, list) and len(s) == 2 and all(type(i) is int for i in s) for s in path)
    ):
        return "'path' is not null or a list of [model, layer] pairs"
    scores = record.get("scores")
    if not isinstance(scores, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values()
    ):
        return "'scores' is not a mapping of objective names to numbers"
    return None


class CandidateLog:
    """``key -> scores`` over a run's ``candidates.jsonl``, appending a record for every new score."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._scores: dict[str, dict[str, float]] = {}
        self._documents: dict[str, int] = {}
        self.records: list[dict[str, Any]] = []
        for number, record in enumerate(store.candidates(), start=1):
            problem = record_problem(record)
            if problem:
                raise UserError(
                    f"{store.candidates_path}, record {number}: {problem}; delete that line to score its "
                    "candidate again"
                )
            self._scores[record["key"]] = dict(record["scores"])
            if isinstance(record.get("documents"), int):
                self._documents[record["key"]] = record["documents"]
            self.records.append(record)
        self.loaded = len(self.records)
        self.new = 0

    def get(self, key: str) -> dict[str, float] | None:
        """The scores logged under ``key``, or None."""
        known = self._scores.get(key)
        return None if known is None else dict(known)

    def documents(self, key: str, default: int) -> int:
        """The documents the scores under ``key`` cover (``default`` for a record without the field)."""
        return int(self._documents.get(key, default))

    def record(self, key: str, scores: Mapping[str, float], **fields: Any) -> dict[str, Any]:
        """Append one scored candidate to ``candidates.jsonl`` (durable on return)."""
        entry = {"key": key, **fields, "scores": {k: float(v) for k, v in scores.items()}}
        self.store.append_candidate(entry)
        self._scores[key] = dict(entry["scores"])
        if isinstance(entry.get("documents"), int):
            self._documents[key] = entry["documents"]
        self.records.append(entry)
        self.new += 1
        return entry
