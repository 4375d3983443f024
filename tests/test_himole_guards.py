"""HiMoLE's guards: an adapter is scored on the base it was trained on only (by weights, wherever the folder
moved); ``himole eval`` averages like metrics only, gives an answer loss only where the target is the answer's
text, writes strict JSON; a Ctrl-C during the final folder swap leaves the new adapter whole and nothing hidden."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401
from tests.test_himole import _hm3, _micro_recipe, _not_reached, _one_torch_thread, _tiny_mixture  # noqa: F401


def _strict_json(path: Path) -> dict:
    """The file as JSON that rejects NaN and infinities (as strict parsers, jq and JavaScript, do)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _one_line(code: int, stderr: str) -> bool:
    return code == 2 and stderr.strip().count("\n") == 0 and "Traceback" not in stderr


# -- the base an adapter was trained on ---------------------------------------------------------------------


def test_eval_refuses_an_adapter_on_another_base_by_its_weights(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
    monkeypatch,
) -> None:
    """An adapter trained on zoo/addition was scored on zoo/base without a word (same architecture, other
    weights); a copy of the same base in another folder is that base."""
    from hm3.himole import evaluation
    from hm3.recipe import load_recipe
    from hm3.run_fingerprint import weight_samples

    recipe = _micro_recipe(tmp_path, lm_zoo_micro)
    text = recipe.read_text()
    out = tmp_path / "adapter"
    on_addition = recipe.with_name("addition.yaml")
    on_addition.write_text(
        text.replace(f"base_model: {lm_zoo_micro}/base", f"base_model: {lm_zoo_micro}/addition")
    )
    code, _, stderr = _hm3("himole", "train", "--recipe", on_addition, "--out", out, "--variant", "lora")
    assert code == 0, stderr
    manifest = json.loads((out / "himole.json").read_text())
    samples = weight_samples(load_recipe(on_addition))[str(lm_zoo_micro / "addition")]
    assert manifest["base_weight_samples"] == samples and list(samples) == ["model.safetensors"]

    moved = tmp_path / "moved-addition"
    shutil.copytree(lm_zoo_micro / "addition", moved)
    on_moved = recipe.with_name("moved.yaml")
    on_moved.write_text(text.replace(f"base_model: {lm_zoo_micro}/base", f"base_model: {moved}"))
    code, _, stderr = _hm3("himole", "eval", "--recipe", on_moved, "--adapter", out, "--limit", "2")
    assert code == 0, stderr  # the same weights in another folder

    monkeypatch.setattr(evaluation, "prepare_language_objectives", _not_reached)
    code, _, stderr = _hm3("himole", "eval", "--recipe", recipe, "--adapter", out, "--limit", "2")
    assert _one_line(code, stderr), stderr
    assert f"trained on base model {lm_zoo_micro / 'addition'}" in stderr
    assert f"base_model {lm_zoo_micro / 'base'} holds other weights" in stderr


def test_an_adapter_without_recorded_weights_loads_and_is_checked_for_its_family(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
    monkeypatch,
) -> None:
    """Adapters written before the weights were recorded still load on a base of their family, silently; one
    whose recorded family is another is refused in one line."""
    from hm3.himole import evaluation

    recipe = _micro_recipe(tmp_path, lm_zoo_micro)
    out = tmp_path / "adapter"
    code, _, stderr = _hm3("himole", "train", "--recipe", recipe, "--out", out, "--variant", "lora")
    assert code == 0, stderr
    manifest = json.loads((out / "himole.json").read_text())
    del manifest["base_weight_samples"]
    (out / "himole.json").write_text(json.dumps({**manifest, "base_model": "/gone/base"}))
    code, _, stderr = _hm3("himole", "eval", "--recipe", recipe, "--adapter", out, "--limit", "2")
    assert code == 0 and "trained on" not in stderr, stderr

    (out / "himole.json").write_text(json.dumps({**manifest, "family": "qwen2"}))
    monkeypatch.setattr(evaluation, "prepare_language_objectives", _not_reached)
    code, _, stderr = _hm3("himole", "eval", "--recipe", recipe, "--adapter", out, "--limit", "2")
    assert _one_line(code, stderr) and "(qwen2)" in stderr and "is a llama model" in stderr, stderr


