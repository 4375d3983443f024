"""The optimised upper level (``parameter_level.weights: optimised``): a budgeted, deterministic, resumable weight
search in [0, w_max]^K, from which each preference starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hm3.merge.spec import MergeSpec
from hm3.recipe import load_recipe
from tests.fixtures_models import kill_once_logged, run_hm3
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401
from tests.test_search import MICRO_SEARCH

REPO = Path(__file__).resolve().parents[1]
OPTIMISED = "parameter_level: {method: task_arithmetic, weights: optimised, w_max: 2.0, budget: 10}"


def _recipe_file(zoo: Path, folder: Path, parameter_level: str = OPTIMISED, agent: str | None = None) -> Path:
    text = MICRO_SEARCH.format(zoo=zoo).replace("parameter_level: {method: task_arithmetic}", parameter_level)
    if agent is not None:
        text = text.replace("agent: {iterations: 8, n_steps: 16, batch_size: 8, n_epochs: 1}", agent)
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "micro.yaml"
    file.write_text(text)
    return file


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]


def _keys(run: Path) -> list[str]:
    return [r["key"] for r in _records(run)]


def _merge(zoo: Path, folder: Path) -> subprocess.CompletedProcess:
    return run_hm3(
        "merge", "--recipe", _recipe_file(zoo, folder), "--out", folder / "run", "--quiet", timeout=900
    )


@pytest.mark.slow
def test_the_upper_level_spends_its_budget_in_the_box_and_the_same_seed_gives_the_same_front(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
):
    from hm3.search.run import hm3_budget

    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        done = _merge(lm_zoo_micro, folder)
        assert done.returncode == 0, done.stderr
    recipe = load_recipe(first / "micro.yaml")
    records = _records(first / "run")
    upper = [r for r in records if r.get("label") == "upper_level"]
    assert 0 < len({r["key"] for r in upper}) <= 10
    weights = [w for r in upper for w in r["merge"]["weights"]]
    assert all(0.0 <= w <= 2.0 for w in weights) and sum(weights) / len(upper) > 1.0  # not the simplex
    searched = {r["key"] for r in records if r["split"] == "search" and r["level"] in ("merge", "path")}
    assert (
        len(searched) <= hm3_budget(recipe) == 10 + 4 * 8
    )  # 4 preferences (3 corners + centre), 8 paths each
    # each preference starts from one of the upper level's merges: the best by its scalarization
    upper_merges = {json.dumps(r["merge"], sort_keys=True) for r in upper}
    for record in sorted((first / "run" / "preferences").glob("p*.json")):
        assert json.dumps(json.loads(record.read_text())["merge"], sort_keys=True) in upper_merges
    assert _keys(first / "run") == _keys(second / "run")
    assert (first / "run" / "front.json").read_text() == (second / "run" / "front.json").read_text()


@pytest.mark.slow
def test_sigkill_in_the_upper_level_then_resume_loses_nothing_and_scores_nothing_twice(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
):
    reference = tmp_path / "whole"
    assert _merge(lm_zoo_micro, reference).returncode == 0
    folder = tmp_path / "killed"
    run = folder / "run"
    command = [sys.executable, "-m", "cli.main", "merge", "--recipe", str(_recipe_file(lm_zoo_micro, folder))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen(
        [*command, "--out", str(run), "--quiet"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    kill_once_logged(process, run / "candidates.jsonl", 3 + 4)  # fine-tuned (3) + a few upper-level merges
    before = _keys(run)
    assert len(before) < len(_keys(reference / "run"))
    done = run_hm3("merge", "--resume", run, "--quiet", timeout=900)
    assert done.returncode == 0, done.stderr
    after = _keys(run)
    assert after[: len(before)] == before and len(after) == len(set(after))
    assert sorted(after) == sorted(_keys(reference / "run"))
    assert (run / "front.json").read_text() == (reference / "run" / "front.json").read_text()


def test_weights_preference_keeps_the_papers_merge_lambda(lm_zoo_micro, tmp_path):  # noqa: F811
    from hm3.search.preference import preference_budget
    from hm3.search.run import hm3_budget

    recipe = load_recipe(_recipe_file(lm_zoo_micro, tmp_path, "parameter_level: {method: task_arithmetic}"))
    assert recipe.parameter_level.weights == "preference"
    assert recipe.parameter_level.merges_per_preference == 1
    assert preference_budget(recipe) == 1 + 8 and hm3_budget(recipe) == 4 * 9
    spec = MergeSpec.from_recipe(recipe.parameter_level, recipe.model_weights([0.2, 0.3, 0.5]), recipe.seed)
    assert spec.weights == (0.2, 0.3, 0.5)


@pytest.mark.parametrize(
    ("parameter_level", "field"),
    [
        ("{weights: optimised, w_max: 0}", "parameter_level.w_max"),
        ("{weights: optimised, w_max: 11}", "parameter_level.w_max"),
        ("{weights: optimised, w_max: .nan}", "parameter_level.w_max"),
        ("{weights: optimised, budget: 0}", "parameter_level.budget"),
        ("{weights: optimised, optimiser: bayes}", "parameter_level.optimiser"),
        ("{weights: optimal}", "parameter_level.weights"),
        ("{weights: optimised, scale_search: [1.0, 2.0]}", "parameter_level"),
    ],
)
def test_a_bad_upper_level_setting_is_one_line_naming_the_field(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
    parameter_level,
    field,
):
    from hm3.errors import RecipeError

    with pytest.raises(RecipeError) as error:
        load_recipe(_recipe_file(lm_zoo_micro, tmp_path, f"parameter_level: {parameter_level}"))
    assert field in str(error.value)


def test_hm3_validate_refuses_a_bad_w_max_in_one_line_exit_2(lm_zoo_micro, tmp_path):  # noqa: F811
    recipe = _recipe_file(lm_zoo_micro, tmp_path, "parameter_level: {weights: optimised, w_max: -1}")
    done = run_hm3("validate", recipe, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "parameter_level.w_max" in done.stderr and "Traceback" not in done.stderr
