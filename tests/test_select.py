"""`hm3 select`: the best front member for a preference, a conditioned policy's rollout for an unseen one, and
what an older run can still be used for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.fixtures_models import hm3_in_process, run_hm3
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401
from tests.test_search import MICRO_SEARCH


def _conditioned_recipe(zoo: Path, folder: Path) -> Path:
    """The micro search with the defaults (optimised upper level) and a preference-conditioned agent."""
    recipe = folder / "micro.yaml"
    recipe.write_text(
        MICRO_SEARCH.format(zoo=zoo)
        .replace("parameter_level: {method: task_arithmetic, weights: preference}", "parameter_level: {method: task_arithmetic, budget: 6}")
        .replace("patience: null}", "patience: null, mode: conditioned}")
        .replace("preferences: {count: 0, include_corners: true}", "preferences: {count: 1}")
    )  # fmt: skip
    return recipe


@pytest.fixture(scope="module")
def conditioned_run(lm_zoo_micro: Path, tmp_path_factory) -> Path:  # noqa: F811
    """A finished micro run with the defaults (optimised upper level) and a preference-conditioned policy."""
    folder = tmp_path_factory.mktemp("select")
    recipe = _conditioned_recipe(lm_zoo_micro, folder)
    done = run_hm3("merge", "--recipe", recipe, "--out", folder / "run", "--quiet", timeout=900)
    assert done.returncode == 0, done.stderr
    return folder / "run"


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]


def test_a_conditioned_run_killed_while_its_agent_trains_resumes_to_the_same_search(
    conditioned_run: Path,
    lm_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The agent trains across the preferences' merges, a pool per drawn λ: a SIGKILL in the middle of its
    training, then --resume, replays it from the log (scoring nothing twice) and ends where an uninterrupted
    run does — the same candidates, the same front."""
    from tests.fixtures_models import merge_killed_once_logged

    trained = [r for r in _log(conditioned_run) if r["preference_index"] is None and r["level"] == "path"]
    first = next(i for i, r in enumerate(_log(conditioned_run)) if r["preference_index"] is None and r["level"] == "path")  # fmt: skip
    run = tmp_path / "run"
    merge_killed_once_logged(_conditioned_recipe(lm_zoo_micro, tmp_path), run, first + len(trained) // 2)
    before = [r["key"] for r in _log(run)]
    assert not (run / "policy" / "conditioned").exists()  # killed while the agent trained

    done = run_hm3("merge", "--resume", run, "--quiet", timeout=900)
    assert done.returncode == 0, done.stderr
    after = [r["key"] for r in _log(run)]
    assert after[: len(before)] == before and len(after) == len(set(after))  # nothing lost, nothing twice
    assert sorted(after) == sorted(r["key"] for r in _log(conditioned_run))
    front = json.loads((run / "front.json").read_text())["members"]
    assert front == json.loads((conditioned_run / "front.json").read_text())["members"]


def test_a_conditioned_agents_candidates_are_logged_with_the_preference_each_was_scored_for(
    conditioned_run: Path,
) -> None:
    """Its episodes draw their own λ; logged with the centre for all, its candidates reached the front, the
    model cards and ``hm3 pareto`` under a λ they were never scored for."""
    trained = [
        r
        for r in _log(conditioned_run)
        if r["preference_index"] is None and r["level"] == "path" and r["split"] != "heldout"
    ]
    preferences = {tuple(r["preference"]) for r in trained}
    assert len(preferences) > 1
    assert all(min(p) >= 0 and abs(sum(p) - 1) < 1e-5 for p in preferences)


def _reward(run: Path, scores: dict, lam: list[float], length: int) -> float:
    """The run's weighted-sum reward, computed here from the fine-tuned models' scores in its log."""
    records = [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]
    finetuned = [r["scores"] for r in records if r["level"] == "finetuned" and r["split"] == "search"]
    names = list(scores)
    ideal = {n: max(s[n] for s in finetuned) for n in names}
    nadir = {n: min(s[n] for s in finetuned) for n in names}
    normalised = [(scores[n] - nadir[n]) / ((ideal[n] - nadir[n]) or 1.0) for n in names]
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    beta = recipe["architecture_level"]["length_penalty"]
    return sum(w * f for w, f in zip(lam, normalised, strict=True)) - beta * length


def test_select_picks_the_front_member_the_runs_reward_ranks_best(conditioned_run: Path) -> None:
    front = json.loads((conditioned_run / "front.json").read_text())["members"]
    base = yaml.safe_load((conditioned_run / "recipe.yaml").read_text())["base_model"]["path"]
    layers = json.loads((Path(base) / "config.json").read_text())["num_hidden_layers"]
    for text, lam in (
        ("1,0,0", [1.0, 0.0, 0.0]),
        ("0,2,2", [0.0, 0.5, 0.5]),
        ("0.2,0.3,0.5", [0.2, 0.3, 0.5]),
    ):
        done = hm3_in_process("select", conditioned_run, "--preference", text, timeout=300)
        assert done.returncode == 0, done.stderr
        rewards = {
            m["id"]: _reward(conditioned_run, m["scores"]["search"], lam, len(m["path"] or [None] * layers))
            for m in front
        }
        best = max(rewards, key=rewards.get)
        assert f"front member {best}" in done.stdout, (text, rewards, done.stdout)
        assert f"reward {rewards[best]:+.4f}" in done.stdout


def test_selecting_a_member_loads_no_model_and_leaves_the_run_as_it_was(conditioned_run: Path) -> None:
    """A member selection reads the run's recipe, front and log (and the base model's config): it imports no
    torch, lm-eval or transformers — which is what makes it answer in about a second — and writes nothing, not
    even to the run's log, so it can serve while a search runs in the folder."""
    import hashlib
    import subprocess
    import sys

    def digest() -> dict[str, str]:
        files = sorted(p for p in conditioned_run.rglob("*") if p.is_file() and ".lock" not in p.name)
        return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}

    before = digest()
    probe = (
        "import sys; from hm3.search.select import select_member; "
        f"chosen = select_member({str(conditioned_run)!r}, '0.2,0.3,0.5'); "
        "print(chosen.member_id); print(sorted(m for m in ('torch', 'lm_eval', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    member, heavy = done.stdout.splitlines()
    assert heavy == "[]"
    cli = hm3_in_process("select", conditioned_run, "--preference", "0.2,0.3,0.5", timeout=300)
    assert cli.returncode == 0 and f"front member {member}" in cli.stdout, cli.stdout
    assert digest() == before


def test_select_json_is_the_same_choice_for_a_script(conditioned_run: Path) -> None:
    """``--json``: one object with the member, its merge and path, scores and reward — what the table says."""
    for text in ("1,0,0", "0.2,0.3,0.5"):
        table = hm3_in_process("select", conditioned_run, "--preference", text, timeout=300)
        done = hm3_in_process("select", conditioned_run, "--preference", text, "--json", timeout=300)
        assert table.returncode == 0 and done.returncode == 0, done.stderr
        chosen = json.loads(done.stdout)
        member = next(
            m
            for m in json.loads((conditioned_run / "front.json").read_text())["members"]
            if m["id"] == chosen["member"]
        )
        assert (
            f"front member {member['id']}" in table.stdout
            and f"reward {chosen['reward']:+.4f}" in table.stdout
        )
        assert chosen["candidate"] == member["id"] and chosen["merge"] == member["merge"]
        assert chosen["path"] == member["path"] and chosen["scores"] == member["scores"]
        assert sum(chosen["preference"]) == pytest.approx(1.0) and chosen["exported"] is None


def test_select_exports_its_choice_as_a_model_folder(conditioned_run: Path, tmp_path: Path) -> None:
    done = run_hm3(
        "select", conditioned_run, "--preference", "1,1,1", "--export", tmp_path / "chosen", timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "chosen" / "config.json").is_file() and "written to" in done.stdout


def test_a_rollout_serves_an_unseen_preference_scored_and_logged(conditioned_run: Path) -> None:
    log = conditioned_run / "candidates.jsonl"
    before = log.read_text().splitlines()
    outputs = []
    # addition-heavy against sorting-heavy: on the micro run these two start from different merges (the upper
    # level's best for each), so their rollouts differ whatever the briefly trained policy learnt
    for text in ("0.95,0.03,0.02", "0.1,0.1,0.8"):
        done = run_hm3("select", conditioned_run, "--preference", text, "--rollout", timeout=300)
        assert done.returncode == 0, done.stderr
        assert "rollout of the conditioned policy" in done.stdout
        outputs.append(done.stdout)
    after = log.read_text().splitlines()
    assert after[: len(before)] == before  # appended to; a candidate the run had scored is answered instead
    new = [json.loads(line) for line in after[len(before) :]]
    assert len(new) <= 2 and all(r["method"] == "select" and r["split"] == "search" for r in new)
    chosen = [line.split("candidate ")[1].split(",")[0] for line in outputs]
    assert chosen[0] != chosen[1], outputs  # another preference, another candidate
    again = run_hm3("select", conditioned_run, "--preference", "0.95,0.03,0.02", "--rollout", timeout=300)
    assert again.returncode == 0 and again.stdout == outputs[0]  # the same rollout, answered from the log
    assert log.read_text().splitlines() == after
    as_json = hm3_in_process(
        "select", conditioned_run, "--preference", "0.95,0.03,0.02", "--rollout", "--json"
    )
    assert as_json.returncode == 0, as_json.stderr
    rolled = json.loads(as_json.stdout)
    front = {m["id"] for m in json.loads((conditioned_run / "front.json").read_text())["members"]}
    assert rolled["candidate"] == chosen[0] and "search" in rolled["scores"]
    assert rolled["member"] == (chosen[0] if chosen[0] in front else None)  # a rollout may reach a member
    assert ("heldout" in rolled["scores"]) == (rolled["member"] is not None)
    assert log.read_text().splitlines() == after


def test_a_rollout_below_its_start_is_reported_and_its_start_selected(
    conditioned_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy's guess never replaces a better candidate the run has: here the policy proposes the start's
    first layer alone (one layer instead of the model's depth), for the centre λ, whose start is the run's best
    path over the centre's merge (an addition-heavy λ starts from a merge that scores next to nothing, which one
    layer need not lose to)."""
    import shutil

    import hm3.search.rollout as rolling
    from hm3.routing.path import InferencePath

    run = tmp_path / "run"
    shutil.copytree(conditioned_run, run, ignore=shutil.ignore_patterns("*.lock"))
    proposed: list[InferencePath] = []

    def one_layer(agent, weights, start: InferencePath, summaries) -> InferencePath:
        assert summaries.shape == agent.summaries.shape  # shown the pool it routes over
        proposed.append(InferencePath(start.steps[:1]))
        return proposed[-1]

    monkeypatch.setattr(rolling, "rollout", one_layer)
    chosen = rolling.roll_out(run, "1,1,1")
    assert chosen.below_start is not None and chosen.below_start[0] == proposed[0]
    assert chosen.reward > chosen.below_start[1]
    assert chosen.candidate.path != tuple(proposed[0].steps)  # the start: the merge itself or its best path
    front = {m["id"]: m for m in json.loads((run / "front.json").read_text())["members"]}
    start_id = chosen.candidate.content_key()[:12]
    assert start_id in front  # a start the run holds on its front (here, in this micro run) ...
    assert chosen.member_id == start_id and chosen.scores == front[start_id]["scores"]  # ... is that member
    log = (run / "log.txt").read_text()
    assert "rollout for λ" in log and "the rollout is below its start" in log


def test_a_rollout_of_a_policy_that_made_no_ppo_update_says_it_is_the_untrained_prior(
    conditioned_run: Path, tmp_path: Path
) -> None:
    """A conditioned training that stopped before PPO's first update saved the untrained prior: its rollout is
    served with a one-line note saying so (in --json too); a trained policy's has none."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(conditioned_run, run, ignore=shutil.ignore_patterns("*.lock"))
    training = run / "policy" / "conditioned" / "training.json"
    assert json.loads(training.read_text())["ppo_updates"] >= 0  # the run recorded its updates
    training.write_text('{"ppo_updates": 0}')
    done = hm3_in_process("select", run, "--preference", "0.2,0.3,0.5", "--rollout", timeout=300)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stdout.splitlines() if "note:" in line]
    assert len(notes) == 1 and "made 0 PPO updates" in notes[0] and "untrained prior" in notes[0]
    as_json = hm3_in_process("select", run, "--preference", "0.2,0.3,0.5", "--rollout", "--json", timeout=300)
    assert "untrained prior" in json.loads(as_json.stdout)["note"]
    training.write_text('{"ppo_updates": 2}')
    done = hm3_in_process("select", run, "--preference", "0.2,0.3,0.5", "--rollout", timeout=300)
    assert done.returncode == 0 and "note:" not in done.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--preference", "1,2"], "2 values for 3 objectives"),
        (["--preference", "1,-1,1"], "non-negative"),
        (["--preference", "0,0,0"], "not all zero"),
        (["--preference", "a,b,c"], "comma-separated numbers"),
        (["--preference", "1,1,1", "--force"], "without --export it does nothing"),  # ignored before
    ],
)
def test_a_bad_preference_is_one_line_exit_2(
    conditioned_run: Path, arguments: list[str], message: str
) -> None:
    done = hm3_in_process("select", conditioned_run, *arguments, timeout=300)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_select_refuses_an_unknown_run_and_a_rollout_without_a_policy(
    conditioned_run: Path, tmp_path: Path
) -> None:
    done = hm3_in_process("select", tmp_path / "nothing", "--preference", "1,1,1", timeout=300)
    assert done.returncode == 2 and "run directory not found" in done.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("recipe.yaml", "fingerprint.json", "candidates.jsonl", "front.json"):
        (plain / name).write_bytes((conditioned_run / name).read_bytes())
    done = hm3_in_process("select", plain, "--preference", "1,1,1", "--rollout", timeout=300)
    assert done.returncode == 2 and "no preference-conditioned policy" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_run_of_an_older_hm3_can_be_read_and_exported_but_not_continued(
    conditioned_run: Path, tmp_path: Path
) -> None:
    """A run whose recipe lacks a field this hm3 added (as an older hm3 wrote it)."""
    old = tmp_path / "old"
    for file in conditioned_run.rglob("*"):
        if file.is_file() and ".lock" not in file.name:
            target = old / file.relative_to(conditioned_run)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes())
    recipe = yaml.safe_load((old / "recipe.yaml").read_text())
    del recipe["parameter_level"]["granularity"]
    (old / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    fingerprint = json.loads((old / "fingerprint.json").read_text())
    del fingerprint["recipe"]["parameter_level"]["granularity"]
    (old / "fingerprint.json").write_text(json.dumps(fingerprint))
    member = json.loads((old / "front.json").read_text())["members"][0]["id"]
    done = hm3_in_process("export", old, "--member", member, "--out", tmp_path / "model", timeout=300)
    assert done.returncode == 0, done.stderr
    done = hm3_in_process("select", old, "--preference", "1,1,1", timeout=300)
    assert done.returncode == 0, done.stderr
    done = hm3_in_process("merge", "--resume", old, timeout=300)
    assert done.returncode == 3, done.stderr  # make demo starts such a run afresh
    assert "older hm3" in done.stderr and "parameter_level.granularity" in done.stderr
