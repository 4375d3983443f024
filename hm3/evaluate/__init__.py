"""Scoring candidates: the search / held-out split, lm-eval and vision backends, and the score cache.

The front door is :class:`Evaluator` (see :mod:`hm3.evaluate.evaluator` for an example); a resumed search asks
:class:`ScoreCache` first, keyed by :func:`candidate_key`.

Importing the package loads nothing heavy: each name is imported from its module when first used (the evaluator
imports lm-eval, transformers and torch; a candidate's key needs none of them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hm3.evaluate.cache import ScoreCache, candidate_key
    from hm3.evaluate.evaluator import Evaluator, load_tokenizer
    from hm3.evaluate.saved import SavedModelScores, score_saved_models
    from hm3.evaluate.split import SPLIT_NAMES, DocumentSplit, document_key, split_documents

_HOMES = {
    "ScoreCache": "cache",
    "candidate_key": "cache",
    "Evaluator": "evaluator",
    "load_tokenizer": "evaluator",
    "SavedModelScores": "saved",
    "score_saved_models": "saved",
    "SPLIT_NAMES": "split",
    "DocumentSplit": "split",
    "document_key": "split",
    "split_documents": "split",
}
"""Each public name's module."""

__all__ = [
    "DocumentSplit",
    "Evaluator",
    "SPLIT_NAMES",
    "SavedModelScores",
    "ScoreCache",
    "candidate_key",
    "document_key",
    "load_tokenizer",
    "score_saved_models",
    "split_documents",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'hm3.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hm3.evaluate.{home}"), name)
