"""Every baseline runs on the micro zoo, respects its budget and writes a run `hm3 pareto` reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures_models import run_hm3
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401
from tests.test_search import MICRO_SEARCH

BUDGET = 7


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
