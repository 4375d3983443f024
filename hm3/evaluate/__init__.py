"""Scoring candidates: the search / held-out split, lm-eval and vision backends, and the score cache.

The front door is :class:`Evaluator` (see :mod:`hm3.evaluate.evaluator` for an example); a resumed search asks
:class:`ScoreCache` first, keyed by :func:`candidate_key`.
"""

from hm3.evaluate.cache import ScoreCache, candidate_key
from hm3.evaluate.evaluator import Evaluator, load_tokenizer
from hm3.evaluate.saved import SavedModelScores, score_saved_models
from hm3.evaluate.split import SPLIT_NAMES, DocumentSplit, document_key, split_documents

__all__ = [
    "SPLIT_NAMES",
    "DocumentSplit",
    "Evaluator",
    "SavedModelScores",
    "ScoreCache",
    "candidate_key",
    "document_key",
    "load_tokenizer",
    "score_saved_models",
    "split_documents",
]
