"""The CLI used carelessly or with hostile intent: outputs over inputs, edited runs, two processes in one run,
killed writers. Every refusal exits 2 in one line without a traceback, and no input file changes (each test
hashes the input trees before and after).

The inputs are a private copy of the micro zoo (two specialists, two tasks), so a zoo rebuilt meanwhile does not
disturb the comparison; one finished run (a single preference, parameter level only) serves every test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.fixtures_models import hm3_in_process, run_hm3
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

RECIPE = """
base_model: {{path: {zoo}/base}}
models:
  - {{name: addition, path: {zoo}/addition}}
  - {{name: reversal, path: {zoo}/reversal}}
objectives:
  - {{name: addition, task: {zoo}/tasks/toy_addition.yaml, metric: exact_match, limit: 8}}
  - {{name: reversal, task: {zoo}/tasks/toy_reversal.yaml, metric: exact_match, limit: 8}}
split: {{search_fraction: 0.7, seed: 0}}
parameter_level: {{method: task_arithmetic}}
architecture_level: {{enabled: false}}
preferences: {{count: 0, include_corners: false}}
seed: 0
"""

MERGEKIT = """
merge_method: task_arithmetic
base_model: {base}
models:
  - {{model: {a}, parameters: {{weight: 0.5}}}}
  - {{model: {b}, parameters: {{weight: 0.5}}}}
dtype: float32
"""


@dataclass(frozen=True)
class Inputs:
    root: Path
    zoo: Path
    recipe: Path
    mergekit: Path
    run: Path

    def digest(self) -> dict[str, str]:
        """sha256 of every input file (models, tasks, data, recipe, mergekit config, the finished run)."""
        return tree_digest(self.zoo, self.recipe, self.mergekit, self.run)

    def member(self) -> str:
        return json.loads((self.run / "front.json").read_text())["members"][0]["id"]


def tree_digest(*paths: Path) -> dict[str, str]:
    found = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def inputs(lm_zoo_micro: Path, tmp_path_factory) -> Inputs:  # noqa: F811
    root = tmp_path_factory.mktemp("hostile")
    zoo = root / "zoo"
    for name in ("base", "addition", "reversal", "data"):
        shutil.copytree(lm_zoo_micro / name, zoo / name)
    (zoo / "tasks").mkdir()
    for name in ("toy_addition", "toy_reversal"):  # the copies read the copied data
        text = (lm_zoo_micro / "tasks" / f"{name}.yaml").read_text()
        (zoo / "tasks" / f"{name}.yaml").write_text(text.replace(str(lm_zoo_micro), str(zoo)))
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE.format(zoo=zoo))
    mergekit = root / "mergekit.yml"
    mergekit.write_text(MERGEKIT.format(base=zoo / "base", a=zoo / "addition", b=zoo / "reversal"))
    run = root / "runs" / "run"
    done = run_hm3("merge", "--recipe", recipe, "--out", run, "--quiet", timeout=600)
    assert done.returncode == 0, done.stderr
    return Inputs(root, zoo, recipe, mergekit, run)


def assert_refused(done: subprocess.CompletedProcess[str], *messages: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for message in messages:
        assert message in done.stderr, done.stderr


def copy_of_run(inputs: Inputs, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(inputs.run, copy)
    return copy


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# -- outputs that overlap inputs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("out", "force", "relation"),
    [
        ("{zoo}", True, "contains the input model"),  # the zoo holding the recipe's models
        ("{zoo}/addition", True, "is the input model"),
        ("{zoo}/addition/run", False, "lies inside the input model"),
        ("{zoo}/tasks/toy_addition.yaml", True, "is the task file"),
        ("{root}", True, "contains the input model"),  # the folder of the recipe itself
        ("{root}/recipe.yaml", True, "is the recipe"),
    ],
)
def test_a_run_over_an_input_is_refused(inputs: Inputs, out: str, force: bool, relation: str) -> None:
    before = inputs.digest()
    target = Path(out.format(zoo=inputs.zoo, root=inputs.root))
    flags = ["--force"] if force else []
    done = hm3_in_process("merge", "--recipe", inputs.recipe, "--out", target, *flags, "--quiet")
    assert_refused(done, relation, "never writes over its inputs")
    assert inputs.digest() == before
    assert not (inputs.zoo / "addition" / "run").exists()


def test_a_baseline_over_an_input_is_refused(inputs: Inputs) -> None:
    before = inputs.digest()
    done = hm3_in_process(
        "baseline", "--recipe", inputs.recipe, "--method", "uniform", "--out", inputs.zoo, "--force"
    )
    assert_refused(done, "contains the input model")
    assert inputs.digest() == before


@pytest.mark.parametrize(
    ("out", "force", "message"),
    [
        ("{zoo}/addition", True, "replaces only folders hm3 wrote"),  # an input model: not hm3's
        ("{zoo}", True, "replaces only folders hm3 wrote"),  # the folder holding every input
        ("{zoo}/base/merged", False, "lies inside the input model"),
        ("{run}", True, "is a run folder hm3 wrote, not a model folder"),
    ],
)
def test_a_mergekit_output_over_an_input_is_refused(
    inputs: Inputs, out: str, force: bool, message: str
) -> None:
    before = inputs.digest()
    target = Path(out.format(zoo=inputs.zoo, run=inputs.run))
    flags = ["--force"] if force else []
    done = hm3_in_process("merge", "--mergekit", inputs.mergekit, "--out", target, *flags, "--quiet")
    assert_refused(done, message)
    assert inputs.digest() == before
    assert not (inputs.zoo / "base" / "merged").exists()


def test_a_model_hm3_wrote_is_not_replaced_while_it_is_an_input(inputs: Inputs, tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    done = run_hm3("merge", "--mergekit", inputs.mergekit, "--out", merged, "--quiet")
    assert done.returncode == 0, done.stderr
    config = tmp_path / "again.yml"
    config.write_text(MERGEKIT.format(base=inputs.zoo / "base", a=merged, b=inputs.zoo / "reversal"))
    before = tree_digest(merged)
    done = hm3_in_process("merge", "--mergekit", config, "--out", merged, "--force", "--quiet")
    assert_refused(done, f"is the input model {merged}")
    assert tree_digest(merged) == before


@pytest.mark.parametrize(
    ("out", "force", "message"),
    [
        ("{run}", True, "is the run"),  # the run being exported
        ("{run}/model", False, "lies inside the run"),
        ("{zoo}/base", True, "is the input model"),
    ],
)
def test_an_export_over_its_run_or_an_input_is_refused(
    inputs: Inputs, out: str, force: bool, message: str
) -> None:
    before = inputs.digest()
    target = Path(out.format(zoo=inputs.zoo, run=inputs.run))
    flags = ["--force"] if force else []
    done = hm3_in_process("export", inputs.run, "--member", inputs.member(), "--out", target, *flags)
    assert_refused(done, message, "never writes over its inputs")
    assert inputs.digest() == before


def test_an_upper_level_members_card_names_no_preference(inputs: Inputs, tmp_path: Path) -> None:
    """The optimised upper level's merges are scored for no one λ: the card said "preference λ = []"."""
    done = hm3_in_process("export", inputs.run, "--member", inputs.member(), "--out", tmp_path / "model")
    assert done.returncode == 0, done.stderr
    card = (tmp_path / "model" / "README.md").read_text()
    assert "scored for no single preference" in card and "λ = []" not in card, card
    assert "inference path: the merged model itself" in card


