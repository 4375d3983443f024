"""Every baseline runs on the micro zoo, respects its budget and writes a run `hm3 pareto` reads."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures_models import hm3_in_process, run_hm3
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401
from tests.test_search import MICRO_SEARCH

BUDGET = 8


@pytest.fixture(scope="module")
def micro_recipe(lm_zoo_micro: Path, tmp_path_factory) -> Path:  # noqa: F811
    recipe = tmp_path_factory.mktemp("baselines") / "micro.yaml"
    recipe.write_text(MICRO_SEARCH.format(zoo=lm_zoo_micro))
    return recipe


def _search_records(run: Path) -> list[dict]:
    lines = (run / "candidates.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["level"] in ("merge", "path") and r["split"] == "search"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grid", "nsga2", "cmaes", "evo_path", "param_only", "arch_only"])
def test_baseline_spends_at_most_its_budget(method: str, micro_recipe: Path, tmp_path: Path) -> None:
    from hm3.baselines import run_baseline
    from hm3.recipe import load_recipe
    from hm3.search.progress import SearchProgress
    from hm3.store import RunStore

    recipe = load_recipe(micro_recipe)
    store = RunStore.create(tmp_path / method, recipe)
    summary = run_baseline(recipe, store, method, BUDGET, SearchProgress(enabled=False))
    records = _search_records(store.directory)
    distinct = {r["key"] for r in records}
    assert len(records) == len(distinct)  # nothing scored twice
    assert summary["method"] == method and summary["budget"] == BUDGET
    assert summary["evaluations_used"] == len(distinct) <= BUDGET
    assert summary["budget_used"] <= BUDGET  # screens included (arch_only's paths are screened first)
    if method not in ("arch_only",):  # arch_only's paths repeat across preferences (its pool ignores λ)
        assert len(distinct) == BUDGET
    front = json.loads((store.directory / "front.json").read_text())
    assert front["members"] and all("heldout" in m["scores"] for m in front["members"])
    if method == "param_only":
        assert all(m["path"] is None for m in front["members"])
    if method == "arch_only":
        assert all(m["merge"] is None for m in front["members"])


def test_uniform_baseline_through_the_cli_is_plotted_by_pareto(micro_recipe: Path, tmp_path: Path) -> None:
    run = tmp_path / "uniform"
    done = run_hm3(
        "baseline", "--recipe", micro_recipe, "--method", "uniform", "--out", run, "--quiet", timeout=900
    )
    assert done.returncode == 0, done.stderr
    records = _search_records(run)
    assert sorted(r["merge"]["method"] for r in records) == ["dare_ties", "task_arithmetic", "ties"]
    assert all(r["merge"]["weights"] == [pytest.approx(1 / 3)] * 3 for r in records)
    plot = tmp_path / "uniform.png"
    done = run_hm3("pareto", run, "--plot", plot)
    assert done.returncode == 0, done.stderr
    assert plot.stat().st_size > 10_000


def test_bad_baseline_arguments_are_one_line_errors(micro_recipe: Path, tmp_path: Path) -> None:
    done = run_hm3(
        "baseline",
        "--recipe",
        micro_recipe,
        "--method",
        "uniform",
        "--budget",
        "0",
        "--out",
        tmp_path / "zero",
    )
    assert done.returncode == 2 and "--budget must be at least 1" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_grid_points_cover_the_cube_coarse_to_fine() -> None:
    from hm3.baselines.weights import grid_points

    points = list(grid_points(3, 26))
    assert len(points) == 26 and len(set(points)) == 26  # the 3x3x3 grid without the origin
    assert points[:7] == [p for p in points if set(p) <= {0.0, 1.0}]  # the cube's corners first
    assert list(grid_points(2, 3)) == [(0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    assert next(grid_points(2, 10**11)) == (0.0, 1.0)  # a huge budget: the first point at once


def _grid(values: int, k: int = 3) -> set[tuple[float, ...]]:
    axis = [round(float(v), 6) for v in np.linspace(0.0, 1.0, values)]
    return {p for p in itertools.product(axis, repeat=k) if any(p)}


def test_grid_fills_its_budget_and_the_cut_grid_still_covers_the_cube() -> None:
    """It scored 7 points for budgets 8 to 25 and 82 for 112 (the finest grid the budget held whole, and the
    coarser ones): equal budgets were not equal. Now the next finer grid fills the budget, its points taken
    farthest-first, so the part the budget cuts is spread over the cube rather than its product order's corner."""
    from hm3.baselines.weights import grid_points

    for budget in (8, 25, 36, 112):
        points = list(grid_points(3, budget))
        assert len(points) == len(set(points)) == budget
    points = list(grid_points(3, 112))
    whole = _grid(2) | _grid(3) | _grid(4)  # 82 points: the grids of 2, 3 and 4 values per axis, coarse first
    assert set(points[:82]) == whole and points[:7] == [p for p in points if set(p) <= {0.0, 1.0}]
    cut = points[82:]  # 30 of the 98 new points of the 5-value grid
    assert set(cut) <= _grid(5) and np.allclose(np.mean(cut, axis=0), 0.5, atol=0.15)
    assert all(min(axis) <= 0.25 and max(axis) >= 0.75 for axis in zip(*cut, strict=True))  # not one corner
    # a smaller budget's points are the first of a larger one's
    assert points[:50] == list(grid_points(3, 50))
    assert len(list(grid_points(2, 14))) == 14


