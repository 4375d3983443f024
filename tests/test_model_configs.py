"""A fine-tuned model whose config differs from the base's: scored as itself (its own config), merged and routed
under the base's (as mergekit writes merges), and said so at validate time; a config under which its layers would
compute another function (how heads are split, the activation) is refused before anything is scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cli.main import main
from tests.fixtures_models import hm3_in_process, write_recipe
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401

SPECIALISTS = ("addition", "reversal", "sorting")


def _zoo_with(lm_zoo_micro: Path, folder: Path, edit: dict) -> Path:  # noqa: F811
    """The micro zoo's models, with ``sorting``'s config.json updated by ``edit`` (nested mappings merged)."""
    for name in ("base", *SPECIALISTS):
        shutil.copytree(lm_zoo_micro / name, folder / name)
    config_file = folder / "sorting" / "config.json"
    config = json.loads(config_file.read_text())
    for key, value in edit.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    config_file.write_text(json.dumps(config))
    return folder


def _recipe(zoo: Path, tasks: Path, folder: Path) -> Path:
    models = "".join(f"  - {{name: {n}, path: {zoo / n}}}\n" for n in SPECIALISTS)
    objectives = "".join(
        f"  - {{name: {n}, task: {tasks / f'toy_{n}.yaml'}, model: {n}, limit: 12}}\n" for n in SPECIALISTS
    )
    search = "parameter_level: {method: task_arithmetic, budget: 2}\narchitecture_level: {enabled: false}\n"
    return write_recipe(
        folder,
        f"base_model: {zoo / 'base'}\nmodels:\n{models}objectives:\n{objectives}{search}preferences: {{count: 1}}\n",
    )


def test_a_specialist_with_its_own_rope_base_is_scored_as_itself(lm_zoo_micro, tmp_path, capsys) -> None:  # noqa: F811
    """CodeLlama's rope base is 10^6 against Llama-2's 10^4 (the shipped 7B recipe): its reference scores, the
    ideal point of every reward, were taken under the base's config — another model than the one on disk
    (``hm3 eval`` of the folder disagreed)."""
    zoo = _zoo_with(lm_zoo_micro, tmp_path / "zoo", {"rope_parameters": {"rope_theta": 37.0}})
    recipe = _recipe(zoo, lm_zoo_micro / "tasks", tmp_path)
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "models[2]: its config differs from the base's (rope_parameters" in out, out
    assert "it is scored as itself, merges and paths are built with the base's config" in out
    done = hm3_in_process("merge", "--recipe", recipe, "--out", tmp_path / "run", "--quiet")
    assert done.returncode == 0, done.stderr
    logged = {
        r["finetuned"]: r["scores"]
        for r in map(json.loads, (tmp_path / "run" / "candidates.jsonl").read_text().splitlines())
        if r["level"] == "finetuned" and r["split"] == "search"
    }
    evaluated = hm3_in_process(
        "eval", "--recipe", recipe, "--split", "search", "--json", "--models", *(zoo / n for n in SPECIALISTS)
    )
    assert evaluated.returncode == 0, evaluated.stderr
    scores = json.loads(evaluated.stdout)["scores"]
    assert {n: scores[str(zoo / n)] for n in SPECIALISTS} == logged
    assert logged["sorting"]["sorting"] < 0.9  # the rope base matters here: under the base's it scored 1.0


def test_a_specialist_whose_heads_are_split_otherwise_is_refused(lm_zoo_micro, tmp_path, capsys) -> None:  # noqa: F811
    config = json.loads((lm_zoo_micro / "base" / "config.json").read_text())
    heads = config["num_attention_heads"] * 2
    edit = {
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": config["hidden_size"] // heads,
    }
    zoo = _zoo_with(lm_zoo_micro, tmp_path / "zoo", edit)
    assert main(["validate", str(_recipe(zoo, lm_zoo_micro / "tasks", tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "models[2]: its config differs from the base's where its layers' computation" in err[0]
    )
    assert f"num_attention_heads {heads} vs base {heads // 2}" in err[0]