# -- what eval averages and reports -------------------------------------------------------------------------


def _task_yaml(folder: Path, name: str, body: str, data: Path) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\n" + body
    )
    return path


def _choice_task(folder: Path) -> Path:
    """A multiple-choice task on reversals: the target is the index of the right choice."""
    rows = [{"prompt": f"{w}>", "choices": [w[::-1], w], "label": 0} for w in ("ab", "bca", "cab", "abc") * 5]
    data = folder / "choice.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    body = (
        "output_type: multiple_choice\ndoc_to_text: '{{prompt}}'\ndoc_to_target: label\ndoc_to_choice: choices\n"
        "target_delimiter: ''\nmetric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
    )
    return _task_yaml(folder, "toy_choice", body, data)


def _perplexity_task(folder: Path, zoo: Path) -> Path:
    body = (
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{prompt}}{{target}}'\n"
        "metric_list:\n  - {metric: word_perplexity}\n"
    )
    return _task_yaml(folder, "toy_perplexity", body, zoo / "data" / "toy_reversal.jsonl")


def _recipe_with(tmp_path: Path, zoo: Path, objectives: str) -> Path:
    recipe = _micro_recipe(tmp_path, zoo, objectives=objectives)
    recipe.write_text(recipe.read_text().replace("  ood_objectives: [reversal_ood, sorting_ood]\n", ""))
    return recipe


@pytest.mark.parametrize("other", ["perplexity", "lower-is-better"])
def test_eval_refuses_to_average_metrics_of_another_direction_or_scale(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
    monkeypatch,
    other,
) -> None:
    """A perplexity objective was listed under 'score ↑' and averaged into the ID mean with exact matches."""
    from hm3.himole import evaluation

    reversal = f"  - {{name: reversal, task: {lm_zoo_micro}/tasks/toy_reversal.yaml}}\n"
    if other == "perplexity":
        second = f"  - {{name: fluency, task: {_perplexity_task(tmp_path, lm_zoo_micro)}}}\n"
        said = "word_perplexity (lower is better)"
    else:
        second = (
            f"  - {{name: fluency, task: {lm_zoo_micro}/tasks/toy_sorting.yaml, higher_is_better: false}}\n"
        )
        said = "exact_match (lower is better)"
    recipe = _recipe_with(tmp_path, lm_zoo_micro, reversal + second)
    monkeypatch.setattr(evaluation.AutoModelForCausalLM, "from_pretrained", _not_reached)
    code, _, stderr = _hm3("himole", "eval", "--recipe", recipe, "--base", "--limit", "2")
    assert _one_line(code, stderr), stderr
    assert "objective fluency: its metric" in stderr
    assert said in stderr and "reversal's exact_match (higher is better)" in stderr


def test_eval_without_ood_objectives_writes_strict_json(lm_zoo_micro, tmp_path) -> None:  # noqa: F811
    """No OOD objective: ood_mean and ood_loss were written as bare NaN, which strict JSON rejects."""
    objectives = f"  - {{name: reversal, task: {lm_zoo_micro}/tasks/toy_reversal.yaml}}\n"
    recipe = _recipe_with(tmp_path, lm_zoo_micro, objectives)
    scores = tmp_path / "scores.json"
    code, stdout, stderr = _hm3(
        "himole", "eval", "--recipe", recipe, "--base", "--limit", "2", "--json", scores
    )
    assert code == 0, stderr
    report = _strict_json(scores)
    assert report["ood_mean"] is None and report["ood_loss"] is None
    assert (
        report["id_mean"] == report["scores"]["reversal"]
        and report["id_loss"] == report["losses"]["reversal"]
    )
    assert "ID mean" in stdout and "OOD mean" not in stdout


def test_a_lower_is_better_metric_is_shown_as_such(lm_zoo_micro, tmp_path) -> None:  # noqa: F811
    """Every score was listed under 'score ↑', whatever its metric's direction."""
    objectives = (
        f"  - {{name: reversal, task: {lm_zoo_micro}/tasks/toy_reversal.yaml, higher_is_better: false}}\n"
    )
    recipe = _recipe_with(tmp_path, lm_zoo_micro, objectives)
    scores = tmp_path / "scores.json"
    code, stdout, stderr = _hm3(
        "himole", "eval", "--recipe", recipe, "--base", "--limit", "2", "--json", scores
    )
    assert code == 0, stderr
    assert "score ↓" in stdout and "score ↑" not in stdout
    assert _strict_json(scores)["higher_is_better"] is False


