"""lm-eval objectives checked before any model loads: code-execution tasks need the recipe's opt-in (and then
reach lm-eval with ``confirm_run_unsafe_code``), registry names, metric keys and cached data are checked offline
against the installed lm-eval's task index."""

from __future__ import annotations

import json
import os
import shutil
import types
from pathlib import Path

import pytest

from cli.main import main
from hm3.errors import UserError
from tests.fixtures_models import hm3_in_process, write_recipe
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401

REPO = Path(__file__).parent.parent
CODE_RECIPES = ("llama2-7b-chat-math-code.yaml", "qwen2.5-1.5b-instruct-math-coder.yaml")


def _recipe(tiny_llama, objectives: str, extra: str = "") -> str:
    ft = tiny_llama.finetunes
    return (
        f"base_model: {tiny_llama.base}\nmodels:\n  - {{name: a, path: {ft[0]}}}\n  - {{name: b, path: {ft[1]}}}\n"
        f"objectives:\n{objectives}{extra}"
    )


def _validate(folder: Path, text: str, capsys) -> tuple[int, list[str]]:
    code = main(["validate", str(write_recipe(folder, text))])
    captured = capsys.readouterr()
    return code, [line for line in (captured.err if code else captured.out).splitlines() if line]


@pytest.fixture
def empty_hf_caches(tmp_path, monkeypatch) -> Path:
    """Hub and datasets caches that hold nothing, so "needs the hub" does not depend on this machine."""
    import datasets.config
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    (cache / "hub").mkdir(parents=True)
    (cache / "datasets").mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache / "datasets"))
    return cache


def test_code_task_without_the_opt_in_is_refused_at_validate_in_one_line(
    tiny_llama, tmp_path, capsys
) -> None:
    objectives = (
        "  - {name: sst2, task: sst2, metric: acc}\n"
        "  - {name: code, task: humaneval, metric: 'pass@1,create_test'}\n"
    )
    code, lines = _validate(tmp_path, _recipe(tiny_llama, objectives), capsys)
    assert code == 2
    assert len(lines) == 1, lines
    assert "recipe.yaml: objectives[1].task: objective code runs task humaneval" in lines[0]
    assert "allow_code_execution: true" in lines[0]
    code, lines = _validate(tmp_path, _recipe(tiny_llama, objectives, "allow_code_execution: true\n"), capsys)
    assert code == 0, lines


def test_unknown_registry_task_and_wrong_metric_key_are_one_line_each(tiny_llama, tmp_path, capsys) -> None:
    objectives = (
        "  - {name: sst2, task: sst2, metric: accuracy, model: a}\n"
        "  - {name: math, task: gsm8k, metric: 'exact_match,loose-extract', model: a}\n"
        "  - {name: nope, task: no_such_task_hm3, model: b}\n"
    )
    code, lines = _validate(tmp_path, _recipe(tiny_llama, objectives), capsys)
    assert code == 2
    assert len(lines) == 3, lines
    assert lines[0].endswith("objectives[0].task: task sst2 does not report 'accuracy' (it reports acc)")
    assert lines[1].endswith(
        "objectives[1].task: task gsm8k has no filter 'loose-extract' (its filters: strict-match, flexible-extract)"
    )
    assert "objectives[2].task: lm-eval" in lines[2] and "has no task named 'no_such_task_hm3'" in lines[2]


def test_registry_data_outside_the_cache_is_a_note_not_an_error(
    tiny_llama, tmp_path, capsys, empty_hf_caches
) -> None:
    text = _recipe(
        tiny_llama, "  - {name: sst2, task: sst2}\n  - {name: math, task: mathqa, metric: acc_norm}\n"
    )
    code, lines = _validate(tmp_path, text, capsys)
    assert code == 0, lines
    note = "  note: objectives[0].task (sst2): needs the hub: data set nyu-mll/glue is not in the local cache"
    assert any(line.startswith(note) for line in lines), lines
    (empty_hf_caches / "hub" / "datasets--nyu-mll--glue").mkdir()  # as `huggingface-cli download` leaves it
    (empty_hf_caches / "datasets" / "regisss___math_qa").mkdir()  # as `datasets` prepares it
    code, lines = _validate(tmp_path, text, capsys)
    assert code == 0 and not [line for line in lines if "needs the hub" in line], lines


@pytest.mark.parametrize("name", CODE_RECIPES)
def test_shipped_code_recipes_say_they_execute_code(name: str) -> None:
    from hm3.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / name)
    assert recipe.allow_code_execution
    assert {"humaneval", "mbpp"} <= {o.task for o in recipe.objectives}


