"""Scores already computed, keyed by the candidate's specification, so a resumed search never re-scores.

A candidate is data: its merge method and weights, its inference path, its alignment, the split and the
objective set. :func:`candidate_key` hashes that specification; :class:`ScoreCache` keeps ``key -> scores`` in an
append-only JSON Lines file in the run directory::

    cache = ScoreCache(run_dir / "scores.jsonl")
    key = candidate_key({"merge": {"method": "dare_ties", "weights": [0.5, 0.5]}, "path": None,
                         "split": "search", "objectives": ["addition", "reversal"]})
    scores = cache.get(key)
    if scores is None:
        scores = evaluator.score(model, split="search")
        cache.put(key, scores)

Each record is flushed and fsync'ed as it is written; a torn last line (a crash mid-write) is ignored on reading
and cut off before the next append.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _canonical(value: Any) -> Any:
    """JSON-ready form: mappings with string keys, tuples as lists, floats as ``repr`` strings (exact)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if hasattr(value, "model_dump"):  # pydantic models, e.g. a MergeSpec
        return _canonical(value.model_dump(mode="json"))
    if hasattr(value, "tolist"):  # numpy arrays and torch tensors
        return _canonical(value.tolist())
    raise TypeError(f"candidate specifications hold JSON-like data; got {type(value).__name__}")


def candidate_key(spec: Mapping[str, Any]) -> str:
    """The sha256 (hex) of a candidate specification's canonical JSON.

    Args:
        spec: Everything that determines the candidate's scores: merge method and weights, inference path,
            alignment, split, objective set, and — in a run — ``scoring``, the run's scoring fingerprint
            (:func:`hm3.run_fingerprint.scoring_key`: the models, the task files and their data, each
            objective's metric and limits, the split, dtype and seed), so that a score measured under other
            settings is never found. Key order does not matter; tuples and lists hash alike.
    """
    text = json.dumps(_canonical(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class ScoreCache:
    """Persistent ``candidate key -> scores`` map, stored as append-only JSON Lines.

    Args:
        path: The cache file (created with its folder on the first :meth:`put`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._scores: dict[str, dict[str, float]] = {}
        self._torn_tail = False
        self._unterminated = False
        self._read()

    def _read(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self._scores[record["key"]] = {str(k): float(v) for k, v in record["scores"].items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                if number == len(lines) - 1:  # the last line, torn by a crash while it was written
                    self._torn_tail = True
                    continue
                raise ValueError(f"{self.path}: line {number + 1} is not a score record") from None
        self._unterminated = bool(data) and not data.endswith(b"\n") and not self._torn_tail

    def __len__(self) -> int:
        return len(self._scores)

    def __contains__(self, key: str) -> bool:
        return key in self._scores

    def get(self, key: str) -> dict[str, float] | None:
        """The scores stored for ``key``, or None."""
        scores = self._scores.get(key)
        return dict(scores) if scores is not None else None

    def put(self, key: str, scores: Mapping[str, float]) -> None:
        """Store and persist the scores of ``key`` (flush + fsync before returning)."""
        clean = {str(k): float(v) for k, v in scores.items()}
        line = json.dumps({"key": key, "scores": clean}, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._torn_tail:
            self._drop_torn_tail()
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(("\n" if self._unterminated else "") + line)
            handle.flush()
            os.fsync(handle.fileno())
        self._scores[key] = clean
        self._unterminated = False

    def _drop_torn_tail(self) -> None:
        """Cut the file after its last complete line (what a crash mid-write left behind)."""
        data = self.path.read_bytes()
        keep = data[: data.rfind(b"\n") + 1]
        with open(self.path, "r+b") as handle:
            handle.truncate(len(keep))
            handle.flush()
            os.fsync(handle.fileno())
        self._torn_tail = False
