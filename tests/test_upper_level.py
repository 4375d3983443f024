"""The optimised upper level (``parameter_level.weights: optimised``): a budgeted, deterministic, resumable weight
search in [0, w_max]^K, from which each preference starts."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from hm3.merge.spec import MergeSpec
from hm3.recipe import load_recipe
from hm3.search.allocation import path_level_paid
from tests.fixtures_models import hm3_in_process, merge_killed_once_logged, run_hm3
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401
from tests.test_search import MICRO_SEARCH

REPO = Path(__file__).resolve().parents[1]
OPTIMISED = "parameter_level: {method: task_arithmetic, w_max: 2.0, budget: 10}"
"""The defaults (optimised weights, GP), a small box and budget."""
PAPER = "parameter_level: {method: task_arithmetic, weights: preference}"
DEFAULT_AGENT = "agent: {iterations: 8, n_steps: 16, batch_size: 8, n_epochs: 1}"
"""The default patience (0.25: a window of 3 of the 8 paths)."""
DEFAULT_PREFERENCES = "preferences: {count: 2}"
"""The defaults: the centre and 2 Dirichlet samples, no corners."""


def _recipe_file(
    zoo: Path, folder: Path, parameter_level: str = OPTIMISED, agent: str = DEFAULT_AGENT
) -> Path:
    text = (
        MICRO_SEARCH.format(zoo=zoo)
        .replace("parameter_level: {method: task_arithmetic, weights: preference}", parameter_level)
        .replace("agent: {iterations: 8, n_steps: 16, batch_size: 8, n_epochs: 1, patience: null}", agent)
        .replace("preferences: {count: 0, include_corners: true}", DEFAULT_PREFERENCES)
    )
    assert parameter_level in text and agent in text and DEFAULT_PREFERENCES in text
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "micro.yaml"
    file.write_text(text)
    return file


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]


def _keys(run: Path) -> list[str]:
    return [r["key"] for r in _records(run)]


def _merge(zoo: Path, folder: Path, *flags: str) -> subprocess.CompletedProcess:
    return run_hm3(
        "merge",
        "--recipe",
        _recipe_file(zoo, folder),
        "--out",
        folder / "run",
        "--quiet",
        *flags,
        timeout=900,
    )


@pytest.mark.slow
def test_the_upper_level_spends_its_budget_in_the_box_and_the_same_seed_gives_the_same_front(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
):
    from hm3.search.run import hm3_budget

    first, second = tmp_path / "a", tmp_path / "b"
    for folder, flags in ((first, ()), (second, ("--ray-address", "local", "--workers", "2"))):
        done = _merge(lm_zoo_micro, folder, *flags)  # on Ray the probe preference runs first, then the others
        assert done.returncode == 0, done.stderr
    recipe = load_recipe(first / "micro.yaml")
    records = _records(first / "run")
    upper = [r for r in records if r.get("label") == "upper_level"]
    assert 10 <= len({r["key"] for r in upper}) <= 10 + 10  # the first round, then what the paths gave back
    weights = [w for r in upper for w in r["merge"]["weights"]]
    assert all(0.0 <= w <= 2.0 for w in weights) and sum(weights) / len(upper) > 1.0  # not the simplex
    searched = {r["key"] for r in records if r["split"] == "search" and r["level"] in ("merge", "path")}
    assert (
        len(searched) <= hm3_budget(recipe) == 10 + 3 * 8
    )  # the centre + 2 samples, no corners, 8 paths each
    # each preference starts from one of the first round's merges: the best by its scalarization
    first_round = {json.dumps(r["merge"], sort_keys=True) for r in upper[:10]}
    preferences = sorted((first / "run" / "preferences").glob("p*.json"))
    assert len(preferences) == 3
    for record in preferences:
        assert json.dumps(json.loads(record.read_text())["merge"], sort_keys=True) in first_round
    # the first preference is the probe: where its paths did not pay, the others try one path each
    # until their own paths pay
    probe, *others = (json.loads(record.read_text()) for record in preferences)
    assert probe["path_window"] == 3
    for record in others:
        if not path_level_paid(probe) and not path_level_paid(record):
            assert record["path_window"] == 1 and record["used"] <= 2  # its merge and one path
        else:
            assert record["path_window"] == 3
    # what the preferences charged is what they scored: a search of a merge an earlier preference searched
    # too is not charged again for what that one scored
    full = next(r["documents"] for r in upper)
    scored = {
        r["key"]: r["documents"]
        for r in records
        if r.get("preference_index") is not None and r["level"] != "finetuned"
    }
    charged = sum(json.loads(record.read_text())["used"] - 1 for record in preferences)  # - its merge
    assert charged == pytest.approx(sum(scored.values()) / full, abs=1e-6)
    # what the path level did not spend went back to the upper level: its second round, all new merges
    allocation = json.loads((first / "run" / "summary.json").read_text())["allocation"]
    paths = allocation["paths_per_preference"]
    assert allocation["given_back"] == min(math.floor(3 * 8 - sum(paths) + 1e-6), 10)  # whole merges unspent
    assert len({r["key"] for r in upper}) == 10 + allocation["given_back"]
    assert set(_keys(first / "run")) == set(_keys(second / "run"))  # Ray appends in its own order
    members = [json.loads((f / "run" / "front.json").read_text())["members"] for f in (first, second)]
    assert members[0] == members[1]


@pytest.mark.slow
def test_a_long_training_stops_after_one_round_of_merges_without_progress_and_has_updated_by_then(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
):
    """The paper's 1000 paths with the default patience: ⌈0.25 × 1000⌉ = 250 full scorings without progress would
    be 25 of the upper level's rounds of 10 merges, so the window is the round; and PPO's rollout is sized to that
    window (16 steps, not 1000 / 8 = 125), so that a training it stops has made its updates — sized to the 1000,
    the conditioned training stopped on its untrained prior (stop 46)."""
    import re

    from hm3.routing.agent import PathAgent

    for mode in ("conditioned", "per_preference"):
        folder = tmp_path / mode
        agent = f"agent: {{iterations: 1000, mode: {mode}}}"
        done = hm3_in_process(
            "merge", "--recipe", _recipe_file(lm_zoo_micro, folder, agent=agent), "--out", folder / "run",
            "--quiet",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        summary = json.loads((folder / "run" / "summary.json").read_text())
        assert summary["budget_used"] < 10 + 100  # the paths stopped long before their 3 x 1000
        if mode == "conditioned":
            log = (folder / "run" / "log.txt").read_text()
            updates = re.search(
                r"raised their λ's best; (\d+) PPO updates \(stopped: no longer paying\)", log
            )
            assert updates and int(updates.group(1)) >= 1, log
            assert PathAgent.load(folder / "run" / "policy" / "conditioned").model.n_steps == 16
        else:
            probe = json.loads((folder / "run" / "preferences" / "p000.json").read_text())
            assert probe["path_window"] == 10 and probe["stopped_early"]  # the round, not 250
            assert PathAgent.load(folder / "run" / "policy" / "p000").model.n_steps == 16
            assert probe["ppo_updates"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("round_killed", [1, 2])
def test_sigkill_in_the_upper_level_then_resume_loses_nothing_and_scores_nothing_twice(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
    round_killed,
):
    reference = tmp_path / "whole"
    assert _merge(lm_zoo_micro, reference).returncode == 0
    upper = [i for i, r in enumerate(_records(reference / "run")) if r.get("label") == "upper_level"]
    assert len(upper) > 12, "the path level gave nothing back: no second round to kill"
    lines = 3 + 4 if round_killed == 1 else upper[11] + 1  # a few merges of the first or the second round
    folder = tmp_path / "killed"
    run = folder / "run"
    merge_killed_once_logged(_recipe_file(lm_zoo_micro, folder), run, lines)
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

    recipe = load_recipe(_recipe_file(lm_zoo_micro, tmp_path, PAPER))
    assert recipe.parameter_level.weights == "preference"
    assert recipe.parameter_level.merges_per_preference == 1
    assert preference_budget(recipe) == 1 + 8 and hm3_budget(recipe) == 3 * 9
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
        ("{scale_search: [1.0, 2.0]}", "parameter_level"),  # the default is optimised
        ("{granularity: block:1}", "parameter_level.granularity"),
        ("{granularity: blocks:4}", "parameter_level.granularity"),
        ("{granularity: block:17}", "parameter_level.granularity"),
        ("{weights: preference, granularity: block:2}", "parameter_level"),
        ("{weights: optimal}", "parameter_level.weights"),
        ("{weights: optimised, scale_search: [1.0, 2.0]}", "parameter_level"),
        ("{batch: 0}", "parameter_level.batch"),
        ("{batch: 65}", "parameter_level.batch"),
        ("{batch: two}", "parameter_level.batch"),
        ("{optimiser: nsga2, batch: 2}", "parameter_level"),
        ("{weights: preference, batch: 2}", "parameter_level"),
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
    done = hm3_in_process("validate", recipe, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "parameter_level.w_max" in done.stderr and "Traceback" not in done.stderr


def test_block_granularity_searches_a_gradient_per_model_that_exports_to_mergekit(lm_zoo_micro, tmp_path):  # noqa: F811
    import yaml

    parameter_level = "parameter_level: {method: task_arithmetic, granularity: block:2, budget: 5}"
    recipe_file = _recipe_file(
        lm_zoo_micro, tmp_path, parameter_level, "architecture_level: {enabled: false}"
    )
    done = run_hm3("merge", "--recipe", recipe_file, "--out", tmp_path / "run", "--quiet", timeout=900)
    assert done.returncode == 0, done.stderr
    upper = [r for r in _records(tmp_path / "run") if r.get("label") == "upper_level"]
    assert len(upper) == 5
    assert all(len(w) == 2 for r in upper for w in r["merge"]["weights"])  # two depths per model
    exported = sorted((tmp_path / "run" / "mergekit").glob("*.yml"))
    assert exported
    config = yaml.safe_load(exported[0].read_text())
    weights = [entry["parameters"]["weight"] for entry in config["models"] if "parameters" in entry]
    assert weights and all(isinstance(w, list) and len(w) == 2 for w in weights)


def test_a_bfloat16_runs_mergekit_file_rebuilds_the_merge_it_scored(lm_zoo_micro, tmp_path):  # noqa: F811
    """The merge's dtype is the pool's: without it in the file, mergekit merged the float32 zoo in float32 and
    wrote other tensors than the bfloat16 merge hm3 scored and exports."""
    import torch
    from safetensors.torch import load_file

    from tests.test_merge_parity import run_mergekit_yaml

    level = "parameter_level: {method: task_arithmetic, budget: 3}"
    recipe = _recipe_file(lm_zoo_micro, tmp_path, level, "architecture_level: {enabled: false}")
    recipe.write_text(recipe.read_text() + "dtype: bfloat16\n")
    done = run_hm3("merge", "--recipe", recipe, "--out", tmp_path / "run", "--quiet", timeout=900)
    assert done.returncode == 0, done.stderr
    member = next(
        m for m in json.loads((tmp_path / "run" / "front.json").read_text())["members"] if m.get("mergekit")
    )
    config = tmp_path / "run" / member["mergekit"]
    assert "dtype: bfloat16" in config.read_text()
    report = run_mergekit_yaml([(config, tmp_path / "mergekit")])
    assert set(report["status"].values()) == {"ok"}, report["status"]
    done = run_hm3("export", tmp_path / "run", "--member", member["id"], "--out", tmp_path / "export")
    assert done.returncode == 0, done.stderr
    ours, theirs = {}, {}
    for tensors, folder in ((ours, "export"), (theirs, "mergekit")):
        for shard in (tmp_path / folder).glob("*.safetensors"):
            tensors.update(load_file(shard))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


BATCHED = "parameter_level: {method: task_arithmetic, w_max: 2.0, budget: 10, batch: 4}"
"""The upper level proposing 4 merges at a time (10 = 4 + 4 + 2)."""


@pytest.mark.slow
def test_a_batched_upper_level_scores_its_merges_on_ray_workers_and_finds_the_same_front(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
):
    runs = {}
    for name, flags in (("here", ()), ("ray", ("--ray-address", "local", "--workers", "2"))):
        recipe = _recipe_file(lm_zoo_micro, tmp_path / name, BATCHED, "architecture_level: {enabled: false}")
        done = run_hm3("merge", "--recipe", recipe, "--out", tmp_path / name / "run", "--quiet", *flags)
        assert done.returncode == 0, done.stderr
        runs[name] = tmp_path / name / "run"
    upper = [r for r in _records(runs["here"]) if r.get("label") == "upper_level"]
    assert len(upper) == 10  # the budget, never more, whatever the batch
    assert all(0.0 <= w <= 2.0 for r in upper for w in r["merge"]["weights"])
    # the driver logs each merge in the order proposed, whoever scored it: the same log, record for record
    assert _keys(runs["ray"]) == _keys(runs["here"])
    assert [r["scores"] for r in _records(runs["ray"])] == [r["scores"] for r in _records(runs["here"])]
    log = (runs["ray"] / "log.txt").read_text()
    assert log.index("ray: 2 workers at local") < log.index("upper level: 10 of 10 merges")  # scored there
    members = [json.loads((run / "front.json").read_text())["members"] for run in runs.values()]
    assert members[0] == members[1]


def test_a_batch_changes_the_merges_proposed_not_the_budget(lm_zoo_micro, tmp_path):  # noqa: F811
    first = {}
    for batch in (1, 3):
        level = f"parameter_level: {{method: task_arithmetic, w_max: 2.0, budget: 14, batch: {batch}}}"
        recipe = _recipe_file(
            lm_zoo_micro, tmp_path / str(batch), level, "architecture_level: {enabled: false}"
        )
        done = run_hm3("merge", "--recipe", recipe, "--out", tmp_path / str(batch) / "run", "--quiet")
        assert done.returncode == 0, done.stderr
        upper = [r for r in _records(tmp_path / str(batch) / "run") if r.get("label") == "upper_level"]
        assert len(upper) == 14
        first[batch] = [r["key"] for r in upper]
    assert first[1][:10] == first[3][:10]  # Optuna's 10 random start-up points: the same
    assert first[1][10:] != first[3][10:]  # then the GP's: one at a time, or 3 at a time (qLogEHVI)


def test_a_distributed_run_starts_no_more_workers_than_a_batch_or_its_preferences_use(monkeypatch, tmp_path):
    """Each worker loads the whole pool: on a cluster of 8 CPUs, a run whose batch and preferences use 3
    starts 3 (Ray itself replaced by a stand-in that counts the actors started)."""
    import sys
    from types import SimpleNamespace

    from hm3.search import distributed

    started: list[tuple] = []
    actor_class = SimpleNamespace(remote=lambda *arguments: started.append(arguments) or object())
    ray = SimpleNamespace(
        cluster_resources=lambda: {"CPU": 8.0}, remote=lambda **options: lambda cls: actor_class
    )
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setattr(distributed, "connect", lambda address, workers: 8)
    logged: list[str] = []
    store = SimpleNamespace(directory=tmp_path, log=logged.append)
    search = SimpleNamespace(recipe=SimpleNamespace(device="cpu"), ideal=[1.0], nadir=[0.0], store=store)
    workers = distributed.RayWorkers(search, True, "local", None, needed=3)  # type: ignore[arg-type]
    assert not started  # nothing before the first use
    assert len(workers.actors) == 3 and len(started) == 3
    assert logged == ["ray: 3 workers at local"]


def test_the_upper_level_runs_and_talks_of_its_batch_only_while_a_preference_is_left():
    """A resumed distributed run whose preferences are all searched does not run the upper level's first round
    again, nor print that it proposes one merge at a time (its give-back, if any, is still scored on the
    workers); a run with preferences left scores its merges on the workers and says how to batch them."""
    from types import SimpleNamespace

    from hm3.search.run import upper_level_merges

    printed: list[str] = []
    level = SimpleNamespace(optimiser="gp", batch=1)
    search = SimpleNamespace(
        recipe=SimpleNamespace(parameter_level=level), progress=SimpleNamespace(print=printed.append)
    )
    workers = SimpleNamespace(score=lambda candidates: [])
    upper = SimpleNamespace(run=lambda: pytest.fail("the first round ran again"), score_new=None)
    assert upper_level_merges(search, upper, workers, preferences_left=False) is None  # type: ignore[arg-type]
    assert not printed and upper.score_new is workers.score  # a give-back still to come is scored there
    upper.score_new = None
    upper.run = lambda: ["the archive"]
    assert upper_level_merges(search, upper, workers, preferences_left=True) == ["the archive"]  # type: ignore[arg-type]
    assert upper.score_new is workers.score
    assert len(printed) == 1 and "one merge at a time" in printed[0]
    assert upper_level_merges(search, None, workers, preferences_left=True) is None  # type: ignore[arg-type]