def test_metrics_of_lm_evals_code_tasks_are_read_from_yaml_without_running_them() -> None:
    import lm_eval

    from hm3.evaluate.task_code import task_config
    from hm3.evaluate.task_facts import facts_from_config

    tasks = Path(lm_eval.__file__).parent / "tasks"
    humaneval = facts_from_config(task_config(tasks / "humaneval" / "humaneval.yaml"))
    assert (humaneval.metrics, humaneval.filters, humaneval.unsafe_code) == (
        ("pass@1",),
        ("create_test",),
        True,
    )
    mbpp = facts_from_config(task_config(tasks / "mbpp" / "mbpp.yaml"))
    assert (mbpp.metrics, mbpp.filters, mbpp.unsafe_code) == (("pass_at_1",), ("none",), True)
    gsm8k = facts_from_config(task_config(tasks / "gsm8k" / "gsm8k.yaml"))
    assert gsm8k.filters == ("strict-match", "flexible-extract") and not gsm8k.unsafe_code


def _unsafe_task(folder: Path) -> Path:
    """A local multiple-choice task marked ``unsafe_code`` (nothing in it runs: the flag is what is tested)."""
    data = folder / "unsafe.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}?", "label": i % 2}) + "\n" for i in range(10)))
    path = folder / "unsafe.yaml"
    path.write_text(
        f"task: toy_unsafe\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        'test_split: test\nunsafe_code: true\noutput_type: multiple_choice\ndoc_to_text: "{{prompt}}"\n'
        'doc_to_choice: ["0", "1"]\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return path


def test_opt_in_reaches_lm_eval_as_confirm_run_unsafe_code(tmp_path, monkeypatch) -> None:
    import lm_eval.evaluator

    from hm3.evaluate.language import prepare_language_objectives
    from hm3.recipe import Objective, SplitConfig

    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "0")  # restored after the test
    objective = Objective(name="code", task=str(_unsafe_task(tmp_path)))
    with pytest.raises(UserError, match="objective code runs task toy_unsafe, which executes the code"):
        prepare_language_objectives([objective], SplitConfig())
    assert os.environ["HF_ALLOW_CODE_EVAL"] == "0"
    [prepared] = prepare_language_objectives([objective], SplitConfig(), allow_code_execution=True)
    assert os.environ["HF_ALLOW_CODE_EVAL"] == "1"
    calls: list[dict] = []

    def evaluate(**kwargs):  # lm-eval's entry point, as hm3 calls it; nothing is generated or executed
        calls.append(kwargs)
        return {"results": {"toy_unsafe": {"acc,none": 0.5}}}

    monkeypatch.setattr(lm_eval.evaluator, "evaluate", evaluate)
    assert prepared.score_with_lm_eval(types.SimpleNamespace(), "search") == 0.5
    assert calls[0]["confirm_run_unsafe_code"] is True
    # hm3's own replay of lm-eval's steps keeps lm-eval's refusal: no opt-in, no scoring
    prepared.allow_code_execution = False
    with pytest.raises(UserError, match="executes the model's code"):
        prepared.score(types.SimpleNamespace(), "search")


def test_local_code_task_without_the_opt_in_is_refused_at_validate(tiny_llama, tmp_path, capsys) -> None:
    task = _unsafe_task(tmp_path)
    objectives = f"  - {{name: code, task: {task}}}\n  - {{name: code2, task: {task}}}\n"
    code, lines = _validate(tmp_path, _recipe(tiny_llama, objectives), capsys)
    assert code == 2 and len(lines) == 2, lines
    assert "objectives[0].task: objective code runs task toy_unsafe" in lines[0]


def test_merge_refuses_a_code_task_before_loading_any_model(
    tiny_llama, tmp_path, capsys, monkeypatch
) -> None:
    import hm3.search.run

    def load_inputs(recipe):
        raise AssertionError("models loaded before the code task was refused")

    monkeypatch.setattr(hm3.search.run, "load_inputs", load_inputs)
    objectives = "  - {name: sst2, task: sst2}\n  - {name: code, task: mbpp}\n"
    recipe = write_recipe(tmp_path, _recipe(tiny_llama, objectives))
    code = main(["merge", "--recipe", str(recipe), "--out", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert code == 2 and len(lines) == 1, lines
    assert "objectives[1].task: objective code runs task mbpp" in lines[0]
    assert not (tmp_path / "run").exists()


def _counting_task(folder: Path, name: str, fixed_zero_shot: bool) -> Path:
    """A local multiple-choice task of 10 documents (no few-shot split: lm-eval draws examples from them)."""
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}?", "label": i % 2}) + "\n" for i in range(10)))
    path = folder / f"{name}.yaml"
    path.write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        'test_split: test\noutput_type: multiple_choice\ndoc_to_text: "{{prompt}}"\ndoc_to_choice: ["0", "1"]\n'
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n"
        + ("num_fewshot: 0\n" if fixed_zero_shot else "")
    )
    return path


