"""The language backend: hm3's in-memory scoring against the lm_eval CLI, model swapping, options, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hm3.errors import UserError
from tests.fixtures_models import build_tiny_model, hm3_in_process, run_hm3, write_recipe

CHARACTERS = [chr(c) for c in range(32, 127)] + ["\n"]


@dataclass(frozen=True)
class TinyLanguageZoo:
    """A char-level tiny llama base and two variants, and local lm-eval tasks over JSONL files."""

    root: Path
    base: Path
    variants: tuple[Path, ...]
    tasks: Path


def build_char_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` (one token per character, no BOS/EOS added)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for character in CHARACTERS:
        vocab[character] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left"
    )


def task_yaml(name: str, data: Path, kind: str) -> str:
    """A local lm-eval task over a JSONL file: ``mc`` (acc) or ``gen`` (exact_match and chrF, two filters)."""
    head = (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        'test_split: test\ndoc_to_text: "{{prompt}}"\n'
    )
    if kind == "mc":
        return head + (
            'output_type: multiple_choice\ndoc_to_choice: ["0", "1", "2"]\ndoc_to_target: label\n'
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        )
    return head + (
        'output_type: generate_until\ndoc_to_target: "{{target}}"\ntarget_delimiter: ""\n'
        'generation_kwargs:\n  until: ["\\n"]\n  do_sample: false\n  max_gen_toks: 5\n'
        "filter_list:\n  - name: raw\n    filter:\n      - function: take_first\n"
        "  - name: digits\n    filter:\n      - function: regex\n        regex_pattern: '(\\d+)'\n"
        "      - function: take_first\n"
        "metric_list:\n  - metric: chrf\n    aggregation: chrf\n    higher_is_better: true\n"
        "  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )


def write_task(folder: Path, name: str, rows: list[dict], kind: str) -> Path:
    """Write ``rows`` as JSONL and the task YAML beside it; returns the YAML's path."""
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = folder / f"{name}.yaml"
    path.write_text(task_yaml(name, data, kind))
    return path


def addition_rows(count: int = 40) -> list[dict]:
    rows = [{"prompt": f"{a}+{b}=", "target": str(a + b)} for a in range(10) for b in range(10)][:count]
    return [{**row, "label": int(row["target"]) % 3} for row in rows]


@pytest.fixture(scope="session")
def tiny_lm_zoo(tmp_path_factory) -> TinyLanguageZoo:
    root = tmp_path_factory.mktemp("tiny_lm_zoo")
    tokenizer = build_char_tokenizer()
    vocab = len(tokenizer)
    base = build_tiny_model("llama", root / "base", seed=0, vocab=vocab)
    variants = tuple(
        build_tiny_model("llama", root / f"ft{i}", seed=i + 1, base=base, vocab=vocab) for i in range(2)
    )
    for folder in (base, *variants):
        tokenizer.save_pretrained(folder)
    tasks = root / "tasks"
    tasks.mkdir()
    write_task(tasks, "toy_mc", addition_rows(), "mc")
    write_task(tasks, "toy_gen", addition_rows(), "gen")
    return TinyLanguageZoo(root, base, variants, tasks)


def zoo_recipe(zoo: TinyLanguageZoo, folder: Path, objectives: str, name: str = "recipe.yaml") -> Path:
    models = "".join(f"  - {{name: ft{i}, path: {v}}}\n" for i, v in enumerate(zoo.variants))
    return write_recipe(folder, f"base_model: {zoo.base}\nmodels:\n{models}objectives:\n{objectives}", name)


STANDARD_OBJECTIVES = (
    "  - {{name: mc, task: {tasks}/toy_mc.yaml, model: ft0, batch_size: 8}}\n"
    "  - {{name: gen, task: {tasks}/toy_gen.yaml, metric: 'chrf,raw', model: ft1, batch_size: 8}}\n"
)


