"""`hm3 merge --recipe` end to end on the micro toy zoo: run directory, front, determinism, resume after SIGKILL,
`hm3 pareto`, and the errors a user can cause."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_models import hm3_in_process, merge_killed_once_logged, run_hm3
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

# 4 preferences (3 corners + centre), 8 new candidates each: about 30 s on 2 cores.
MICRO_SEARCH = """
base_model: {{path: {zoo}/base}}
models:
  - {{name: addition, path: {zoo}/addition}}
  - {{name: reversal, path: {zoo}/reversal}}
  - {{name: sorting, path: {zoo}/sorting}}
objectives:
  - {{name: addition, task: {zoo}/tasks/toy_addition.yaml, metric: exact_match}}
  - {{name: reversal, task: {zoo}/tasks/toy_reversal.yaml, metric: exact_match}}
  - {{name: sorting, task: {zoo}/tasks/toy_sorting.yaml, metric: exact_match}}
split: {{search_fraction: 0.7, seed: 0}}
parameter_level: {{method: task_arithmetic, weights: preference}}
preferences: {{count: 0, include_corners: true}}
agent: {{iterations: 8, n_steps: 16, batch_size: 8, n_epochs: 1, patience: null}}
seed: 0
"""
"""The paper's Algorithm 1 on the micro zoo (weights = λ, the 3 corners and the centre, every path of the
budget): the plumbing tests' fixed budget. ``tests/test_upper_level.py`` runs the defaults (the optimised upper
level, no corners, patience)."""


@pytest.fixture(scope="module")
def micro_recipe(lm_zoo_micro: Path, tmp_path_factory) -> Path:  # noqa: F811
    folder = tmp_path_factory.mktemp("search")
    recipe = folder / "micro.yaml"
    recipe.write_text(MICRO_SEARCH.format(zoo=lm_zoo_micro))
    return recipe


@pytest.fixture(scope="module")
def finished_run(micro_recipe: Path) -> Path:
    run = micro_recipe.parent / "run-a"
    done = run_hm3("merge", "--recipe", micro_recipe, "--out", run, "--quiet", timeout=900)
    assert done.returncode == 0, done.stderr
    assert "held-out hypervolume" in done.stdout
    return run


def _front(run: Path) -> list[tuple]:
    front = json.loads((run / "front.json").read_text())
    return [(m["id"], m["path"], m["scores"]["search"], m["scores"]["heldout"]) for m in front["members"]]


def _keys(run: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (run / "candidates.jsonl").read_text().splitlines()]


def test_run_directory_holds_everything_the_user_needs(finished_run: Path) -> None:
    for name in ("recipe.yaml", "candidates.jsonl", "front.json", "summary.json", "log.txt"):
        assert (finished_run / name).is_file(), name
    summary = json.loads((finished_run / "summary.json").read_text())
    front = json.loads((finished_run / "front.json").read_text())
    assert summary["preferences"] == 4 and len(list((finished_run / "preferences").glob("p*.json"))) == 4
    assert len(list((finished_run / "policy").glob("p*/policy.safetensors"))) == 4
    assert not list(finished_run.rglob("*.zip")) and not list(finished_run.rglob("*.pkl"))  # no pickle
    assert summary["front_members"] == len(front["members"]) >= 1
    labels = {r["label"] for r in front["references"]}
    assert labels == {
        "addition",
        "reversal",
        "sorting",
        "uniform task_arithmetic",
        "uniform ties",
        "uniform dare_ties",
    }
    for member in front["members"]:
        assert set(member["scores"]) == {"search", "heldout"}
        assert (finished_run / member["mergekit"]).is_file()
    # every scored candidate is logged exactly once, and each search-split member is among them
    keys = _keys(finished_run)
    assert len(keys) == len(set(keys))
    heldout = summary["heldout"]
    assert set(heldout["margin_over"]) == labels
    from hm3.front import ParetoFront

    recomputed = ParetoFront.from_json(front).hypervolumes("heldout")
    assert heldout["front"] == pytest.approx(recomputed["front"])
    for label, value in recomputed["references"].items():
        assert heldout["margin_over"][label] == pytest.approx(heldout["front"] - value)


def test_front_is_non_dominated_on_the_search_split(finished_run: Path) -> None:
    import numpy as np

    from hm3.moo.pareto import non_dominated_mask

    front = json.loads((finished_run / "front.json").read_text())
    names = front["objectives"]
    points = np.array([[m["scores"]["search"][o] for o in names] for m in front["members"]])
    assert non_dominated_mask(points).all()
    # and no logged search candidate dominates a member
    logged = [json.loads(line) for line in (finished_run / "candidates.jsonl").read_text().splitlines()]
    for record in logged:
        if record["split"] == "search" and record["level"] in ("merge", "path"):
            score = np.array([record["scores"][o] for o in names])
            assert not any((score >= p).all() and (score > p).any() for p in points)


def test_same_seed_gives_the_same_front(micro_recipe: Path, finished_run: Path) -> None:
    """Also under another CPU capability: torch's other kernels change the last bits of the agent's networks
    and of the forward passes, which must not change a score, a sampled path or the front."""
    import torch

    other = "avx2" if torch.backends.cpu.get_cpu_capability().lower() == "default" else "default"
    again = micro_recipe.parent / "run-b"
    done = run_hm3(
        "merge", "--recipe", micro_recipe, "--out", again, "--quiet", timeout=900,
        env={"ATEN_CPU_CAPABILITY": other},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _front(again) == _front(finished_run)
    assert _keys(again) == _keys(finished_run)


def test_resume_after_sigkill_rescores_nothing_and_finishes_the_same_search(
    micro_recipe: Path, finished_run: Path
) -> None:
    run = micro_recipe.parent / "run-killed"
    # kill in the middle of the second preference: fine-tuned (3) + first preference's candidates are logged
    merge_killed_once_logged(micro_recipe, run, 3 + 12)
    before = _keys(run)
    assert not (run / "front.json").exists()

    done = run_hm3("merge", "--resume", run, "--quiet", timeout=900)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    after = _keys(run)
    assert after[: len(before)] == before  # nothing lost
    assert len(after) == len(set(after))  # nothing scored twice
    assert sorted(after) == sorted(_keys(finished_run))  # the same candidates as the uninterrupted run
    assert _front(run) == _front(finished_run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["candidates_scored_this_session"] == len(after) - len(before)


def test_ctrl_c_prints_the_command_that_continues_the_search(micro_recipe: Path) -> None:
    run = micro_recipe.parent / "run-interrupted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "cli.main", "merge", "--recipe", str(micro_recipe), "--out", str(run)]
    process = subprocess.Popen(
        [*command, "--quiet"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # as at a terminal: a suite started in the background (`cmd &`) inherits SIGINT ignored, and Python
        # keeps an ignored SIGINT ignored instead of raising KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    log = run / "candidates.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:  # interrupt once the search has begun
        if log.is_file() and log.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the search ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].endswith(f"continue the search with: hm3 merge --resume {run}")
    assert "Traceback" not in stderr and not (run / "front.json").exists()


def test_pareto_prints_the_front_and_writes_the_plot(finished_run: Path, tmp_path: Path) -> None:
    plot = tmp_path / "front.png"
    done = run_hm3("pareto", finished_run, "--plot", plot)
    assert done.returncode == 0, done.stderr
    assert "hypervolume (heldout)" in done.stdout and "uniform ties" in done.stdout
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = run_hm3("pareto", finished_run, "--split", "search", "--plot", tmp_path / "front.svg")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "front.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["merge", "--resume", "{tmp}/nothing"], "run directory not found"),
        (["merge", "--recipe", "{recipe}", "--out", "{run}"], "exists; continue it with --resume"),
        (["merge", "--resume", "{run}", "--out", "{tmp}/x"], "drop --out"),
        (["merge", "--mergekit", "{recipe}"], "--mergekit needs --out"),
        # flags that would have been ignored silently
        (
            ["merge", "--resume", "{run}", "--force"],
            "continues RUN in place and replaces nothing; drop --force",
        ),
        (["merge", "--recipe", "{recipe}", "--shard-size", "1GB"], "--shard-size applies to --mergekit"),
        (
            ["merge", "--mergekit", "{recipe}", "--out", "{tmp}/m", "--workers", "2"],
            "--workers applies to a search",
        ),
        (["pareto", "{tmp}/nothing"], "run directory not found"),
        (["pareto", "{tmp}"], "is not a run directory (no recipe.yaml)"),  # a folder, but no run
        (["pareto", "{run}", "--plot", "{tmp}/front.jpg"], "must end in .png or .svg"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(
    arguments: list[str], message: str, micro_recipe: Path, finished_run: Path, tmp_path: Path
) -> None:
    filled = [a.format(tmp=tmp_path, recipe=micro_recipe, run=finished_run) for a in arguments]
    done = hm3_in_process(*filled)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_ray_local_cluster_gives_the_same_front_as_the_sequential_run(
    micro_recipe: Path, finished_run: Path
) -> None:
    run = micro_recipe.parent / "run-ray"
    done = run_hm3(
        "merge",
        "--recipe",
        micro_recipe,
        "--out",
        run,
        "--quiet",
        "--ray-address",
        "local",
        "--workers",
        "2",
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert "Ray instance" not in done.stderr and "WARNING" not in done.stderr  # Ray's start-up lines
    assert "ray: 2 workers at local" in (run / "log.txt").read_text()
    assert _front(run) == _front(finished_run)
    assert sorted(_keys(run)) == sorted(_keys(finished_run))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["candidates_scored_this_session"] == len(_keys(run))


def test_an_offloaded_search_finds_the_same_front_with_the_same_scores(
    micro_recipe: Path, finished_run: Path
) -> None:
    from hm3.placement import PoolSizes
    from hm3.pool import ModelPool
    from hm3.recipe import load_recipe

    sizes = PoolSizes.of(ModelPool.from_recipe(load_recipe(micro_recipe)), "float32")
    bound = sizes.candidate(sizes.layers * 3 // 2) + 2 * sizes.layer  # well under the K + 1 models' layers
    assert bound < sizes.members * (sizes.shared + sizes.layers * sizes.layer) / 1.5
    recipe = micro_recipe.parent / "offload.yaml"
    recipe.write_text(micro_recipe.read_text() + f"device_memory: {bound}\n")
    run = micro_recipe.parent / "run-offload"
    done = run_hm3("merge", "--recipe", recipe, "--out", run, "--quiet", timeout=900)
    assert done.returncode == 0, done.stderr
    assert _front(run) == _front(finished_run)  # agents saw the same observations and rewards
    scores = {
        r["key"]: r["scores"] for r in map(json.loads, (run / "candidates.jsonl").read_text().splitlines())
    }
    reference = [json.loads(line) for line in (finished_run / "candidates.jsonl").read_text().splitlines()]
    assert [r["key"] for r in reference] == _keys(run)
    assert all(scores[r["key"]] == r["scores"] for r in reference)


def test_nothing_imports_ray_without_the_flag() -> None:
    import subprocess
    import sys

    code = "import sys, hm3.search.run, cli.merge; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_exporting_a_member_loads_no_objective(finished_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Building a member again needs the models, not the objectives: without ``stats`` alignment (whose maps are
    fitted on a calibration batch of the search split) ``hm3 export`` loads no tokenizer or task — the same
    folder as a run of the search would write."""
    from hm3.evaluate.evaluator import Evaluator
    from hm3.search.export import export_member

    def refuse(recipe):
        raise AssertionError("the export built an Evaluator")

    monkeypatch.setattr(Evaluator, "from_recipe", staticmethod(refuse))
    front = json.loads((finished_run / "front.json").read_text())
    member = max(front["members"], key=lambda m: m["path"] is not None)
    out = export_member(finished_run, member["id"], tmp_path / "exported")
    assert (out / "config.json").is_file() and (out / "README.md").is_file()


