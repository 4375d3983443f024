"""The score cache: content keys, persistence, and a torn last line after a crash."""

from __future__ import annotations

import pytest

from hm3.evaluate.cache import ScoreCache, candidate_key

SPEC = {
    "merge": {"method": "dare_ties", "weights": [0.25, 0.75], "density": 0.5},
    "path": [[0, 0], [2, 1]],
    "alignment": "none",
    "split": "search",
    "objectives": ["addition", "reversal"],
}


def test_candidate_key_is_a_content_hash():
    reordered = {key: SPEC[key] for key in reversed(list(SPEC))}
    assert candidate_key(SPEC) == candidate_key(reordered)
    assert candidate_key({**SPEC, "path": ((0, 0), (2, 1))}) == candidate_key(SPEC)
    assert candidate_key({**SPEC, "split": "heldout"}) != candidate_key(SPEC)
    weights = {**SPEC, "merge": {**SPEC["merge"], "weights": [0.25, 0.7500001]}}
    assert candidate_key(weights) != candidate_key(SPEC)
    assert len(candidate_key(SPEC)) == 64
    with pytest.raises(TypeError):
        candidate_key({"model": object()})


def test_scores_persist_across_instances(tmp_path):
    path = tmp_path / "run" / "scores.jsonl"
    cache = ScoreCache(path)
    key = candidate_key(SPEC)
    assert cache.get(key) is None
    cache.put(key, {"addition": 0.5, "reversal": 0.25})
    again = ScoreCache(path)
    assert again.get(key) == {"addition": 0.5, "reversal": 0.25}
    assert key in again and len(again) == 1
    again.put(key, {"addition": 0.75, "reversal": 0.25})
    assert ScoreCache(path).get(key)["addition"] == 0.75  # the last record wins


def test_torn_last_line_is_ignored_then_cut(tmp_path):
    path = tmp_path / "scores.jsonl"
    cache = ScoreCache(path)
    cache.put("a", {"x": 1.0})
    with open(path, "a") as handle:
        handle.write('{"key": "b", "scores": {"x": 0.')  # a crash mid-write
    survivor = ScoreCache(path)
    assert survivor.get("a") == {"x": 1.0} and survivor.get("b") is None
    survivor.put("c", {"x": 3.0})
    reread = ScoreCache(path)
    assert reread.get("a") == {"x": 1.0} and reread.get("c") == {"x": 3.0} and reread.get("b") is None
    assert path.read_text().count("\n") == 2


def test_complete_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text('{"key": "a", "scores": {"x": 1.0}}')
    cache = ScoreCache(path)
    cache.put("b", {"x": 2.0})
    reread = ScoreCache(path)
    assert reread.get("a") == {"x": 1.0} and reread.get("b") == {"x": 2.0}


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text('garbage\n{"key": "a", "scores": {"x": 1.0}}\n')
    with pytest.raises(ValueError, match="line 1"):
        ScoreCache(path)