@pytest.fixture(scope="module")
def standard_recipe(tiny_lm_zoo, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recipe")
    return zoo_recipe(tiny_lm_zoo, folder, STANDARD_OBJECTIVES.format(tasks=tiny_lm_zoo.tasks))


@pytest.fixture(scope="module")
def evaluator(standard_recipe):
    from hm3.evaluate import Evaluator
    from hm3.recipe import load_recipe

    return Evaluator.from_recipe(load_recipe(standard_recipe))


def load_lm(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_char_tokenizer_survives_autotokenizer(tiny_lm_zoo):
    from transformers import AutoTokenizer

    text = "12+3= ab\n"
    loaded = AutoTokenizer.from_pretrained(tiny_lm_zoo.base)
    assert loaded.encode(text) == build_char_tokenizer().encode(text)
    assert len(loaded.encode(text)) == len(text)
    assert loaded.decode(loaded.encode(text)) == text


def test_split_of_task_documents_is_disjoint_and_exact(evaluator):
    for objective in evaluator.objectives:
        search, heldout = set(objective.indices("search")), set(objective.indices("heldout"))
        total = len(objective.task.eval_docs)
        assert not search & heldout
        assert search | heldout == set(range(total))
        assert len(search) == round(0.7 * total)
        assert objective.indices("all") == list(range(total))


def test_metric_resolution_and_direction(evaluator):
    assert evaluator.metrics == {"mc": "acc,none", "gen": "chrf,raw"}
    assert evaluator.higher_is_better == {"mc": True, "gen": True}
    assert evaluator.document_count("search") == {"mc": 28, "gen": 28}


def test_swapping_models_reuses_tasks_and_one_hflm(evaluator, tiny_lm_zoo):
    first, second = (load_lm(v) for v in tiny_lm_zoo.variants)
    tasks = [o.task for o in evaluator.objectives]
    a1 = evaluator.score(first, split="search")
    b = evaluator.score(second, split="search")
    a2 = evaluator.score(first, split="search")
    assert a1 == a2, "scores must not depend on what was scored before"
    assert a1 != b, "two different models should not tie on both objectives"
    assert [o.task for o in evaluator.objectives] == tasks
    assert len(evaluator._lms) == 1
    assert 0 < a1["gen"] <= 100 and 0 <= a1["mc"] <= 1


def test_splits_score_different_documents(evaluator, tiny_lm_zoo):
    model = load_lm(tiny_lm_zoo.variants[0])
    search, heldout, everything = (
        evaluator.score(model, split=s)["mc"] for s in ("search", "heldout", "all")
    )
    assert everything == pytest.approx((28 * search + 12 * heldout) / 40)
    with pytest.raises(UserError, match="unknown split"):
        evaluator.score(model, split="test")


def _lm_eval_cli(model: Path, tasks: Path, names: list[str], out: Path) -> dict[str, dict]:
    """Results of the real ``lm_eval`` command on a saved model."""
    command = [
        str(Path(sys.executable).parent / "lm_eval"),
        *("--model", "hf", "--model_args", f"pretrained={model},dtype=float32"),
        *("--device", "cpu", "--batch_size", "8", "--include_path", str(tasks)),
        *("--tasks", ",".join(names), "--output_path", str(out)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (result_file,) = out.rglob("results_*.json")
    return json.loads(result_file.read_text())["results"]


@pytest.mark.slow
def test_hm3_eval_agrees_with_lm_eval_cli(tiny_lm_zoo, standard_recipe, evaluator, tmp_path):
    """`hm3 eval` (split all, models side by side) and the Evaluator (search split) give what lm_eval gives."""
    model = tiny_lm_zoo.variants[1]
    search_tasks = tmp_path / "search_tasks"
    search_tasks.mkdir()
    for objective, kind in zip(evaluator.objectives, ("mc", "gen"), strict=True):
        docs = [objective.task.eval_docs[i] for i in objective.indices("search")]
        write_task(search_tasks, f"{objective.task.task_name}_search", docs, kind)
    names = ["toy_mc", "toy_gen", "toy_mc_search", "toy_gen_search"]
    for name in ("toy_mc", "toy_gen"):
        (search_tasks / f"{name}.yaml").write_text((tiny_lm_zoo.tasks / f"{name}.yaml").read_text())
    reference = _lm_eval_cli(model, search_tasks, names, tmp_path / "lm_eval_out")

    folders = [tiny_lm_zoo.base, *tiny_lm_zoo.variants]
    done = run_hm3(
        "eval", "--recipe", standard_recipe, "--model", folders[0], "--models", *folders[1:], "--split", "all"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if "objective" in line)
    assert [name for name in ("base", "ft0", "ft1") if name in header] == ["base", "ft0", "ft1"]
    rows = {cells[0]: cells for line in lines if len(cells := line.strip("│┃ ").split("│")) > 3}
    rows = {key.strip(): [c.strip() for c in cells] for key, cells in rows.items()}
    assert float(rows["mc"][-1]) == pytest.approx(reference["toy_mc"]["acc,none"], abs=0.01)
    assert float(rows["gen"][-1]) == pytest.approx(reference["toy_gen"]["chrf,raw"], abs=0.01)

    search = evaluator.score(load_lm(model), split="search")
    assert search["mc"] == pytest.approx(reference["toy_mc_search"]["acc,none"], abs=0.01)
    assert search["gen"] == pytest.approx(reference["toy_gen_search"]["chrf,raw"], abs=0.01)


def test_objective_options_pass_through(tiny_lm_zoo, tmp_path):
    from hm3.evaluate import Evaluator
    from hm3.recipe import load_recipe

    objectives = (
        f"  - {{name: mc, task: {tiny_lm_zoo.tasks}/toy_mc.yaml, num_fewshot: 2, limit: 5}}\n"
        f"  - {{name: gen, task: {tiny_lm_zoo.tasks}/toy_gen.yaml, metric: exact_match,"
        " generation_kwargs: {max_gen_toks: 3}, higher_is_better: false}\n"
    )
    evaluator = Evaluator.from_recipe(load_recipe(zoo_recipe(tiny_lm_zoo, tmp_path, objectives)))
    mc, gen = evaluator.objectives
    assert mc.task.get_config("num_fewshot") == 2
    assert evaluator.document_count("search")["mc"] == 5
    assert gen.task.get_config("generation_kwargs")["max_gen_toks"] == 3
    assert gen.task.get_config("generation_kwargs")["until"] == ["\n"]
    assert evaluator.metrics["gen"] == "exact_match,raw"
    assert evaluator.higher_is_better["gen"] is False
    scores = evaluator.score(load_lm(tiny_lm_zoo.variants[0]))
    assert set(scores) == {"mc", "gen"}


BAD_OBJECTIVES = {
    "unknown_metric": (
        "  - {{name: bad, task: {tasks}/toy_mc.yaml, metric: bleu}}\n",
        "does not report 'bleu'",
    ),
    "unknown_filter": (
        "  - {{name: bad, task: {tasks}/toy_gen.yaml, metric: 'chrf,flexible'}}\n",
        "no filter 'flexible'",
    ),
    "bad_yaml": ("  - {{name: bad, task: {broken}}}\n", "does not load"),
    "empty_split": ("  - {{name: bad, task: {single}}}\n", "none left for the heldout split"),
}


@pytest.fixture(scope="module")
def bad_task_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_tasks")
    broken = folder / "broken.yaml"
    broken.write_text("task: broken\ndataset_path: json\n  doc_to_text: [unclosed\n")
    single = write_task(folder, "toy_single", addition_rows(1), "mc")
    return {"broken": broken, "single": single}


@pytest.mark.parametrize("case", sorted(BAD_OBJECTIVES))
def test_bad_objective_is_a_user_error_before_any_model_loads(case, tiny_lm_zoo, bad_task_files, tmp_path):
    template, message = BAD_OBJECTIVES[case]
    text = STANDARD_OBJECTIVES.format(tasks=tiny_lm_zoo.tasks) + template.format(
        tasks=tiny_lm_zoo.tasks, **bad_task_files
    )
    text = text.replace("  - {name: bad,", "  - {model: ft0, name: bad,")
    recipe = zoo_recipe(tiny_lm_zoo, tmp_path, text)
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text("{ this is not json")
    done = hm3_in_process("eval", "--recipe", recipe, "--model", not_a_model)
    assert done.returncode == 2, done.stderr
    assert "objective bad:" in done.stderr and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_unknown_registry_task_is_a_user_error(tiny_lm_zoo, tmp_path):
    from hm3.evaluate import Evaluator
    from hm3.recipe import load_recipe

    text = STANDARD_OBJECTIVES.format(tasks=tiny_lm_zoo.tasks)
    text = text.replace(f"{tiny_lm_zoo.tasks}/toy_gen.yaml", "no_such_task_hm3")
    with pytest.raises(UserError, match="objective gen: lm-eval has no task named 'no_such_task_hm3'"):
        Evaluator.from_recipe(load_recipe(zoo_recipe(tiny_lm_zoo, tmp_path, text)))


def test_registry_name_found_in_include_path_skips_the_builtin_index(tiny_lm_zoo, tmp_path):
    from hm3.evaluate.task_loading import TaskScopes
    from hm3.recipe import load_recipe

    text = f"  - {{name: mc, task: toy_mc, include_path: {tiny_lm_zoo.tasks}, model: ft0}}\n"
    text += f"  - {{name: gen, task: {tiny_lm_zoo.tasks}/toy_gen.yaml, model: ft1}}\n"
    recipe = load_recipe(zoo_recipe(tiny_lm_zoo, tmp_path, text))
    manager = TaskScopes().manager(recipe.objectives[0])
    assert "toy_mc" in manager.task_index and "gsm8k" not in manager.task_index


def test_a_task_name_resolves_in_its_own_include_path_only(tiny_lm_zoo, tmp_path):
    """Another objective's folder defining the same name once won by the objectives' order (lm-eval, given the
    objective's include path, loads the task there); a name no folder of its own defines is lm-eval's."""
    from hm3.evaluate import Evaluator
    from hm3.evaluate.task_loading import TaskScopes, load_objective_task
    from hm3.recipe import SplitConfig, load_recipe

    own = tmp_path / "own"
    own.mkdir()
    (own / "toy_gen.yaml").write_text(
        (tiny_lm_zoo.tasks / "toy_gen.yaml").read_text() + 'description: "own folder "\n'
    )
    by_name = f"  - {{name: named, task: toy_gen, include_path: {own}, model: ft0}}\n"
    by_file = (
        f"  - {{name: filed, task: {tiny_lm_zoo.tasks}/toy_mc.yaml, model: ft1}}\n"  # its folder: toy_gen too
    )
    for order in ([by_name, by_file], [by_file, by_name]):
        recipe = load_recipe(zoo_recipe(tiny_lm_zoo, tmp_path, "".join(order)))
        named = next(o for o in recipe.objectives if o.name == "named")
        scopes = TaskScopes()
        task = load_objective_task(named, scopes.manager(named), SplitConfig()).task
        assert task.config.description == "own folder "
    unscoped = f"  - {{name: named, task: toy_gen, model: ft0}}\n{by_file}"
    recipe = load_recipe(zoo_recipe(tiny_lm_zoo, tmp_path, unscoped))
    with pytest.raises(UserError, match="objective named: lm-eval has no task named 'toy_gen'"):
        Evaluator.from_recipe(recipe)


def test_validate_notes_few_shot_examples_drawn_from_the_scored_documents(tiny_lm_zoo, tmp_path):
    """A task with only a test split draws its few-shot examples from it (lm-eval's rule): the search's prompts
    then show held-out documents with their answers. Said at validate time, not silently."""
    shots = f"  - {{name: mc, task: {tiny_lm_zoo.tasks}/toy_mc.yaml, model: ft0, num_fewshot: 2}}\n"
    done = hm3_in_process("validate", zoo_recipe(tiny_lm_zoo, tmp_path, shots))
    assert done.returncode == 0, done.stderr
    assert (
        "objectives[0].task (mc): its 2 few-shot examples are drawn from the documents it is scored on"
        in (done.stdout)
    ), done.stdout
    none = shots.replace("num_fewshot: 2", "num_fewshot: 0")
    done = hm3_in_process("validate", zoo_recipe(tiny_lm_zoo, tmp_path, none, name="zero.yaml"))
    assert done.returncode == 0 and "few-shot" not in done.stdout, done.stdout


def test_validate_notes_a_direction_the_task_contradicts(tiny_lm_zoo, tmp_path):
    """``higher_is_better: false`` on exact match reads as a slip: the search would minimise accuracy. A note."""
    objective = (
        f"  - {{name: mc, task: {tiny_lm_zoo.tasks}/toy_mc.yaml, model: ft0, higher_is_better: false}}\n"
    )
    done = hm3_in_process("validate", zoo_recipe(tiny_lm_zoo, tmp_path, objective))
    assert done.returncode == 0, done.stderr
    assert (
        "objectives[0].higher_is_better (mc): the recipe says False, the task says True for acc"
        in done.stdout
    )
    agreeing = objective.replace("higher_is_better: false", "higher_is_better: true")
    done = hm3_in_process("validate", zoo_recipe(tiny_lm_zoo, tmp_path, agreeing, name="agree.yaml"))
    assert done.returncode == 0 and "higher_is_better" not in done.stdout, done.stdout


def test_hm3_validate_loads_local_tasks_and_checks_registry_names_offline(tiny_lm_zoo, tmp_path):
    good = STANDARD_OBJECTIVES.format(tasks=tiny_lm_zoo.tasks)
    done = hm3_in_process("validate", zoo_recipe(tiny_lm_zoo, tmp_path, good))
    assert done.returncode == 0, done.stderr
    bad = good.replace("metric: 'chrf,raw'", "metric: 'chrf,flexible'").replace(
        f"{tiny_lm_zoo.tasks}/toy_mc.yaml", "sst2"
    )
    done = hm3_in_process("validate", zoo_recipe(tiny_lm_zoo, tmp_path, bad, name="bad.yaml"))
    assert done.returncode == 2
    assert "objectives[1].task: task toy_gen has no filter 'flexible'" in done.stderr, done.stderr
    registry = good.replace(f"{tiny_lm_zoo.tasks}/toy_mc.yaml", "sst2")
    empty = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    done = run_hm3("validate", zoo_recipe(tiny_lm_zoo, tmp_path, registry, name="registry.yaml"), env=empty)
    assert done.returncode == 0, done.stderr
    assert "note: objectives[0].task (sst2): needs the hub: data set nyu-mll/glue" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a CUDA GPU refuses device: cuda")
def test_eval_holds_saved_models_to_the_recipes_device(tiny_lm_zoo, tmp_path):
    """``hm3 eval`` scored on the CPU whatever the recipe's ``device`` said; ``cuda`` without a GPU is one line."""
    recipe = zoo_recipe(tiny_lm_zoo, tmp_path, STANDARD_OBJECTIVES.format(tasks=tiny_lm_zoo.tasks))
    recipe.write_text(recipe.read_text() + "device: cuda\n")
    done = hm3_in_process("eval", "--recipe", recipe, "--model", tiny_lm_zoo.variants[0])
    assert done.returncode == 2 and done.stderr == (
        "hm3 eval: device: cuda asked for, but no CUDA GPU is visible (use device: cpu or auto)\n"
    ), done.stderr