@pytest.mark.slow
def test_scale_search_keeps_the_best_scale_per_preference_and_counts_in_the_budget(
    micro_recipe: Path, tmp_path: Path
) -> None:
    """The upper level tries every scale of the merged task vector, keeps the best reward, and the budget
    every baseline gets counts those merges (P × scales here, the architecture level off)."""
    from hm3.baselines import hm3_budget
    from hm3.recipe import load_recipe
    from hm3.search.progress import SearchProgress
    from hm3.search.run import run_search
    from hm3.store import RunStore

    base = load_recipe(micro_recipe)
    recipe = base.model_copy(
        update={
            "parameter_level": base.parameter_level.model_copy(update={"scale_search": [0.5, 1.0, 2.0]}),
            "architecture_level": base.architecture_level.model_copy(update={"enabled": False}),
            "preferences": base.preferences.model_copy(update={"count": 0}),
        }
    )
    store = RunStore.create(tmp_path / "run", recipe)
    summary = run_search(recipe, store, SearchProgress(enabled=False))
    assert hm3_budget(recipe) == 4 * 3 == summary["evaluations_used"]
    records = _search_records(store.directory)
    assert {r["merge"]["scale"] for r in records} == {0.5, 1.0, 2.0}
    # the reward weighs the objectives normalised by the fine-tuned models' ideal and nadir
    ideal, nadir = np.array(summary["ideal_point_search"]), np.array(summary["nadir_point_search"])
    for file in sorted((store.directory / "preferences").glob("p*.json")):
        chosen = json.loads(file.read_text())
        lam = chosen["preference"]
        rewards = {
            r["merge"]["scale"]: float(
                np.dot(lam, (np.array(list(r["scores"].values())) - nadir) / (ideal - nadir))
            )
            for r in records
            if r["preference_index"] == chosen["index"]
        }
        assert len(rewards) == 3
        assert chosen["merge"]["scale"] == max(rewards, key=rewards.get), (lam, rewards)


def _changed(recipe, **sections):
    """``recipe`` with some fields of some sections replaced (``agent={"mode": "conditioned"}``)."""
    return recipe.model_copy(
        update={name: getattr(recipe, name).model_copy(update=fields) for name, fields in sections.items()}
    )