def test_an_export_below_a_file_says_the_file_is_not_a_folder(inputs: Inputs, tmp_path: Path) -> None:
    (tmp_path / "env.sh").write_text("export A=1\n")
    done = hm3_in_process(
        "export", inputs.run, "--member", inputs.member(), "--out", tmp_path / "env.sh" / "x"
    )
    assert_refused(done, f"{tmp_path / 'env.sh'} is not a folder")  # it said "folder env.sh does not exist"
    assert (tmp_path / "env.sh").read_text() == "export A=1\n"


def test_force_replaces_an_exported_model_only_while_it_holds_only_what_hm3_wrote(
    inputs: Inputs, tmp_path: Path
) -> None:
    """An export's marker lists its files; a user's file added since is not deleted by ``--force``."""
    model = tmp_path / "model"
    done = hm3_in_process("export", inputs.run, "--member", inputs.member(), "--out", model)
    assert done.returncode == 0, done.stderr
    assert "config.json" in json.loads((model / ".hm3-output.json").read_text())["files"]
    (model / "my_notes.txt").write_text("mine")
    done = hm3_in_process("export", inputs.run, "--member", inputs.member(), "--out", model, "--force")
    assert_refused(done, "now also holds my_notes.txt", "move them out")
    assert (model / "my_notes.txt").read_text() == "mine"
    (model / "my_notes.txt").unlink()
    done = hm3_in_process("export", inputs.run, "--member", inputs.member(), "--out", model, "--force")
    assert done.returncode == 0 and "replacing the model folder" in done.stderr, done.stderr


@pytest.mark.parametrize("marker", ["removed", "without its file list"])
def test_force_keeps_a_users_files_in_an_export_whose_marker_lists_none(
    inputs: Inputs, tmp_path: Path, marker: str
) -> None:
    """An export from before the marker (or before its file list) — or any folder holding ``hm3_routing.json``,
    as every export does — once lost everything in it to ``--force``; now only the files an export writes go."""
    model = tmp_path / "model"
    done = hm3_in_process("export", inputs.run, "--member", inputs.member(), "--out", model)
    assert done.returncode == 0, done.stderr
    if marker == "removed":
        (model / ".hm3-output.json").unlink()
    else:
        (model / ".hm3-output.json").write_text('{"written_by": "hm3", "kind": "model"}\n')
    (model / "notes.txt").write_text("mine")
    (model / "eval").mkdir()
    (model / "eval" / "results.json").write_text("{}")
    done = hm3_in_process("export", inputs.run, "--member", inputs.member(), "--out", model, "--force")
    assert_refused(done, "now also holds eval/results.json, notes.txt")
    assert (model / "notes.txt").read_text() == "mine" and (model / "eval" / "results.json").is_file()
    (model / "notes.txt").unlink()
    shutil.rmtree(model / "eval")
    done = hm3_in_process("export", inputs.run, "--member", inputs.member(), "--out", model, "--force")
    assert done.returncode == 0 and "replacing the model folder" in done.stderr, done.stderr


