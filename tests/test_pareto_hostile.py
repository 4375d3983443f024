"""`hm3 pareto` on real runs edited by hand or scored under other settings: a ``front.json`` whose fields or
numbers were edited, a ``recipe.yaml`` of the wrong shape, a task file edited in place between two runs; and the
plot of a run of one objective, which ``hm3 merge`` suggests like any other. Every refusal: exit 2, one line.

One finished run of one objective (the micro zoo, 8 documents, 3 merges: ~10 s) serves every test; each test
edits a copy of it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli.pareto import merge_weights
from tests.fixtures_models import hm3_in_process, run_hm3
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401

RECIPE = """
base_model: {{path: {zoo}/base}}
models:
  - {{name: addition, path: {zoo}/addition}}
  - {{name: reversal, path: {zoo}/reversal}}
objectives:
  - {{name: addition, task: {tasks}/toy_addition.yaml, metric: exact_match, limit: 8, model: addition}}
split: {{search_fraction: 0.7, seed: 0}}
parameter_level: {{method: task_arithmetic, budget: 3}}
architecture_level: {{enabled: false}}
preferences: {{count: 0}}
seed: 0
"""


@dataclass(frozen=True)
class OneObjective:
    recipe: Path
    task: Path
    """The run's task file: a copy of the zoo's, so that a test may edit it in place."""
    run: Path


@pytest.fixture(scope="module")
def finished(lm_zoo_micro: Path, tmp_path_factory) -> OneObjective:  # noqa: F811
    root = tmp_path_factory.mktemp("pareto_hostile")
    (root / "tasks").mkdir()
    task = root / "tasks" / "toy_addition.yaml"
    shutil.copyfile(lm_zoo_micro / "tasks" / "toy_addition.yaml", task)
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE.format(zoo=lm_zoo_micro, tasks=task.parent))
    run = root / "run"
    done = run_hm3("merge", "--recipe", recipe, "--out", run, "--quiet", timeout=600)
    assert done.returncode == 0, done.stderr
    return OneObjective(recipe, task, run)


def copy_of(finished: OneObjective, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(finished.run, copy)
    return copy


def refused(*args: Any) -> str:
    """``hm3 pareto ARGS`` exits 2 with one line on stderr and no traceback; returns that line."""
    done = hm3_in_process("pareto", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


# -- a run of one objective ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["heldout", "search"])
def test_a_run_of_one_objective_is_plotted_as_hm3_merge_suggests(
    finished: OneObjective, tmp_path: Path, split: str
) -> None:
    """One objective has no trade-off, but ``hm3 merge`` prints ``hm3 pareto RUN --plot RUN/front.png`` for it
    too: the plot is a strip of the front, the references and (search split) the candidates on that one axis
    (it divided by zero)."""
    run = copy_of(finished, tmp_path)
    plot = run / "front.png"
    done = hm3_in_process("pareto", run, "--plot", plot, "--split", split)
    assert done.returncode == 0, done.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {plot}" in done.stdout


# -- front.json edited by hand ------------------------------------------------------------------------------------


def _member(front: dict) -> dict:
    return front["members"][0]


EDITS: dict[str, tuple[Callable[[dict], object], str]] = {
    "merge-a-string": (lambda f: _member(f).update(merge="ties"), "members[0]: merge"),
    "weights-a-string": (lambda f: _member(f)["merge"].update(weights="abc"), "members[0]: merge weights"),
    "weights-with-null": (
        lambda f: _member(f)["merge"].update(weights=[None, 1]),
        "members[0]: merge weights",
    ),
    "preference-a-string": (lambda f: _member(f).update(preference="x"), "members[0].preference"),
    "id-a-number": (lambda f: _member(f).update(id=5), "members[0].id"),
    "path-a-string": (lambda f: _member(f).update(path="abc"), "members[0].path"),
    "direction-a-string": (lambda f: f.update(higher_is_better=["yes"]), "'higher_is_better'"),
    "nan-score": (
        lambda f: _member(f)["scores"]["heldout"].update(addition=float("nan")),
        "members[0].scores.heldout.addition is not a finite number",
    ),
    "infinite-score": (
        lambda f: _member(f)["scores"]["search"].update(addition=float("inf")),
        "members[0].scores.search.addition is not a finite number",
    ),
    "reference-score-a-string": (
        lambda f: f["references"][0]["scores"]["heldout"].update(addition="x"),
        "references[0].scores.heldout.addition is not a finite number",
    ),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_front_json_with_a_field_of_the_wrong_type_or_a_score_not_finite_is_refused(
    finished: OneObjective, tmp_path: Path, edit: str
) -> None:
    """Each of these ended in a traceback (TypeError, ValueError in the table) or was read on (NaN, Infinity:
    the hypervolume silently changed)."""
    run = copy_of(finished, tmp_path)
    change, expected = EDITS[edit]
    front = json.loads((run / "front.json").read_text())
    change(front)
    (run / "front.json").write_text(json.dumps(front))
    line = refused(run, finished.run)
    assert f"{run / 'front.json'}: not an hm3 front (" in line and expected in line, line


@pytest.mark.parametrize(
    ("edit", "who"),
    [
        (lambda f: _member(f)["scores"]["heldout"].update(addition=1e308), "member {id} has heldout scores"),
        (lambda f: _member(f)["scores"]["search"].update(addition=0.5), "member {id} has search scores"),
        (lambda f: _member(f)["merge"].update(weights=[0.25, 0.25]), "member {id} has search scores"),
        (lambda f: f["references"][0]["scores"]["heldout"].update(addition=0.0), "reference 'addition'"),
    ],
    ids=["huge-score", "other-score", "other-merge", "reference-score"],
)
def test_a_front_whose_numbers_are_not_those_its_run_logged_is_refused(
    finished: OneObjective, tmp_path: Path, edit, who: str
) -> None:
    """A front is derived from the run's log: a finite score the log does not hold for that model (1e308 made the
    hypervolume of every run compared drop), or a member whose merge was changed under its scores, is an edit."""
    run = copy_of(finished, tmp_path)
    front = json.loads((run / "front.json").read_text())
    member = _member(front)["id"]
    edit(front)
    (run / "front.json").write_text(json.dumps(front))
    line = refused(finished.run, run)
    assert line.startswith(f"hm3 pareto: {run / 'front.json'}: {who.format(id=member)}"), line
    assert "candidates.jsonl does not record for that model" in line


def test_an_unedited_copy_compares_with_its_run(finished: OneObjective, tmp_path: Path) -> None:
    run = copy_of(finished, tmp_path)
    done = hm3_in_process("pareto", finished.run, run)
    assert done.returncode == 0, done.stderr
    fronts = [line.split()[-1] for line in done.stdout.splitlines() if line.strip().startswith("front of")]
    assert len(fronts) == 2 and fronts[0] == fronts[1]


def test_block_weights_of_some_models_only_are_shown_per_model() -> None:
    assert merge_weights({"method": "ties", "weights": [0.5, [0.1, 0.2]]}) == "0.50 2 blocks"
    assert merge_weights({"method": "ties", "weights": [[0.1, 0.2], [0.3, 0.4]]}) == "2 blocks per model"


# -- recipe.yaml edited by hand -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("objectives: 5\n", "'objectives' is not a list"),
        ("split: [1, 2]\n", "'split' is not a mapping"),
        ("objectives: [5]\n", "'objectives[0]' is not a mapping"),
    ],
)
def test_a_run_recipe_of_the_wrong_shape_is_named_when_runs_are_compared(
    finished: OneObjective, tmp_path: Path, text: str, field: str
) -> None:
    """(TypeError, AttributeError before.)"""
    run = copy_of(finished, tmp_path)
    (run / "recipe.yaml").write_text(text)
    expected = f"{run / 'recipe.yaml'}: {field}, so how the run's scores were taken is unknown"
    assert refused(run, finished.run).endswith(expected)
    assert refused(finished.run, run).endswith(expected)


# -- a task file edited in place between two runs -----------------------------------------------------------------


def test_runs_of_a_task_file_edited_in_place_between_them_are_refused(
    finished: OneObjective, tmp_path: Path
) -> None:
    """The second run scores with another generation length from the same path: the first run's record of the
    file is its hash, and today's file is the second run's, so what the first run scored with cannot be told.
    (The first run's file was left out of the comparison, and both fronts shared one normalisation.)"""
    original = finished.task.read_text()
    assert "max_gen_toks: 8" in original
    try:
        finished.task.write_text(original.replace("max_gen_toks: 8", "max_gen_toks: 1"))
        second = tmp_path / "second"
        done = run_hm3("merge", "--recipe", finished.recipe, "--out", second, "--quiet", timeout=600)
        assert done.returncode == 0, done.stderr
        for first, other in ((finished.run, second), (second, finished.run)):
            line = refused(first, other)
            assert (
                f"{first} and {other}: cannot tell whether they scored toy_addition.yaml with the same "
                in line
            )
            assert f"{finished.task} has changed since {finished.run} started" in line
    finally:
        finished.task.write_text(original)
