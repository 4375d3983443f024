"""On the micro toy zoo, `hm3 eval` gives each specialist the scores the `lm_eval` CLI gives it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_models import write_recipe
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401


def specialists(zoo: Path) -> dict[str, Path]:
    """Specialist name -> its in-distribution task YAML."""
    manifest = json.loads((zoo / "zoo.json").read_text())
    yamls = {task["name"]: zoo / task["yaml"] for task in manifest["tasks"] if "yaml" in task}
    return {model["name"]: yamls[model["task"]] for model in manifest["models"] if model["task"]}


def lm_eval_cli(model: Path, include: Path, tasks: list[str], out: Path) -> subprocess.Popen:
    """Start the real ``lm_eval`` command on a saved model (one thread, so that several can run side by side)."""
    command = [
        str(Path(sys.executable).parent / "lm_eval"),
        *("--model", "hf", "--model_args", f"pretrained={model},dtype=float32"),
        *("--device", "cpu", "--batch_size", "64", "--include_path", str(include)),
        *("--tasks", ",".join(tasks), "--output_path", str(out)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_hm3_eval_agrees_with_lm_eval_cli_on_every_specialist(lm_zoo_micro, tmp_path):  # noqa: F811
    micro_lm_zoo = lm_zoo_micro
    import yaml

    from hm3.evaluate import Evaluator
    from hm3.recipe import load_recipe

    tasks = specialists(micro_lm_zoo)
    models = "".join(f"  - {{name: {name}, path: {micro_lm_zoo / name}}}\n" for name in tasks)
    objectives = "".join(
        f"  - {{name: {name}, task: {path}, model: {name}, batch_size: 64}}\n" for name, path in tasks.items()
    )
    recipe = write_recipe(
        tmp_path, f"base_model: {micro_lm_zoo / 'base'}\nmodels:\n{models}objectives:\n{objectives}"
    )
    # the search split's documents as tasks of their own, for the CLI
    include = tmp_path / "tasks"
    include.mkdir()
    evaluator = Evaluator.from_recipe(load_recipe(recipe))
    names = []
    for objective in evaluator.objectives:
        config = yaml.safe_load(Path(objective.objective.task).read_text())
        (include / f"{config['task']}.yaml").write_text(yaml.safe_dump(config))
        data = include / f"{objective.name}_search.jsonl"
        docs = [objective.task.eval_docs[i] for i in objective.indices("search")]
        data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
        names += [config["task"], f"{config['task']}_search"]
        config["task"] = f"{config['task']}_search"
        config["dataset_kwargs"]["data_files"] = {"test": str(data)}
        (include / f"{config['task']}.yaml").write_text(yaml.safe_dump(config))

    runs = {
        name: lm_eval_cli(micro_lm_zoo / name, include, names, tmp_path / f"out_{name}") for name in tasks
    }
    command = [sys.executable, "-m", "cli.main", "eval", "--recipe", str(recipe), "--split", "all", "--json"]
    command += ["--models", *(str(micro_lm_zoo / name) for name in tasks)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    hm3_all = json.loads(done.stdout)["scores"]

    import torch
    from transformers import AutoModelForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, process in runs.items():
            _, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, stderr[-3000:]
            (result_file,) = (tmp_path / f"out_{name}").rglob("results_*.json")
            reference = json.loads(result_file.read_text())["results"]
            model = AutoModelForCausalLM.from_pretrained(micro_lm_zoo / name).eval()
            hm3_search = evaluator.score(model, split="search")
            for objective in evaluator.objectives:
                task = objective.task.task_name
                assert hm3_all[str(micro_lm_zoo / name)][objective.name] == pytest.approx(
                    reference[task]["exact_match,none"], abs=0.01
                ), (name, objective.name, "all")
                assert hm3_search[objective.name] == pytest.approx(
                    reference[f"{task}_search"]["exact_match,none"], abs=0.01
                ), (name, objective.name, "search")
    finally:
        torch.set_num_threads(threads)
    # the comparison is not vacuous: some specialist solves some of its own task
    assert max(hm3_all[str(micro_lm_zoo / name)][name] for name in tasks) > 0