def test_objective_settings_lm_eval_would_ignore_or_cannot_apply_are_refused_naming_the_field(
    tiny_llama, tmp_path, capsys
) -> None:
    """lm-eval keeps a YAML's ``num_fewshot: 0`` whatever is asked (the recipe's count was silently dropped), its
    sampler raised ``Sample larger than population`` (a traceback) for more examples than it can draw, and
    generation settings of a task that generates nothing were dropped."""
    fixed, free = _counting_task(tmp_path, "fixed", True), _counting_task(tmp_path, "free", False)
    objectives = (
        f"  - {{name: a, task: {fixed}, num_fewshot: 2, model: a}}\n"
        f"  - {{name: b, task: {free}, num_fewshot: 11, model: b}}\n"
        "  - {name: c, task: ifeval, num_fewshot: 5, model: a}\n"
        f"  - {{name: d, task: {free}, model: b, generation_kwargs: {{max_gen_toks: 8}}}}\n"
    )
    code, lines = _validate(tmp_path, _recipe(tiny_llama, objectives), capsys)
    assert code == 2 and len(lines) == 4, lines
    assert lines[0].endswith(
        "objectives[0].num_fewshot: num_fewshot 2 would be ignored: task fixed sets num_fewshot: 0 in its YAML, "
        "which lm-eval keeps; leave num_fewshot out or set it to 0"
    )
    assert lines[1].endswith(
        "objectives[1].num_fewshot: num_fewshot 11 is more than the 10 document(s) task free draws its few-shot "
        "examples from"
    )
    assert "objectives[2].num_fewshot: num_fewshot 5 would be ignored: task ifeval sets" in lines[2]
    assert lines[3].endswith(
        "objectives[3].generation_kwargs: task free scores multiple_choice and generates nothing, so its "
        "generation_kwargs would be ignored; leave them out"
    )
    objectives = (
        f"  - {{name: a, task: {fixed}, num_fewshot: 0, model: a}}\n"
        f"  - {{name: b, task: {free}, num_fewshot: 10, model: b}}\n"
        "  - {name: c, task: ifeval, model: a}\n"
        "  - {name: d, task: gsm8k, model: b, generation_kwargs: {max_gen_toks: 8, repetition_penalty: 1.1}}\n"
    )
    code, lines = _validate(tmp_path, _recipe(tiny_llama, objectives), capsys)
    assert code == 0, lines


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ("{max_gen_toks: -5}", "max_gen_toks must be a whole number of tokens, at least 1, not -5"),
        ("{until: 5}", "until must be a stop string or a list of them, not 5"),
        ("{temperature: hot}", "temperature must be a number of at least 0, not 'hot'"),
        ("{top_p: 0}", "top_p must be a number in (0, 1], not 0"),
        ("{do_sample: maybe}", "do_sample must be true or false, not 'maybe'"),
        (
            "{nonsense_key: 1}",
            "generation_kwargs 'nonsense_key': not a generation setting lm-eval or transformers'",
        ),
    ],
)
def test_generation_settings_that_would_fail_when_scoring_are_one_line_at_validate(
    tiny_llama, tmp_path, capsys, settings, expected
) -> None:
    """Each was a traceback from lm-eval or ``generate`` on the first document scored."""
    free = _counting_task(tmp_path, "free", False)
    gsm8k = "{name: math, task: gsm8k, model: b, generation_kwargs: " + settings + "}"
    code, lines = _validate(
        tmp_path, _recipe(tiny_llama, f"  - {{name: a, task: {free}, model: a}}\n  - {gsm8k}\n"), capsys
    )
    assert code == 2 and len(lines) == 1, lines
    assert "objectives[1].generation_kwargs: " in lines[0] and expected in lines[0], lines


