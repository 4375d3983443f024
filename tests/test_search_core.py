"""The search core every method shares: one candidate and its key, one budgeted evaluator, the front from the
whole log, and objectives normalised so that a metric's unit changes nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hm3.front import FrontMember
from hm3.merge.spec import MergeSpec
from hm3.moo.pareto import non_dominated_mask
from hm3.recipe import Recipe, load_recipe
from hm3.routing.path import InferencePath
from hm3.search.candidate import Candidate, member_candidate
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401
from tests.test_search import MICRO_SEARCH


@dataclass
class FakePool:
    merged_index: int = 3
    num_layers: int = 2


SPEC = MergeSpec(method="task_arithmetic", weights=(0.5, 0.25, 0.25))


def test_a_candidate_has_one_key_however_it_is_built() -> None:
    pool = FakePool()
    identity = InferencePath.identity(3, 2)
    plain = Candidate.of_merge(SPEC)
    # the identity path over the merge is the plain merge, whatever alignment the builder uses
    assert Candidate.routed(SPEC, identity, "stats", pool) == plain
    assert Candidate.routed(SPEC.model_dump(mode="json"), None, "none", pool) == plain
    assert Candidate.routed(SPEC, [[3, 0], [3, 1]], "stats", pool).key("search", ["a"], "s") == plain.key(
        "search", ["a"], "s"
    )
    routed = Candidate.routed(SPEC, InferencePath(((3, 0), (0, 1))), "stats", pool)
    # a log record and a front member of it give the same candidate back
    record = {"key": "x", "level": "path", "scores": {"a": 1.0}, **routed.data()}
    assert Candidate.from_record(record) == routed
    data = routed.data()
    member = FrontMember(routed.content_key()[:12], [], data["merge"], data["path"], data["alignment"], {})
    assert member_candidate(member).key("heldout", ["a"], "s") == routed.key("heldout", ["a"], "s")
    # the key holds the split, the objectives and the run's scoring fingerprint; the id does not
    keys = {routed.key(split, objectives, scoring) for split in ("search", "heldout") for objectives in (["a"], ["a", "b"]) for scoring in ("s", "t")}  # fmt: skip
    assert len(keys) == 8
    assert Candidate.finetuned_model("a") != Candidate.of_merge(None)


def _recipe(zoo: Path, folder: Path, **changes: dict) -> Recipe:
    file = folder / "micro.yaml"
    file.write_text(MICRO_SEARCH.format(zoo=zoo))
    recipe = load_recipe(file)
    updates = {name: getattr(recipe, name).model_copy(update=value) for name, value in changes.items()}
    return recipe.model_copy(update=updates)


def _run(recipe: Recipe, folder: Path) -> dict:
    from hm3.search.progress import SearchProgress
    from hm3.search.run import run_search
    from hm3.store import RunStore

    store = RunStore.create(folder, recipe)
    try:
        return run_search(recipe, store, SearchProgress(enabled=False))
    finally:
        store.close()


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]


def _searched(run: Path) -> list[dict]:
    return [r for r in _records(run) if r["split"] == "search" and r["level"] in ("merge", "path")]


@pytest.mark.slow
def test_front_is_the_non_dominated_set_of_the_whole_log_with_density_and_scale_search(
    lm_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The settings the upper level did not keep are logged, counted and eligible for the front."""
    from hm3.search.run import hm3_budget

    recipe = _recipe(
        lm_zoo_micro,
        tmp_path,
        parameter_level={"method": "ties", "density_search": [0.5, 1.0], "scale_search": [0.5, 1.0]},
        agent={"iterations": 3},
    )
    summary = _run(recipe, tmp_path / "run")
    records = _searched(tmp_path / "run")
    budget = hm3_budget(recipe)
    assert budget == 4 * (4 + 3)
    assert summary["evaluations_used"] == len({r["key"] for r in records}) <= budget
    settings = {
        (json.dumps(r["merge"]["density"]), r["merge"]["scale"]) for r in records if r["path"] is None
    }
    assert len(settings) == 4  # every density x scale was merged and logged, the kept one and the others
    names = recipe.objective_names
    points = np.array([[r["scores"][o] for o in names] for r in records])
    expected = {Candidate.from_record(r).content_key()[:12] for r, keep in zip(records, non_dominated_mask(points), strict=True) if keep}  # fmt: skip
    front = json.loads((tmp_path / "run" / "front.json").read_text())
    assert {m["id"] for m in front["members"]} == expected