def test_force_replaces_a_run_only_while_it_holds_only_what_hm3_writes_there(
    inputs: Inputs, tmp_path: Path
) -> None:
    """A run folder grows after it is marked, so no list of its files exists: ``--force`` knows the names hm3
    writes at its top (and plots), and a user's file or folder added beside them is not deleted."""
    run = copy_of_run(inputs, tmp_path)
    done = hm3_in_process("pareto", run, "--plot", run / "front.png")  # as `hm3 merge` suggests
    assert done.returncode == 0, done.stderr
    (run / "notes.txt").write_text("mine")
    (run / "analysis").mkdir()
    (run / "analysis" / "table.csv").write_text("1,2\n")
    before = tree_digest(run)
    done = hm3_in_process("merge", "--recipe", inputs.recipe, "--out", run, "--force", "--quiet")
    assert_refused(done, "now also holds analysis/, notes.txt", "move them out")
    assert tree_digest(run) == before
    shutil.rmtree(run / "analysis")
    (run / "notes.txt").unlink()
    done = hm3_in_process("merge", "--recipe", inputs.recipe, "--out", run, "--force", "--quiet")
    assert done.returncode == 0 and "replacing the run folder" in done.stderr, done.stderr
    assert not (run / "front.png").exists()  # the old run's plot went with it


def test_force_keeps_what_a_user_put_inside_a_runs_own_sub_folders(inputs: Inputs, tmp_path: Path) -> None:
    """Below ``policy/``, ``mergekit/`` and ``preferences/`` hm3 knows the names it writes; a model copied into
    ``policy/``, notes beside the mergekit configurations, or a model written into ``merged/`` from them (as
    the configurations suggest) were deleted with the run by ``--force`` (only the top level was checked)."""
    run = copy_of_run(inputs, tmp_path)
    for placed, where in [
        (lambda: shutil.copytree(inputs.zoo / "reversal", run / "policy" / "my_model"), "policy/my_model/"),
        (lambda: (run / "mergekit" / "my_notes.txt").write_text("mine"), "mergekit/my_notes.txt"),
        (lambda: shutil.copytree(inputs.zoo / "reversal", run / "merged" / "abc123"), "merged/abc123/"),
    ]:
        placed()
        before = tree_digest(run)
        done = hm3_in_process("merge", "--recipe", inputs.recipe, "--out", run, "--force", "--quiet")
        assert_refused(done, "now also holds", where)
        assert tree_digest(run) == before
        added = run / where.rstrip("/")
        shutil.rmtree(added) if added.is_dir() else added.unlink()
    done = hm3_in_process("merge", "--recipe", inputs.recipe, "--out", run, "--force", "--quiet")
    assert done.returncode == 0 and "replacing the run folder" in done.stderr, done.stderr


def test_the_names_force_takes_for_a_run_s_are_the_ones_hm3_writes(inputs: Inputs) -> None:
    from hm3.output_guard import MARKER, RUN_ENTRIES, foreign_run_entries
    from hm3.run_fingerprint import FINGERPRINT_FILE
    from hm3.run_lock import LOCK_FILE
    from hm3.search.finish import MERGED_MODELS_DIR
    from hm3.search.preference import POLICY_DIR
    from hm3.search.run import PREFERENCES_DIR
    from hm3.store import CANDIDATES_FILE, FRONT_FILE, LOG_FILE, RECIPE_FILE, SUMMARY_FILE

    written = {MARKER, LOCK_FILE, FINGERPRINT_FILE, MERGED_MODELS_DIR, POLICY_DIR, PREFERENCES_DIR}
    written |= {CANDIDATES_FILE, FRONT_FILE, LOG_FILE, RECIPE_FILE, SUMMARY_FILE, "mergekit", "baseline.json"}
    assert written <= RUN_ENTRIES
    assert foreign_run_entries(inputs.run) == []


def test_force_never_replaces_a_run_that_holds_a_task_s_data_or_a_recipe_include(
    inputs: Inputs, tmp_path: Path
) -> None:
    """A task YAML's ``data_files`` and a recipe's ``include:`` are inputs too: ``--force`` once deleted both
    when they lay in the run folder it replaced."""
    run = copy_of_run(inputs, tmp_path)
    (run / "mydata").mkdir()
    shutil.copy(inputs.zoo / "data" / "toy_addition.jsonl", run / "mydata")
    task = tmp_path / "toy_addition.yaml"
    task.write_text(
        (inputs.zoo / "tasks" / "toy_addition.yaml")
        .read_text()
        .replace(str(inputs.zoo / "data"), str(run / "mydata"))
    )
    assert str(run / "mydata") in task.read_text()
    recipe = tmp_path / "data.yaml"
    recipe.write_text(
        inputs.recipe.read_text().replace(str(inputs.zoo / "tasks" / "toy_addition.yaml"), str(task))
    )
    (run / "defaults.yaml").write_text("seed: 0\n")
    before = tree_digest(run)
    done = hm3_in_process("merge", "--recipe", recipe, "--out", run, "--force", "--quiet")
    assert_refused(done, "contains the file a task reads", "toy_addition.jsonl")
    included = tmp_path / "included.yaml"
    included.write_text(
        f"include: {run / 'defaults.yaml'}\n" + inputs.recipe.read_text().replace("seed: 0", "")
    )
    done = hm3_in_process("merge", "--recipe", included, "--out", run, "--force", "--quiet")
    assert_refused(done, "contains the recipe's include", "defaults.yaml")
    assert tree_digest(run) == before