ABLATION_RECIPES = {  # variant: (sections changed in MICRO_SEARCH, smallest budget of param_only, of arch_only)
    "the paper's: 3 corners + centre, 1 merge each": ({}, 4, 8),
    "2 scales per preference": ({"parameter_level": {"scale_search": [1.0, 1.5]}}, 8, 8),
    "conditioned agent": ({"agent": {"mode": "conditioned"}}, 4, 9),
    "the defaults: optimised upper level, centre + 2": (
        {"parameter_level": {"weights": "optimised"}, "preferences": {"count": 2, "include_corners": False}},
        1,
        6,
    ),
}


@pytest.mark.parametrize("variant", ABLATION_RECIPES)
def test_an_ablation_plans_at_most_its_budget_or_names_the_smallest_it_needs(
    variant: str, micro_recipe: Path
) -> None:
    """``param_only`` (weights = λ) searched the corners and the centre whatever the budget (8 of 3), and
    ``arch_only`` gave each preference at least one path (6 of 1): now the most an ablation can spend, HM3's
    budget on the recipe it runs, is at most its budget, and a budget below its fixed spend is refused in one
    line naming the smallest it needs. Its budget line describes it (no upper level for ``arch_only``)."""
    from hm3.baselines import ablation_recipe, baseline_budget
    from hm3.errors import UserError
    from hm3.recipe import load_recipe
    from hm3.search.run import budget_line, hm3_budget
    from hm3.search.session import preferences

    sections, *smallest = ABLATION_RECIPES[variant]
    recipe = _changed(load_recipe(micro_recipe), **sections)
    for method, least in zip(("param_only", "arch_only"), smallest, strict=True):
        if least > 1:
            with pytest.raises(
                UserError,
                match=rf"^{method} needs --budget {least} or more on this recipe, not {least - 1}: ",
            ):
                baseline_budget(recipe, method, least - 1)
        for budget in range(least, least + 10):
            changed = ablation_recipe(recipe, method, budget)
            assert hm3_budget(changed) <= budget, (method, budget)
            line = budget_line(changed, len(preferences(changed)), parameter_level=method != "arch_only")
            assert line.startswith(f"budget: {hm3_budget(changed)} new candidates")
            if method == "arch_only":
                assert "upper level" not in line and "merge" not in line and "(the base model + " in line
            else:  # no agent runs: the line says nothing of agents' paths
                assert "agent" not in line
            if method == "param_only" and recipe.parameter_level.optimised:
                assert hm3_budget(changed) == budget  # the optimiser alone, with the whole budget