@pytest.mark.parametrize(
    ("offloaded", "free", "kept"),
    [(False, 64 * 2**30, 8), (False, 3 * 2**30, 2), (False, 2**29, 1), (True, 2**40, 8), (False, None, 8)],
)
def test_a_conditioned_training_keeps_only_the_merges_memory_holds(
    offloaded, free, kept, monkeypatch
) -> None:
    """Each merge the training routes over holds a merged model: a 1 GiB model with 3 GiB free keeps 2 (half the
    free memory for more merges), with 0.5 GiB free 1 (merged again when the drawn λ's merge changes)."""
    from types import SimpleNamespace

    import hm3.search.preference as preference

    where: list[str] = []
    monkeypatch.setattr(preference, "free_bytes", lambda device: where.append(device) or free)
    monkeypatch.setattr(
        preference.PoolSizes, "of", classmethod(lambda cls, pool, dtype: SimpleNamespace(model=2**30))
    )
    pool = SimpleNamespace(device_memory=2**30 if offloaded else None, compute_device="cuda:0")
    search = SimpleNamespace(pool=pool, recipe=SimpleNamespace(dtype="bfloat16"))
    assert preference.merges_kept(search) == kept
    assert where == ["cpu" if offloaded else "cuda:0"]  # offloaded, merged models live in host memory