def test_a_stats_aligned_member_exports_with_the_search_s_calibration(
    micro_recipe: Path, tmp_path: Path
) -> None:
    """With ``stats`` alignment the export loads the objectives for the calibration batch, so a routed member's
    maps are fitted on what the search fitted them on: the same files as built from the search's own inputs."""
    from hm3.merge.spec import MergeSpec
    from hm3.recipe import load_recipe
    from hm3.search.candidate import Candidate
    from hm3.search.export import export_candidate
    from hm3.search.models import CandidateModels
    from hm3.search.session import load_candidate_models, load_inputs

    stats = tmp_path / "stats.yaml"
    stats.write_text(micro_recipe.read_text() + "architecture_level: {enabled: true, alignment: stats}\n")
    recipe = load_recipe(stats)
    inputs = load_inputs(recipe)
    spec = MergeSpec(method="task_arithmetic", weights=(0.4, 0.3, 0.3))
    written = {}
    for name, models in (
        ("export", load_candidate_models(recipe)),
        ("search", CandidateModels(inputs.pool, recipe, inputs.calibration)),
    ):
        assert models.calibration is not None
        routing = models.routing_pool(spec)
        merged = routing.merged_index
        path = [(merged, 0), (0, 1), *[(merged, layer) for layer in range(2, routing.num_layers)]]
        candidate = Candidate.routed(spec, path, "stats", routing)
        out = export_candidate(models, recipe, "run", candidate, tmp_path / name, False, "t", [1 / 3] * 3, {})
        written[name] = {f.name: f.read_bytes() for f in sorted(out.iterdir()) if f.suffix == ".safetensors"}
    assert "hm3_alignment.safetensors" in written["export"]
    assert written["export"] == written["search"]