def test_a_multiple_choice_objective_has_no_answer_loss(lm_zoo_micro, tmp_path) -> None:  # noqa: F811
    """The answer loss of a multiple-choice task was the loss of its label index written as text ("0")."""
    objectives = (
        f"  - {{name: reversal, task: {lm_zoo_micro}/tasks/toy_reversal.yaml}}\n"
        f"  - {{name: choice, task: {_choice_task(tmp_path)}}}\n"
    )
    recipe = _recipe_with(tmp_path, lm_zoo_micro, objectives)
    scores = tmp_path / "scores.json"
    code, stdout, stderr = _hm3(
        "himole", "eval", "--recipe", recipe, "--base", "--limit", "4", "--json", scores
    )
    assert code == 0, stderr
    report = _strict_json(scores)
    assert report["losses"]["choice"] is None and report["losses"]["reversal"] > 0
    assert report["id_loss"] is None  # a mean over some of the ID objectives would not be the ID loss
    assert report["id_mean"] == pytest.approx((report["scores"]["reversal"] + report["scores"]["choice"]) / 2)
    assert report["higher_is_better"] is True
    choice_row = next(line for line in stdout.splitlines() if "choice" in line)
    assert "—" in choice_row


# -- the final swap of `himole train` -----------------------------------------------------------------------


@pytest.fixture
def _sigint_as_at_a_terminal():
    """A suite started in the background (``cmd &``) inherits SIGINT ignored; this test needs it delivered."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_after_the_swap_s_rename_completes_the_save(
    tiny_pools, tmp_path, monkeypatch, _sigint_as_at_a_terminal
) -> None:
    """A Ctrl-C between the rename and the old folder's deletion installed the new adapter, raised (the CLI then
    said 'nothing half-written was kept') and left the old one as a hidden ``.adapter.replaced-*`` folder."""
    from hm3 import folder_swap
    from hm3.himole import storage
    from hm3.himole.model import AdapterShape

    model, _ = _tiny_mixture(tiny_pools, "llama")
    shape = AdapterShape("himole", 3, 2, 4, 8.0, 0.0, 2)
    folder = tmp_path / "adapter"
    storage.save_adapter(folder, model, {"variant": "first", "adapter": shape.to_json()})
    remove = folder_swap._remove

    def interrupted_removal(path: Path) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next line
        remove(path)

    monkeypatch.setattr(folder_swap, "_remove", interrupted_removal)
    try:
        storage.save_adapter(folder, model, {"variant": "second", "adapter": shape.to_json()})
    except KeyboardInterrupt:
        pytest.fail("save_adapter raised KeyboardInterrupt after the new adapter was in place")
    assert storage.read_manifest(folder)["variant"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # the old one deleted, nothing hidden
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_swap_killed_half_way_is_undone_before_the_next_save(tiny_pools, tmp_path) -> None:
    """A kill between the swap's two renames leaves the old adapter aside (``.adapter.replaced-<pid>-*``) and no
    adapter, one while it wrote a staging folder; the next save puts the old one back, replaces it, and leaves
    nothing hidden."""
    from hm3.himole import storage
    from hm3.himole.model import AdapterShape

    model, _ = _tiny_mixture(tiny_pools, "llama")
    shape = AdapterShape("himole", 3, 2, 4, 8.0, 0.0, 2)
    folder = tmp_path / "adapter"
    storage.save_adapter(folder, model, {"variant": "first", "adapter": shape.to_json()})
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    folder.rename(tmp_path / f".adapter.replaced-{process.pid}-0a0a0a0a")
    (tmp_path / f".adapter.partial-{process.pid}-1b1b1b1b").mkdir()  # a writer killed while it wrote files
    storage.save_adapter(folder, model, {"variant": "second", "adapter": shape.to_json()})
    assert storage.read_manifest(folder)["variant"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
