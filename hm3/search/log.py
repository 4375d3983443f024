"""The run's candidate log: every scored candidate, one line of ``candidates.jsonl``, and the score cache.

A record (one JSON line, flushed and fsynced before the search goes on)::

    {"key": "9c1e...",                 # candidate_key of the specification below
     "split": "search",                # which documents were scored (search or heldout)
     "kind": "path",                   # path | finetuned | reference
     "preference": 3,                  # index of the preference vector, null for references
     "merge": {...},                   # the parameter-level merge spec (null: no merged layer)
     "path": [[0, 0], [3, 1]],         # the inference path over models 0..K (K = the merged model)
     "alignment": "none",
     "label": null,                    # references: "addition", "uniform ties", ...
     "scores": {"addition": 0.61, ...},
     "seconds": 0.52}

The log is also the cache the search asks before scoring (``get(key)``): a resumed or repeated run never
scores a candidate whose line is already there. Writing and the torn-tail repair are the run store's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from hm3.errors import UserError
from hm3.evaluate.cache import candidate_key
from hm3.store import RunStore


def record_problem(record: Any) -> str | None:
    """Why a line of ``candidates.jsonl`` is not a usable record (an edit, a foreign file), or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a record object"
    if not isinstance(record.get("key"), str) or not record["key"]:
        return "no 'key' string"
    scores = record.get("scores")
    if not isinstance(scores, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values()
    ):
        return "'scores' is not a mapping of objective names to numbers"
    return None


class CandidateLog:
    """``key -> scores`` over a run's ``candidates.jsonl``, appending a record for every new score.

    It serves :class:`hm3.routing.scoring.PathScorer` as its ``cache``: ``get`` answers from the log, ``put``
    only remembers (the full record, with the path, is written by :meth:`record`, which the search calls
    from the scorer's ``on_candidate`` right after).
    """

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._scores: dict[str, dict[str, float]] = {}
        self.records: list[dict[str, Any]] = []
        for number, record in enumerate(store.candidates(), start=1):
            problem = record_problem(record)
            if problem:
                raise UserError(
                    f"{store.candidates_path}, record {number}: {problem}; delete that line to score its "
                    "candidate again"
                )
            self._scores[record["key"]] = dict(record["scores"])
            self.records.append(record)
        self.loaded = len(self.records)
        self.new = 0

    def get(self, key: str) -> dict[str, float] | None:
        """The scores logged under ``key``, or None."""
        known = self._scores.get(key)
        return None if known is None else dict(known)

    def put(self, key: str, scores: Mapping[str, float]) -> None:
        """Remember ``scores`` (the record itself is written by :meth:`record`)."""
        self._scores[key] = {k: float(v) for k, v in scores.items()}

    def record(self, key: str, scores: Mapping[str, float], **fields: Any) -> dict[str, Any]:
        """Append one scored candidate to ``candidates.jsonl`` (durable on return)."""
        entry = {"key": key, **fields, "scores": {k: float(v) for k, v in scores.items()}}
        self.store.append_candidate(entry)
        self._scores[key] = dict(entry["scores"])
        self.records.append(entry)
        self.new += 1
        return entry

    def score_once(self, spec: Mapping[str, Any], compute, **fields: Any) -> dict[str, float]:
        """Scores of the candidate ``spec`` describes: from the log, or ``compute()`` once and logged."""
        key = candidate_key(spec)
        known = self.get(key)
        if known is not None:
            return known
        start = time.perf_counter()
        scores = compute()
        self.record(key, scores, seconds=round(time.perf_counter() - start, 4), **fields)
        return {k: float(v) for k, v in scores.items()}