def test_generation_settings_the_model_cannot_apply_are_one_line_before_scoring(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
) -> None:
    """A generation as long as the model's context: lm-eval asserted on the first document (no room left for the
    prompt), a traceback mid-search."""
    zoo = lm_zoo_micro
    config = json.loads((zoo / "base" / "config.json").read_text())
    context = config["max_position_embeddings"]
    text = (
        f"base_model: {zoo / 'base'}\nmodels:\n  - {{name: addition, path: {zoo / 'addition'}}}\n"
        f"objectives:\n  - {{name: addition, task: {zoo / 'tasks' / 'toy_addition.yaml'}, "
        f"generation_kwargs: {{max_gen_toks: {context}}}}}\n"
    )
    recipe = write_recipe(tmp_path, text)
    done = hm3_in_process("eval", "--recipe", recipe, "--model", zoo / "addition", "--split", "search")
    assert done.returncode == 2 and done.stderr == (
        f"hm3 eval: objective addition: task toy_addition generates up to {context} tokens, and the model's "
        f"maximum sequence length is {context}: set generation_kwargs: {{max_gen_toks: N}} below it\n"
    ), done.stderr
    ok = hm3_in_process(
        "eval",
        "--recipe",
        write_recipe(tmp_path, text.replace(f"max_gen_toks: {context}", "max_gen_toks: 8")),
        "--model",
        zoo / "addition",
        "--split",
        "search",
    )
    assert ok.returncode == 0, ok.stderr
    # a chat template asked of a tokenizer that has none: transformers' ValueError on the first document before
    chat = write_recipe(
        tmp_path, text.replace(f"max_gen_toks: {context}}}", "max_gen_toks: 8}, apply_chat_template: true")
    )
    done = hm3_in_process("eval", "--recipe", chat, "--model", zoo / "addition", "--split", "search")
    assert done.returncode == 2 and done.stderr == (
        "hm3 eval: objective addition: apply_chat_template is set, and the model's tokenizer has no chat template; "
        "leave it out, or score with a tokenizer that has one (tokenizer_source)\n"
    ), done.stderr
    with_template = tmp_path / "chat"
    shutil.copytree(zoo / "addition", with_template)
    settings = json.loads((with_template / "tokenizer_config.json").read_text())
    settings["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (with_template / "tokenizer_config.json").write_text(json.dumps(settings))
    done = hm3_in_process("eval", "--recipe", chat, "--model", with_template, "--split", "search", "--json")
    assert done.returncode == 0, done.stderr


def test_a_vision_objectives_hub_data_outside_the_cache_is_a_note_and_a_wrong_id_a_problem(
    tiny_pools, tmp_path, capsys, empty_hf_caches, monkeypatch
) -> None:
    """A vision objective's ``format: hf`` data set is checked like an lm-eval task's: cached, or "needs the hub"
    (offline), or — where the hub answers that it does not exist — a problem naming the field."""
    from huggingface_hub.errors import RepositoryNotFoundError

    import hm3.validation

    pool = tiny_pools["clip_vision"]
    (tmp_path / "head.safetensors").write_bytes(b"")  # validate checks that the head file is there
    text = (
        f"base_model: {pool.base}\nmodels:\n  - {{name: a, path: {pool.finetunes[0]}}}\n"
        f"  - {{name: b, path: {pool.finetunes[1]}}}\nobjectives:\n"
        "  - {name: digits, dataset: {format: hf, path: some-org/digits}, head: head.safetensors}\n"
        "  - {name: again, dataset: {format: hf, path: some-org/digits}, head: head.safetensors}\n"
    )
    code, lines = _validate(tmp_path, text, capsys)
    note = "  note: needs the hub: objectives[0].dataset.path: data set some-org/digits is not in the local cache"
    assert code == 0 and any(line.startswith(note) for line in lines), lines
    (empty_hf_caches / "hub" / "datasets--some-org--digits").mkdir()
    code, lines = _validate(tmp_path, text, capsys)
    assert code == 0 and not [line for line in lines if "needs the hub" in line], lines
    shutil.rmtree(empty_hf_caches / "hub" / "datasets--some-org--digits")

    def not_there(repo_id: str, repo_type: str | None = None, **_: object) -> None:
        assert repo_type == "dataset"
        error = RepositoryNotFoundError.__new__(
            RepositoryNotFoundError
        )  # the hub's 404, without an HTTP reply
        Exception.__init__(error, f"{repo_id} not found")
        raise error

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hm3.validation, "repo_info", not_there)
    code, lines = _validate(tmp_path, text, capsys)
    assert code == 2 and len(lines) == 2, lines
    assert lines[0].endswith(
        "objectives[0].dataset.path: hub data set 'some-org/digits' not found (or gated without a token)"
    )


def test_a_task_whose_data_is_empty_or_not_json_is_one_line_that_says_so(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
    capsys,
) -> None:
    """An empty data file said ``does not load: StopIteration``; a malformed one printed ``datasets``' own log
    line above hm3's, which said only "An error occurred while generating the dataset"."""
    task = (lm_zoo_micro / "tasks" / "toy_addition.yaml").read_text()
    data = str(lm_zoo_micro / "data" / "toy_addition.jsonl")
    assert data in task
    for name, content, expected in [
        ("empty", "", "does not load: its data has no documents"),
        ("broken", '{"prompt": "1+1=", "target": \n', "generating the dataset: JSON parse error"),
    ]:
        (tmp_path / f"{name}.jsonl").write_text(content)
        (tmp_path / f"{name}.yaml").write_text(task.replace(data, str(tmp_path / f"{name}.jsonl")))
        text = (
            f"base_model: {lm_zoo_micro / 'base'}\nmodels: [{lm_zoo_micro / 'addition'}]\n"
            f"objectives:\n  - {{name: a, task: {tmp_path / f'{name}.yaml'}}}\n"
        )
        code, lines = _validate(tmp_path, text, capsys)
        assert code == 2 and len(lines) == 1 and expected in lines[0], lines