def test_validating_loads_the_tasks_without_the_model_side_of_lm_eval(micro_recipe: Path) -> None:
    """``hm3 validate`` loads each local task as the evaluator does (data read, metric checked, split non-empty)
    without lm-eval's model classes and evaluator, or transformers: a recipe is checked in a few seconds."""
    probe = (
        "import sys; from cli.main import main; code = main(['validate', sys.argv[1]]); "
        "print(code, sorted(m for m in ('transformers', 'lm_eval.models.huggingface', 'lm_eval.evaluator') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(micro_recipe)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok:") and done.stdout.splitlines()[-1] == "0 []", done.stdout


def test_exported_member_scores_what_the_front_says(
    micro_recipe: Path, finished_run: Path, tmp_path: Path
) -> None:
    front = json.loads((finished_run / "front.json").read_text())
    member = max(front["members"], key=lambda m: m["path"] is not None)  # a routed member when there is one
    out = tmp_path / "exported"
    done = run_hm3("export", finished_run, "--member", member["id"][:8], "--out", out)
    assert done.returncode == 0, done.stderr
    done = run_hm3("eval", "--recipe", micro_recipe, "--model", out, "--split", "heldout", "--json")
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)["scores"][str(out)]
    for name, value in member["scores"]["heldout"].items():
        assert scores[name] == pytest.approx(value, abs=1e-9)
    done = run_hm3("export", finished_run, "--member", "zzz", "--out", tmp_path / "x")
    assert done.returncode == 2 and "no front member has an id starting with 'zzz'" in done.stderr


