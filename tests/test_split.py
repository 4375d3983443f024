"""The search / held-out split: disjoint, exact 70/30, deterministic, independent of file order."""

from __future__ import annotations

import json
import random

import pytest

from hm3.evaluate.split import DocumentSplit, document_key, split_by_keys, split_documents


def toy_task_documents() -> dict[str, list[dict]]:
    """Every toy task's evaluation documents: the zoo's generators, in and out of distribution."""
    from hm3.zoo.lm_tasks import TASKS, TaskSizes, make_test_set, task_name

    sizes = TaskSizes(max_digits=2, max_length=5)
    return {
        task_name(task, ood): make_test_set(task, sizes, ood, count=60, seed=0)
        for task in TASKS
        for ood in (False, True)
    }


def _membership(documents: list[dict], split: DocumentSplit, side: str) -> set[str]:
    return {json.dumps(documents[i], sort_keys=True) for i in split.indices(side)}


@pytest.mark.parametrize("name", sorted(toy_task_documents()))
@pytest.mark.parametrize("seed", [0, 7])
def test_toy_task_split_is_disjoint_exact_and_order_free(name, seed):
    documents = toy_task_documents()[name]
    split = split_documents(documents, 0.7, seed)
    assert not set(split.search) & set(split.heldout)
    assert sorted(split.search + split.heldout) == list(range(len(documents)))
    assert len(split.search) == round(0.7 * len(documents))
    shuffled = documents[:]
    random.Random(seed + 1).shuffle(shuffled)
    again = split_documents(shuffled, 0.7, seed)
    for side in ("search", "heldout"):
        assert _membership(shuffled, again, side) == _membership(documents, split, side)


def test_seed_changes_membership_and_the_split_is_reproducible():
    documents = [{"prompt": f"{i}+1=", "target": str(i + 1)} for i in range(100)]
    assert split_documents(documents, 0.7, 0) == split_documents(documents, 0.7, 0)
    assert split_documents(documents, 0.7, 0).search != split_documents(documents, 0.7, 1).search


def test_key_ignores_key_order_but_not_content():
    assert document_key({"a": 1, "b": "x"}, 0) == document_key({"b": "x", "a": 1}, 0)
    assert document_key({"a": 1}, 0) != document_key({"a": 2}, 0)
    assert document_key({"a": 1}, 0) != document_key({"a": 1}, 1)


def test_duplicates_stay_on_one_side_and_small_sets_keep_both_sides():
    documents = [{"q": "same"}] * 4 + [{"q": str(i)} for i in range(6)]
    split = split_documents(documents, 0.7, 3)
    sides = {side for side in ("search", "heldout") for i in split.indices(side) if i < 4}
    assert len(sides) == 1
    two = split_documents([{"q": 1}, {"q": 2}], 0.7, 0)
    assert len(two.search) == 1 and len(two.heldout) == 1
    assert split_documents([{"q": 1}], 0.7, 0).heldout == ()


def test_all_is_the_union_and_bad_input_is_refused():
    split = split_by_keys(["c", "a", "b", "d"], 0.5)
    assert split.search == (1, 2) and split.heldout == (0, 3)
    assert split.indices("all") == (0, 1, 2, 3)
    with pytest.raises(ValueError):
        split.indices("test")
    with pytest.raises(ValueError):
        split_by_keys(["a"], 1.0)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_the_screen_is_a_fixed_random_share_of_the_search_split(fraction: float) -> None:
    documents = [{"q": i, "a": str(i * 7)} for i in range(200)]
    split = split_documents(documents, 0.7, 3, fraction)
    screen = split.indices("screen")
    assert set(screen) < set(split.search) and list(screen) == sorted(screen)
    assert len(screen) == round(fraction * len(split.search))
    assert screen != split.search[: len(screen)]  # not the first in file order: a random subset
    shuffled = documents[:]
    random.Random(1).shuffle(shuffled)
    again = split_documents(shuffled, 0.7, 3, fraction)  # fixed by content, not by file order
    assert {json.dumps(shuffled[i], sort_keys=True) for i in again.indices("screen")} == {
        json.dumps(documents[i], sort_keys=True) for i in screen
    }


def test_the_screen_of_a_limited_objective_is_taken_from_its_limited_search_documents() -> None:
    split = split_documents([{"q": i} for i in range(100)], 0.7, 0, 0.25)
    limited = split.limited("search", 12)
    screen = split.limited("screen", 12)
    assert set(screen) <= set(limited) and len(screen) == 3
    assert split.limited("screen", 1) == split.limited("search", 1)  # at least one document
    with pytest.raises(ValueError, match="screen_fraction"):
        split_documents([{"q": i} for i in range(10)], 0.7, 0, 1.0)