def test_an_ablation_that_cannot_run_within_its_budget_is_refused_before_its_run_starts(
    micro_recipe: Path, tmp_path: Path
) -> None:
    """The prober's ``c1.yaml`` (weights = λ, scales 1.0 and 1.5, corners): ``param_only --budget 3`` scored 8
    merges; ``arch_only --budget 1`` spent 2.54 full scorings (its screens uncounted in "1 of 1")."""
    from hm3.baselines import run_baseline
    from hm3.errors import UserError
    from hm3.recipe import load_recipe
    from hm3.search.progress import SearchProgress
    from hm3.store import RunStore

    scaled = tmp_path / "c1.yaml"
    scaled.write_text(
        micro_recipe.read_text().replace(
            "weights: preference", "weights: preference, scale_search: [1.0, 1.5]"
        )
    )
    out = tmp_path / "b-po-pref"
    done = hm3_in_process(
        "baseline", "--recipe", scaled, "--method", "param_only", "--budget", 3, "--out", out
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "param_only needs --budget 8 or more on this recipe" in done.stderr
    assert not out.exists()  # refused before the run folder is made
    recipe = load_recipe(micro_recipe)
    with (
        RunStore.create(tmp_path / "b-ao1", recipe) as store,
        pytest.raises(UserError, match="--budget 8 or"),
    ):
        run_baseline(recipe, store, "arch_only", 1, SearchProgress(enabled=False))


def _kill_after(run: Path, scored: int) -> None:
    """Leave ``run`` as a kill would have after ``scored`` search candidates: its log cut there (the last line
    half-written), no front or summary."""
    lines = (run / "candidates.jsonl").read_text().splitlines(keepends=True)
    searched = [
        i
        for i, r in enumerate(map(json.loads, lines))
        if r["level"] in ("merge", "path") and r["split"] == "search"
    ]
    cut = searched[scored]
    (run / "candidates.jsonl").write_text("".join(lines[:cut]) + lines[cut][: len(lines[cut]) // 2])
    for name in ("front.json", "summary.json"):
        (run / name).unlink()
    shutil.rmtree(run / "mergekit", ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nsga2", "evo_path"])
def test_a_killed_baseline_resumes_without_scoring_anything_twice(
    method: str, micro_recipe: Path, tmp_path: Path
) -> None:
    """After a kill, ``hm3 baseline --out RUN`` said "continue it with --resume RUN", which neither
    ``hm3 baseline`` (no such flag) nor ``hm3 merge --resume`` (it refuses baseline runs) did: now
    ``hm3 baseline --resume RUN`` replays the method with its logged candidates answered from the log, scores
    only the rest, and ends on the front of the run that was never interrupted."""
    from hm3.baselines import run_baseline
    from hm3.recipe import load_recipe
    from hm3.search.progress import SearchProgress
    from hm3.store import RunStore

    recipe = load_recipe(micro_recipe)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    with RunStore.create(whole, recipe) as store:
        uninterrupted = run_baseline(recipe, store, method, BUDGET, SearchProgress(enabled=False))
    shutil.copytree(whole, killed)
    _kill_after(killed, scored=3)
    kept = (killed / "candidates.jsonl").read_text().rsplit("\n", 1)[0] + "\n"

    done = hm3_in_process("baseline", "--recipe", micro_recipe, "--method", method, "--out", killed)
    assert done.returncode == 2 and f"continue it with --resume {killed} (hm3 baseline)" in done.stderr
    done = hm3_in_process("baseline", "--resume", killed, "--quiet")
    assert done.returncode == 0, done.stderr
    assert f"{method}: {BUDGET} of {BUDGET} evaluations" in done.stdout

    log = (killed / "candidates.jsonl").read_text()
    assert log.startswith(kept)  # the candidates scored before the kill are kept as they were
    keys = [r["key"] for r in map(json.loads, log.splitlines())]
    assert len(keys) == len(set(keys))  # nothing scored twice
    summary = json.loads((killed / "summary.json").read_text())
    assert sum(line["scored_now"] for line in summary["ledger"]["method"].values()) == BUDGET - 3
    assert summary["evaluations_used"] == uninterrupted["evaluations_used"] == BUDGET
    assert json.loads((killed / "front.json").read_text()) == json.loads((whole / "front.json").read_text())


def test_baseline_resume_takes_only_a_baseline_s_run_and_its_own_settings(
    micro_recipe: Path, tmp_path: Path
) -> None:
    from hm3.recipe import load_recipe
    from hm3.store import RunStore

    merge_run = tmp_path / "merge-run"
    RunStore.create(merge_run, load_recipe(micro_recipe)).close()
    done = hm3_in_process("baseline", "--resume", merge_run)
    assert done.returncode == 2 and "is not a run of hm3 baseline" in done.stderr, done.stderr
    assert f"continues with hm3 merge --resume {merge_run}" in done.stderr
    done = hm3_in_process("baseline", "--recipe", micro_recipe, "--method", "grid", "--out", merge_run)
    assert done.returncode == 2 and f"continue it with --resume {merge_run} (hm3 merge)" in done.stderr
    done = hm3_in_process("baseline", "--resume", merge_run, "--budget", 5, "--force")
    assert done.returncode == 2 and "drop --budget and --force" in done.stderr, done.stderr
    done = hm3_in_process("baseline", "--recipe", micro_recipe)
    assert done.returncode == 2 and "--recipe needs --method" in done.stderr, done.stderr