def test_force_replaces_only_a_folder_hm3_wrote_of_the_same_kind(inputs: Inputs, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    before = inputs.digest()
    done = hm3_in_process("merge", "--recipe", inputs.recipe, "--out", mine, "--force", "--quiet")
    assert_refused(done, "replaces only folders hm3 wrote")
    done = hm3_in_process("export", inputs.run, "--member", inputs.member(), "--out", mine, "--force")
    assert_refused(done, "replaces only folders hm3 wrote")
    assert (mine / "notes.txt").read_text() == "mine" and len(list(mine.iterdir())) == 1
    model = tmp_path / "model"
    model.mkdir()
    (model / ".hm3-output.json").write_text('{"written_by": "hm3", "kind": "model"}\n')
    done = hm3_in_process("merge", "--recipe", inputs.recipe, "--out", model, "--force", "--quiet")
    assert_refused(done, "is a model folder hm3 wrote, not a run folder")
    assert inputs.digest() == before


# -- edited run folders ---------------------------------------------------------------------------------


def _edit_recipe(run: Path, edit) -> None:
    data = yaml.safe_load((run / "recipe.yaml").read_text())
    edit(data)
    (run / "recipe.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _edit_fingerprint(run: Path, ending: str) -> None:
    fingerprint = json.loads((run / "fingerprint.json").read_text())
    [path] = [p for p in fingerprint["files"] if p.endswith(ending)]
    fingerprint["files"][path] = "sha256:" + "0" * 64  # the run was scored on other contents
    (run / "fingerprint.json").write_text(json.dumps(fingerprint))


EDITS = {
    "task swapped": (
        lambda run: _edit_recipe(run, lambda d: d["objectives"][0].update(task=d["objectives"][1]["task"])),
        "objectives[0].task: ",
    ),
    "metric changed": (
        lambda run: _edit_recipe(run, lambda d: d["objectives"][0].update(metric="acc")),
        "objectives[0].metric: 'exact_match' -> 'acc'",
    ),
    "split changed": (
        lambda run: _edit_recipe(run, lambda d: d["split"].update(search_fraction=0.5)),
        "split.search_fraction: 0.7 -> 0.5",
    ),
    "iterations raised": (
        lambda run: _edit_recipe(run, lambda d: d["agent"].update(iterations=d["agent"]["iterations"] * 2)),
        "agent.iterations: ",
    ),
    "preference count raised": (
        lambda run: _edit_recipe(run, lambda d: d["preferences"].update(count=3)),
        "preferences.count: 0 -> 3",
    ),
    "task file changed": (
        lambda run: _edit_fingerprint(run, "toy_addition.yaml"),
        "toy_addition.yaml changed",
    ),
    "data changed": (lambda run: _edit_fingerprint(run, "toy_reversal.jsonl"), "toy_reversal.jsonl changed"),
    "fingerprint damaged": (
        lambda run: (run / "fingerprint.json").write_text('["not", "a", "fingerprint"]'),
        "fingerprint.json is damaged",
    ),
    "no fingerprint (an older hm3)": (
        lambda run: (run / "fingerprint.json").unlink(),
        "has no fingerprint.json",
    ),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_resuming_an_edited_run_is_refused_naming_the_change(
    inputs: Inputs, tmp_path: Path, edit: str
) -> None:
    run = copy_of_run(inputs, tmp_path)
    change, message = EDITS[edit]
    change(run)
    before, run_before = inputs.digest(), tree_digest(run)
    done = hm3_in_process("merge", "--resume", run, "--quiet")
    assert_refused(done, f"cannot resume {run}", message)
    assert inputs.digest() == before
    assert tree_digest(run) == run_before
    if edit == "task file changed":  # the readers say what they were asked to do
        done = hm3_in_process("select", run, "--preference", "1,1,1")
        assert_refused(done, f"cannot select from {run}", message)
        done = hm3_in_process("export", run, "--member", "0", "--out", tmp_path / "out")
        assert_refused(done, f"cannot export from {run}", message)
        assert tree_digest(run) == run_before and not (tmp_path / "out").exists()


def test_resuming_with_device_memory_added_offloads_without_touching_the_scores(
    inputs: Inputs, tmp_path: Path
) -> None:
    run = copy_of_run(inputs, tmp_path)
    log = (run / "candidates.jsonl").read_text()
    stored = (run / "recipe.yaml").read_text()
    assert "\ndevice_memory: null\n" in stored  # the stored recipe spells out every setting, this one too
    # where tensors live is not part of the run's fingerprint (a second device_memory line would be refused)
    (run / "recipe.yaml").write_text(stored.replace("\ndevice_memory: null\n", "\ndevice_memory: 64MiB\n"))
    done = run_hm3("merge", "--resume", run)
    assert done.returncode == 0, done.stderr
    assert "offload: the models stay in host memory" in done.stdout + done.stderr
    assert (run / "candidates.jsonl").read_text().startswith(log)


def _edit_weights(run: Path) -> None:
    """The run was started on weights of another modification time (what a rebuilt zoo leaves)."""
    fingerprint = json.loads((run / "fingerprint.json").read_text())
    files = fingerprint["models"][next(p for p in fingerprint["models"] if p.endswith("addition"))]
    files[next(iter(files))][1] -= 10**9
    (run / "fingerprint.json").write_text(json.dumps(fingerprint))


def test_a_run_whose_model_weights_changed_is_refused_with_exit_code_3(
    inputs: Inputs, tmp_path: Path
) -> None:
    """Exit 3 for this refusal alone (``make demo`` starts afresh on it); with any other change besides, 2."""
    run = copy_of_run(inputs, tmp_path)
    _edit_weights(run)
    before, run_before = inputs.digest(), tree_digest(run)
    done = hm3_in_process("merge", "--resume", run, "--quiet")
    assert done.returncode == 3, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert (
        f"cannot resume {run}: the weight files in {inputs.zoo / 'addition'} were written again"
        in done.stderr
    )
    assert "sizes and sampled bytes are the same" in done.stderr  # times alone: said so (a copy, a touch)
    assert inputs.digest() == before and tree_digest(run) == run_before
    _edit_fingerprint(run, "toy_reversal.jsonl")  # the weights and a data file: not only the models
    assert_refused(hm3_in_process("merge", "--resume", run, "--quiet"), "toy_reversal.jsonl changed")


@pytest.mark.parametrize("marker", ["baseline.json", "summary.json"])
def test_merge_resume_refuses_a_baseline_run(marker: str, inputs: Inputs, tmp_path: Path) -> None:
    """It once searched a finished ``hm3 baseline`` run again as HM3, overwriting the baseline's front and
    summary with both methods' candidates (baseline.json: written when a baseline starts; summary.json: a run
    the benchmarks made through the API)."""
    run = copy_of_run(inputs, tmp_path)
    (run / marker).write_text(json.dumps({"method": "cmaes", "budget": 1}))
    before = tree_digest(run)
    done = hm3_in_process("merge", "--resume", run, "--quiet")
    assert_refused(done, "is a run of hm3 baseline --method cmaes")
    assert tree_digest(run) == before


def test_a_run_whose_model_configuration_changed_is_refused_with_exit_code_3(
    inputs: Inputs, tmp_path: Path
) -> None:
    """A model's config.json (or tokenizer files) edited since the run started: the same refusal as changed
    weights — once only the weight files were compared, and a run mixed scores of two model definitions."""
    run = copy_of_run(inputs, tmp_path)
    fingerprint = json.loads((run / "fingerprint.json").read_text())
    addition = str(inputs.zoo / "addition")
    files = fingerprint["model_files"][addition]
    assert {"config.json", "tokenizer.json"} <= set(files) and "model.safetensors" not in files
    files["config.json"] = "sha256:0"  # what it held when the run started
    (run / "fingerprint.json").write_text(json.dumps(fingerprint))
    done = hm3_in_process("merge", "--resume", run, "--quiet")
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"config.json in {addition} changed" in done.stderr and len(done.stderr.splitlines()) == 1
    done = hm3_in_process("select", run, "--preference", "1,1")
    assert done.returncode == 3 and "config.json" in done.stderr, done.stderr
    del fingerprint["model_files"]  # a run an hm3 started before they were recorded: not checked for them
    (run / "fingerprint.json").write_text(json.dumps(fingerprint))
    done = hm3_in_process("merge", "--resume", run, "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("resume_exit", "make_exit", "afresh"),
    [(0, 0, False), (3, 0, True), (2, 2, False), (1, 1, False)],
    ids=["resumed", "models-changed", "other-refusal", "crash"],
)
def test_make_demo_starts_afresh_only_when_the_models_changed(
    resume_exit: int, make_exit: int, afresh: bool, tmp_path: Path
) -> None:
    """The demo target with a stand-in ``hm3`` whose ``merge --resume`` exits with ``resume_exit``."""
    bin_folder, run, calls = tmp_path / "bin", tmp_path / "runs" / "toy-lm", tmp_path / "calls.txt"
    bin_folder.mkdir()
    hm3 = bin_folder / "hm3"
    hm3.write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        f'case "$*" in "merge --resume"*) exit {resume_exit};; esac\nexit 0\n'
    )
    hm3.chmod(0o755)
    stamp = tmp_path / "installed"
    stamp.touch()
    os.utime(stamp, (time.time() + 3600, time.time() + 3600))  # newer than setup.cfg: no install
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("{}\n")
    done = subprocess.run(
        ["make", "-s", "demo", f"BIN={bin_folder}", f"STAMP={stamp}", f"DEMO_RUN={run}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == (0 if make_exit == 0 else 2), done.stdout + done.stderr  # make: 2 on failure
    lines = calls.read_text().splitlines()
    assert lines[1] == f"merge --resume {run}"
    forced = f"merge --recipe recipes/toy-lm.yaml --out {run} --force"
    assert (forced in lines) == afresh
    assert (f"pareto {run} --plot {run}/front.png" in lines) == (make_exit == 0)


def test_the_fingerprint_follows_includes_code_and_data(tmp_path: Path) -> None:
    from hm3.recipe import recipe_from_dict
    from hm3.run_fingerprint import fingerprint_changes, input_files, run_fingerprint

    tasks, data = tmp_path / "tasks", tmp_path / "data.jsonl"
    tasks.mkdir()
    data.write_text('{"prompt": "1+1=", "target": "2"}\n')
    (tasks / "common.yaml").write_text("output_type: generate_until\nprocess_docs: !function utils.keep\n")
    (tasks / "utils.py").write_text("def keep(docs):\n    return docs\n")
    (tasks / "t.yaml").write_text(
        f"include: common.yaml\ntask: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
    )
    recipe = recipe_from_dict(
        {
            "base_model": "/models/base",
            "models": ["/models/a"],
            "objectives": [{"name": "x", "task": str(tasks / "t.yaml")}],
        }
    )
    assert set(input_files(recipe)) == {tasks / "t.yaml", tasks / "common.yaml", tasks / "utils.py", data}
    then = run_fingerprint(recipe)
    (tasks / "utils.py").write_text("def keep(docs):\n    return docs[:1]\n")  # the code that shapes the docs
    now = run_fingerprint(recipe)
    assert fingerprint_changes(then, now) == [f"{tasks / 'utils.py'} changed"]
    assert now["scoring"] != then["scoring"]


def test_the_fingerprint_follows_the_files_a_data_pattern_matches(tmp_path: Path) -> None:
    """``data_files`` may be a pattern (``datasets`` expands it): the files it matches were not fingerprinted,
    so data replaced under a run resumed silently, mixing old and new scores in one log."""
    from hm3.recipe import recipe_from_dict
    from hm3.run_fingerprint import fingerprint_changes, input_files, run_fingerprint

    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "a.jsonl").write_text('{"prompt": "1+1=", "target": "2"}\n')
    task = tmp_path / "t.yaml"
    task.write_text(
        f"task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: '{parts}/*.jsonl'\n"
    )
    recipe = recipe_from_dict(
        {
            "base_model": "/models/base",
            "models": ["/models/a"],
            "objectives": [{"name": "x", "task": str(task)}],
        }
    )
    assert set(input_files(recipe)) == {task, parts / "a.jsonl"}
    then = run_fingerprint(recipe)
    (parts / "a.jsonl").write_text('{"prompt": "2+2=", "target": "4"}\n')
    assert fingerprint_changes(then, run_fingerprint(recipe)) == [f"{parts / 'a.jsonl'} changed"]
    (parts / "b.jsonl").write_text('{"prompt": "3+3=", "target": "6"}\n')
    assert f"{parts / 'b.jsonl'} is new" in fingerprint_changes(then, run_fingerprint(recipe))


def test_two_models_that_swap_folders_under_a_run_are_noticed(inputs: Inputs, tmp_path: Path) -> None:
    """Two fine-tunes of one base have the same size, and copies made with ``cp -p``, ``rsync -a`` or an archive
    the same times: size and time alone let them trade places under a run, which then resumed and exported the
    other model's weights as this one's."""
    from hm3.recipe import recipe_from_dict
    from hm3.run_fingerprint import fingerprint_changes, models_changed, run_fingerprint

    zoo = tmp_path / "zoo"
    for name in ("base", "addition", "reversal"):
        shutil.copytree(inputs.zoo / name, zoo / name)
        os.utime(zoo / name / "model.safetensors", ns=(10**18, 10**18))  # as an archive restores them
    first, second = (zoo / n / "model.safetensors" for n in ("addition", "reversal"))
    assert first.stat().st_size == second.stat().st_size
    recipe = recipe_from_dict(
        {
            "base_model": str(zoo / "base"),
            "models": [str(zoo / "addition"), str(zoo / "reversal")],
            "objectives": [
                {"name": n, "model": n, "task": str(inputs.zoo / "tasks" / f"toy_{n}.yaml")}
                for n in ("addition", "reversal")
            ],
        }
    )
    then = run_fingerprint(recipe)
    (zoo / "addition").rename(zoo / "swap")
    (zoo / "reversal").rename(zoo / "addition")
    (zoo / "swap").rename(zoo / "reversal")
    now = run_fingerprint(recipe)
    assert then["models"] == now["models"]  # what size and time see
    assert models_changed(then, now)
    changes = fingerprint_changes(then, now)
    assert f"the weights in {zoo / 'addition'}, {zoo / 'reversal'} changed (their bytes)" in changes, changes


def test_every_logged_score_is_keyed_by_what_decided_it(inputs: Inputs) -> None:
    from hm3.evaluate.cache import candidate_key

    scoring = json.loads((inputs.run / "fingerprint.json").read_text())["scoring"]
    records = [json.loads(line) for line in (inputs.run / "candidates.jsonl").read_text().splitlines()]
    spec = {"finetuned": "addition", "split": "search", "objectives": ["addition", "reversal"]}
    assert candidate_key({**spec, "scoring": scoring}) in {r["key"] for r in records}
    assert candidate_key(spec) not in {r["key"] for r in records}


# -- one process at a time ------------------------------------------------------------------------------


def test_a_second_process_is_refused_and_a_killed_holders_lock_is_taken_over(
    inputs: Inputs, tmp_path: Path
) -> None:
    run = copy_of_run(inputs, tmp_path)
    before = inputs.digest()
    command = [sys.executable, "-m", "cli.main", "merge", "--resume", str(run), "--quiet"]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = run / ".hm3.lock"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if lock.is_file() and lock.read_text().startswith(f'{{"pid": {first.pid},'):
                break
            time.sleep(0.02)
        assert first.poll() is None, "the first resume ended before it was seen holding the lock"
        first.send_signal(signal.SIGSTOP)  # it holds the run; it stays there until killed
        second = run_hm3("merge", "--resume", run, "--quiet")
        assert_refused(second, f"is in use by process {first.pid}")
        replace = run_hm3("merge", "--recipe", inputs.recipe, "--out", run, "--force", "--quiet")
        assert_refused(replace, f"is in use by process {first.pid}")
    finally:
        first.kill()
        first.wait()
    assert lock.is_file()  # what the killed process left: a file, but no lock
    records = len((run / "candidates.jsonl").read_text().splitlines())
    third = run_hm3("merge", "--resume", run, "--quiet")
    assert third.returncode == 0, third.stderr
    assert "resuming" in third.stdout
    assert not lock.exists()
    assert len((run / "candidates.jsonl").read_text().splitlines()) == records  # nothing scored again
    assert inputs.digest() == before


def test_a_stale_lock_file_is_taken_over_and_a_live_holder_is_named(inputs: Inputs, tmp_path: Path) -> None:
    from hm3.errors import UserError
    from hm3.run_lock import LOCK_FILE
    from hm3.store import RunStore

    run = copy_of_run(inputs, tmp_path)
    pid = dead_pid()
    stale = {"pid": pid, "host": "here", "command": "hm3 merge --resume", "since": "then"}
    (run / LOCK_FILE).write_text(json.dumps(stale))
    with RunStore.resume(run)[0]:
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (run / LOCK_FILE).exists()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from hm3.run_lock import RunLock; RunLock({str(run)!r}).acquire(); input()"],
        cwd=REPO,
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (run / LOCK_FILE).is_file() or not (run / LOCK_FILE).read_text():
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.02)
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
            RunStore.resume(run)
    finally:
        holder.kill()
        holder.wait()


# -- failed starts and killed writers -------------------------------------------------------------------


def test_a_failed_start_leaves_no_run_and_replaces_nothing(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "hub.yaml"  # a hub id that is not in the cache, offline: found only when loading
    recipe.write_text(
        inputs.recipe.read_text().replace(f"{{path: {inputs.zoo}/base}}", "{path: nobody/nothing}")
    )
    run = copy_of_run(inputs, tmp_path)
    before = tree_digest(run)
    done = run_hm3("merge", "--recipe", recipe, "--out", run, "--force", "--quiet")
    assert_refused(done, "nobody/nothing")
    assert tree_digest(run) == before  # the old run is whole: nothing was replaced before the start failed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub.yaml", "run"]  # and no new folder is left


def test_a_swap_killed_between_its_renames_is_undone_at_the_next_start(tmp_path: Path) -> None:
    import torch

    from hm3.export import check_output_folder, write_hf_checkpoint
    from hm3.recipe import recipe_from_dict
    from hm3.store import RunStore

    out = write_hf_checkpoint({"a": torch.zeros(2)}, {}, tmp_path / "m", tokenizer_from=None)
    pid = dead_pid()
    out.rename(tmp_path / f".m.replaced-{pid}-0a0a0a0a")  # killed after moving the old OUT aside...
    staging = tmp_path / f".m.partial-{pid}-1b1b1b1b"  # ...with the new one complete beside it
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"\0" * 1024)
    check_output_folder(out, force=True, expected_bytes=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # the old OUT is back, the staging gone
    assert (out / "model.safetensors").is_file()
    recipe = recipe_from_dict(
        {"base_model": "/models/base", "models": ["/models/a"], "objectives": [{"name": "x", "task": "sst2"}]}
    )
    with RunStore.create(tmp_path / "run", recipe) as store:
        store.append_candidate({"key": "k", "scores": {"x": 1.0}})
    (tmp_path / "run").rename(tmp_path / f".run.replaced-{pid}-2c2c2c2c")
    with RunStore.resume(tmp_path / "run")[0] as resumed:
        assert [r["key"] for r in resumed.candidates()] == ["k"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "run"]


def test_a_users_look_alike_siblings_are_not_taken_for_leftovers(tmp_path: Path) -> None:
    """Only the names hm3's swaps make are cleared: ``.OUT.backup-2024`` once looked like a dead writer's."""
    from hm3.folder_swap import clear_leftovers

    pid = dead_pid()
    (tmp_path / "out").mkdir()
    kept = [
        f".out.backup-{pid}",
        f".out.partial-{pid}",
        f".out.old-{pid}-0a0a0a0a",
        f".out.partial-{pid}-xyz",
    ]
    for name in kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.txt").write_text("precious")
    (tmp_path / f".out.partial-{pid}-1b1b1b1b").mkdir()  # a dead writer's staging folder
    clear_leftovers(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", *kept])
    (tmp_path / "out").rmdir()  # OUT missing: a user's folder is not renamed onto it either
    (tmp_path / f".out.replaced-{pid}").mkdir()
    clear_leftovers(tmp_path / "out")
    assert not (tmp_path / "out").exists() and (tmp_path / f".out.replaced-{pid}").is_dir()


def test_the_longest_name_the_file_system_takes_is_written_and_replaced(
    inputs: Inputs, tmp_path: Path
) -> None:
    """A folder named with 255 bytes once failed on its hidden staging sibling's name (``[Errno 36] File name
    too long: '.OUT.partial-...'``): the siblings' names are shortened to fit, and still cleared when dead."""
    from hm3.folder_swap import hidden_stem

    name = "é" + "m" * 253  # 255 bytes in UTF-8, a character of two bytes where a cut could fall
    merged = tmp_path / name
    leftover = tmp_path / f"{hidden_stem(name)}.partial-{dead_pid()}-0a0a0a0a"
    leftover.mkdir()  # what a killed writer of the same name left
    for flags in ([], ["--force"]):
        done = hm3_in_process("merge", "--mergekit", inputs.mergekit, "--out", merged, *flags, "--quiet")
        assert done.returncode == 0, done.stderr
        assert (merged / "config.json").is_file()
        assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert all(len(p.name.encode()) <= 255 for p in tmp_path.iterdir())


def test_a_direction_left_to_the_task_is_resolved_before_any_reward_and_named_on_resume(
    tmp_path: Path,
) -> None:
    """An unset ``higher_is_better`` is the task's own: a reward is never built with it open (it once meant
    "higher", whatever the task said), and a run an older hm3 started with it read as true is not resumed
    with it unset, in one line that says how to resume it."""
    from hm3.errors import UserError
    from hm3.moo.reward import reward_from_recipe
    from hm3.recipe import recipe_from_dict
    from hm3.store import RunStore

    data = {
        "base_model": "/models/base",
        "models": ["/models/a", "/models/b"],
        "objectives": [
            {"name": "ppl", "task": "wikitext"},
            {"name": "acc", "task": "sst2", "higher_is_better": True},
        ],
    }
    unset = recipe_from_dict(data)
    assert [o.higher_is_better for o in unset.objectives] == [None, True]
    with pytest.raises(ValueError, match=r"\['ppl'\] is the task's"):
        reward_from_recipe(unset)
    resolved = unset.with_directions({"ppl": False, "acc": False})  # only the open one is filled in
    assert [o.higher_is_better for o in resolved.objectives] == [False, True]
    assert reward_from_recipe(resolved).oriented({"ppl": 12.0, "acc": 0.5}) == [-12.0, 0.5]

    data["objectives"][0]["higher_is_better"] = True  # what an older hm3 wrote into the run's recipe.yaml
    RunStore.create(tmp_path / "run", recipe_from_dict(data)).close()
    with pytest.raises(UserError) as refused:
        RunStore.resume(tmp_path / "run", unset)
    message = str(refused.value)
    assert "\n" not in message and "objectives[0].higher_is_better to true" in message
    assert "write higher_is_better: true as the run has it to resume" in message


def test_a_damaged_recipe_in_a_run_is_one_line_for_every_command_that_reads_it(
    inputs: Inputs, tmp_path: Path
) -> None:
    """The same bytes in a user's recipe were one line; in ``RUN/recipe.yaml`` they were a yaml or Unicode
    traceback from ``--resume``, ``select`` and ``export``."""
    run = copy_of_run(inputs, tmp_path)
    member = inputs.member()
    for damage, expected in [(b"::: [\n", "not valid YAML (line 2"), (b"\xff\xfe", "not UTF-8 text")]:
        (run / "recipe.yaml").write_bytes(damage)
        for command in (
            ("merge", "--resume", run),
            ("select", run, "--preference", "1,1,1"),
            ("export", run, "--member", member, "--out", tmp_path / "exported"),
        ):
            assert_refused(hm3_in_process(*command), f"{run / 'recipe.yaml'}: {expected}")