PERPLEXITY_TASK = """task: toy_addition_perplexity
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{zoo}/data/toy_addition.jsonl"
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
target_delimiter: ""
num_fewshot: 0
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
metadata:
  version: 1.0
"""


def test_an_objective_left_to_its_task_is_searched_in_the_tasks_direction(
    lm_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    # the recipe leaves the direction of a perplexity to its task, which says lower is better: hm3 eval always
    # showed it so, but the search read the recipe's default and maximised the perplexity
    task = tmp_path / "toy_addition_perplexity.yaml"
    task.write_text(PERPLEXITY_TASK.format(zoo=lm_zoo_micro))
    recipe = tmp_path / "perplexity.yaml"
    recipe.write_text(
        MICRO_SEARCH.format(zoo=lm_zoo_micro)
        .replace(
            f"  - {{name: addition, task: {lm_zoo_micro}/tasks/toy_addition.yaml, metric: exact_match}}",
            f"  - {{name: perplexity, task: {task}, metric: perplexity, model: addition}}",
        )
        .replace("metric: exact_match}", "metric: exact_match, model: reversal}", 1)
        .replace("metric: exact_match}", "metric: exact_match, model: sorting}", 1)
        .replace("{count: 0, include_corners: true}", "{count: 1}")
        .replace("iterations: 8,", "iterations: 3,")
    )
    run = tmp_path / "run"
    done = run_hm3("merge", "--recipe", recipe, "--out", run, "--quiet", timeout=900)
    assert done.returncode == 0, done.stderr
    front = json.loads((run / "front.json").read_text())
    assert front["objectives"] == ["perplexity", "reversal", "sorting"]
    assert front["higher_is_better"] == [False, True, True]

    def oriented(scores: dict) -> list[float]:
        return [-scores["perplexity"], scores["reversal"], scores["sorting"]]

    records = [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]
    logged = [
        oriented(r["scores"]) for r in records if r["split"] == "search" and r["level"] in ("merge", "path")
    ]
    for member in front["members"]:
        point = oriented(member["scores"]["search"])
        assert not any(all(a >= b for a, b in zip(q, point, strict=True)) and q != point for q in logged)
    assert "perplexity ↓" in run_hm3("pareto", run).stdout
    # a front member for a preference on the perplexity alone is the one with the lowest perplexity
    done = run_hm3("select", run, "--preference", "1,0,0")
    assert done.returncode == 0, done.stderr
    chosen = done.stdout.split("front member ", 1)[1].split(",", 1)[0]
    perplexity = {m["id"][:12]: m["scores"]["search"]["perplexity"] for m in front["members"]}
    assert perplexity[chosen] == min(perplexity.values())