@pytest.mark.slow
def test_conditioned_mode_spends_at_most_its_budget_and_its_training_paths_reach_the_log(
    lm_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from hm3.baselines import hm3_budget

    recipe = _recipe(lm_zoo_micro, tmp_path, agent={"iterations": 6, "mode": "conditioned"})
    budget = hm3_budget(recipe)
    assert budget == 6 + 4 * (1 + 1)  # the shared agent's training, then one merge and one rollout each
    summary = _run(recipe, tmp_path / "run")
    records = _searched(tmp_path / "run")
    assert summary["budget"] == budget
    assert summary["evaluations_used"] == len({r["key"] for r in records}) <= budget
    assert summary["budget_used"] <= budget
    training = [
        r for r in _records(tmp_path / "run") if r["preference_index"] is None and r["level"] == "path"
    ]
    assert training, (
        "the conditioned agent's training paths are logged (screened, or scored fully: on the front)"
    )
    # trained across preferences on their own merges (weights = λ here: each drawn λ over the merge of the run's
    # preference nearest it): its paths are over more than one of the preferences' merges
    merges = {json.dumps(r["merge"], sort_keys=True) for r in training}
    own = {json.dumps(json.loads(f.read_text())["merge"], sort_keys=True) for f in (tmp_path / "run" / "preferences").glob("p*.json")}  # fmt: skip
    assert len(merges) > 1 and merges <= own
    assert "conditioned agent trained over" in (tmp_path / "run" / "log.txt").read_text()
    # each candidate charged once: a merge or path the training charged is free to the preference that meets it
    # again (it counted 9 merges where the log held 6: the training's merges charged again by their preferences)
    charged = {r["key"]: r for r in _records(tmp_path / "run") if r["split"] in ("search", "screen") and r["level"] in ("merge", "path")}  # fmt: skip
    ledger = summary["ledger"]["method"]
    for level, split in (("merge", "search"), ("path", "search"), ("screen", "screen")):
        logged = [
            r for r in charged.values() if r["split"] == split and (split == "screen" or r["level"] == level)
        ]
        assert ledger.get(level, {}).get("candidates", 0) == len(logged), (level, ledger)
    assert summary["conditioned_ppo_updates"] >= 0

    # the same merges built by a baseline have the keys HM3's run gave them (as references, and the centre
    # preference's merge, which is the uniform task-arithmetic merge: logged once)
    from hm3.baselines import run_baseline
    from hm3.search.progress import SearchProgress
    from hm3.store import RunStore

    store = RunStore.create(tmp_path / "uniform", recipe)
    run_baseline(recipe, store, "uniform", 3, SearchProgress(enabled=False))
    store.close()
    uniform = {r["key"] for r in _searched(tmp_path / "uniform")}
    hm3_keys = [r["key"] for r in _records(tmp_path / "run")]
    assert len(uniform) == 3 and uniform <= set(hm3_keys)
    assert len(hm3_keys) == len(set(hm3_keys))


@pytest.mark.slow
def test_a_conditioned_training_gives_back_only_what_it_did_not_spend_screens_counted(
    lm_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """With the optimised upper level, what the conditioned agent's training left of its budget goes back to the
    upper level: counted as its ledger counts it, screens at their share (counting its fully scored paths
    alone, 3 of 8, gave back 5 merges when 7.89 of 8 were spent, and the run spent 18.9 of a budget of 17)."""
    from hm3.search.budget import charged_documents
    from hm3.search.run import hm3_budget

    recipe = _recipe(
        lm_zoo_micro,
        tmp_path,
        parameter_level={"weights": "optimised", "budget": 6},
        preferences={"count": 2, "include_corners": False},
        agent={"mode": "conditioned", "iterations": 8, "patience": 0.25},
    )
    summary = _run(recipe, tmp_path / "run")
    ledger = json.loads((tmp_path / "run" / "policy" / "conditioned" / "ledger.json").read_text())
    spent = charged_documents(ledger) / _searched(tmp_path / "run")[0]["documents"]  # in full scorings
    allocation = summary["allocation"]
    assert ledger.get("screen", {}).get("candidates", 0) > 0  # the training screened paths
    assert allocation["conditioned_training_paths"] == pytest.approx(spent, abs=1e-6)
    assert allocation["given_back"] == min(int(8 - spent + 1e-9), 6)
    merges = {r["key"] for r in _searched(tmp_path / "run") if r.get("label") == "upper_level"}
    assert len(merges) == 6 + allocation["given_back"]
    assert summary["budget"] == hm3_budget(recipe) and summary["budget_used"] <= summary["budget"]


def test_a_conditioned_policy_that_made_no_ppo_update_is_noted_in_the_summary(tmp_path: Path) -> None:
    """A training that stopped before PPO's first update leaves the untrained prior: the summary says so in one
    line (printed and logged too), not an error; a run that did not record its updates (an older hm3's) says
    nothing."""
    from types import SimpleNamespace

    from hm3.search.run import conditioned_policy_facts

    folder = tmp_path / "policy" / "conditioned"
    folder.mkdir(parents=True)
    printed: list[str] = []
    logged: list[str] = []
    search = SimpleNamespace(
        store=SimpleNamespace(directory=tmp_path, log=logged.append),
        progress=SimpleNamespace(print=printed.append),
    )
    assert conditioned_policy_facts(search) == {}
    (folder / "training.json").write_text('{"ppo_updates": 0}')
    facts = conditioned_policy_facts(search)
    assert facts["conditioned_ppo_updates"] == 0 and len(facts["notes"]) == 1
    assert "made 0 PPO updates" in facts["notes"][0] and "untrained prior" in facts["notes"][0]
    assert printed == logged == [f"note: {facts['notes'][0]}"]
    (folder / "training.json").write_text('{"ppo_updates": 3}')
    assert conditioned_policy_facts(search) == {"conditioned_ppo_updates": 3}


@pytest.mark.slow
def test_scaling_an_objective_by_100_changes_neither_the_trajectory_nor_the_front(
    lm_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A metric reported in percent (0-100) next to fractions: the search sees the same normalised objectives,
    so it scores the same candidates in the same order and keeps the same front."""
    from hm3.evaluate import Evaluator

    recipe = _recipe(lm_zoo_micro, tmp_path, agent={"iterations": 5})
    _run(recipe, tmp_path / "fractions")
    score = Evaluator.score

    def in_percent(self, model, split="search", tokenizer=None):
        scores = score(self, model, split, tokenizer)
        return {**scores, "reversal": 100.0 * scores["reversal"]}

    monkeypatch.setattr(Evaluator, "score", in_percent)
    _run(recipe, tmp_path / "percent")
    first, second = _records(tmp_path / "fractions"), _records(tmp_path / "percent")
    assert [(r["key"], r["level"]) for r in first] == [(r["key"], r["level"]) for r in second]
    assert all(
        b["scores"]["reversal"] == pytest.approx(100 * a["scores"]["reversal"])
        for a, b in zip(first, second, strict=True)
    )
    fronts = [json.loads((tmp_path / run / "front.json").read_text()) for run in ("fractions", "percent")]
    assert [m["id"] for m in fronts[0]["members"]] == [m["id"] for m in fronts[1]["members"]]


@pytest.mark.slow
def test_screened_paths_cost_their_share_of_the_documents_and_only_promoted_ones_reach_the_front(
    lm_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from hm3.baselines import hm3_budget

    recipe = _recipe(lm_zoo_micro, tmp_path, split={"screen_fraction": 0.25})
    assert recipe.architecture_level.screen_paths  # the default
    summary = _run(recipe, tmp_path / "run")
    records = _records(tmp_path / "run")
    full = next(r["documents"] for r in records if r["split"] == "search" and r["level"] == "merge")
    screens = [r for r in records if r["split"] == "screen"]
    assert screens and {r["level"] for r in screens} <= {"merge", "path"}  # the merge: screened as the bar
    assert len({r["documents"] for r in screens}) == 1
    assert 0 < screens[0]["documents"] < full / 3  # ~25% of each objective's search documents
    # a path scored on the whole split was screened first (the preference's greedy rollout too), and the budget
    # paid for both
    screened = {Candidate.from_record(r).content_key() for r in screens}
    preferences = [
        json.loads(p.read_text()) for p in sorted((tmp_path / "run" / "preferences").glob("p*.json"))
    ]
    for record in _searched(tmp_path / "run"):
        if record["level"] == "path":
            assert Candidate.from_record(record).content_key() in screened
    # the rollout's record says where it was scored; a rollout that lost its screen is no candidate
    for preference in preferences:
        rollout = preference["greedy_rollout"]
        assert rollout["split"] in {"search", "screen", None}
        scored = [c["path"] for c in preference["candidates"]]
        assert (rollout["path"] in scored) == (rollout["split"] == "search")
    spent = sum(r["documents"] for r in {r["key"]: r for r in _searched(tmp_path / "run") + screens}.values())
    assert summary["budget_used"] == pytest.approx(spent / full, abs=1e-3)
    assert summary["budget_used"] <= hm3_budget(recipe)
    assert summary["ledger"]["method"]["screen"]["documents"] > 0
    assert all(p["used"] <= p["budget"] for p in preferences)
    # paths screened out: tried for a quarter of their cost, never scored fully
    promoted = {Candidate.from_record(r).content_key() for r in _searched(tmp_path / "run")}
    assert screened - promoted
    front = json.loads((tmp_path / "run" / "front.json").read_text())
    assert front["members"]
    assert not {m["id"] for m in front["members"]} - {
        Candidate.from_record(r).content_key()[:12] for r in _searched(tmp_path / "run")
    }  # a screen never reaches the front


@pytest.mark.slow
def test_an_edit_agent_search_logs_its_edits_and_saves_an_agent_that_reloads(
    lm_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from hm3.routing.agent import PathAgent

    # the first layer fixed (architecture_level.fixed_first): the micro zoo's 2-layer paths edit their second
    recipe = _recipe(lm_zoo_micro, tmp_path, agent={"actions": "edit"}, architecture_level={"fixed_first": 1})
    summary = _run(recipe, tmp_path / "run")
    records = _records(tmp_path / "run")
    assert any(r["level"] == "path" for r in records)
    assert all(r["path"][0] == [3, 0] for r in records if r["level"] == "path")  # the merge's first layer
    # each path is one edit (edit distance 1) of the merge or of a path scored fully before it for that λ
    for index in {r["preference_index"] for r in records if r["level"] == "path"}:
        mine = [r for r in records if r["preference_index"] == index and r["level"] in ("merge", "path")]
        scored = []
        for record in mine:
            path = Candidate.from_record(record).path
            if path is None:  # the merge: its identity path
                scored.append(InferencePath.identity(3, 2))
                continue
            path = InferencePath(tuple(tuple(step) for step in path))
            assert min(path.edit_distance(known) for known in scored) == 1
            if record["split"] == "search":
                scored.append(path)
    assert summary["budget_used"] <= summary["budget"]
    folder = tmp_path / "run" / "policy" / "p000"
    agent = PathAgent.load(folder)
    assert agent.config is not None and agent.config.actions == "edit" and agent.frame == (1, 0)
    preference = json.loads((tmp_path / "run" / "preferences" / "p000.json").read_text())
    assert preference["greedy_rollout"]["path"]


def test_the_progress_bar_counts_a_screen_by_its_cost_and_shows_no_best_before_a_full_score() -> None:
    from hm3.search.progress import SearchProgress

    with SearchProgress(enabled=True) as progress:
        progress.start_preference(0, 1, [0.5, 0.5], 4)
        progress.candidate(None, 0.25)  # a screen first (the preference's merge was answered from the log)
        assert progress.best is None
        progress.candidate(0.3)
        progress.candidate(None, 0.25)
        task = progress._progress.tasks[progress._candidates]
        assert task.completed == 1.5 and progress.best == 0.3 and "best R +0.3000" in task.description
