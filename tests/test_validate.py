"""`hm3 validate`: every shipped recipe passes; malformed ones fail with exit 2, one line per problem, the field
named, and no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli.main import main
from tests.fixtures_models import build_tiny_model, hm3_in_process, run_hm3, write_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.fixture
def good_recipe_text(tiny_llama) -> str:
    """A valid recipe over the tiny llama pool, to be broken one way per test."""
    ft = tiny_llama.finetunes
    return f"""
base_model: {tiny_llama.base}
models:
  - {{name: a, path: {ft[0]}}}
  - {{name: b, path: {ft[1]}}}
objectives:
  - {{name: sst2, task: sst2, metric: acc}}
  - {{name: mathqa, task: mathqa, metric: acc}}
"""


def _validate(tmp_path: Path, text: str, capsys) -> tuple[int, list[str]]:
    """Run `hm3 validate` in-process: (exit code, lines printed; stderr's when it failed, stdout's otherwise)."""
    path = write_recipe(tmp_path, text)
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, [line for line in (captured.err if code else captured.out).splitlines() if line]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_shipped_recipe_validates(recipe: Path) -> None:
    if "../zoo/" in recipe.read_text() and not _zoo_folders_exist(recipe):
        pytest.skip("toy recipe: its zoo is not built here (tests/test_zoo.py builds and validates it)")
    if "/himole_tasks/" in recipe.read_text():  # its tests: `hm3 himole tasks --zoo` writes them into the zoo
        from hm3.himole.shifted import write_shifted_tasks
        from hm3.recipe import load_recipe

        write_shifted_tasks(Path(load_recipe(recipe).base_model.path).parent)
    result = hm3_in_process("validate", recipe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")


# The classes of the task-arithmetic benchmark's 8 data sets (their published class counts).
CLIP_TASK_CLASSES = {
    "sun397": 397, "stanford_cars": 196, "resisc45": 45, "eurosat": 10, "svhn": 10, "gtsrb": 43, "mnist": 10,
    "dtd": 47,
}  # fmt: skip


@pytest.mark.parametrize("name", ["clip-vit-b32-8tasks.yaml", "clip-vit-l14-8tasks.yaml"])
def test_the_clip_recipes_build_the_heads_their_encoders_were_fine_tuned_against(name: str) -> None:
    """Every objective names its classes and prompt templates (FusionBench's, shared by both recipes): a head
    from the hub data's raw ClassLabel names and one generic template is not the one the tanganke encoders
    learned to match. One name per class of each data set; the models are the collection's hub ids."""
    from hm3.recipe import load_recipe

    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / name)
    classes = {o.name: len(o.class_names or ()) for o in recipe.objectives}
    assert classes == CLIP_TASK_CLASSES
    assert all(o.head == "zeroshot" and len(o.templates) >= 1 for o in recipe.objectives)
    eurosat = next(o for o in recipe.objectives if o.name == "eurosat")
    assert (
        eurosat.templates[0] == "a centered satellite photo of {}."
        and eurosat.class_names[0] == "annual crop land"
    )
    svhn = next(o for o in recipe.objectives if o.name == "svhn")
    assert svhn.dataset is not None and svhn.dataset.config == "cropped_digits"  # the hub data set has two
    cars = next(m for m in recipe.models if m.name == "stanford_cars")
    assert cars.path.endswith("_stanford-cars")  # the collection's id (an underscore there names no model)


def _zoo_folders_exist(recipe: Path) -> bool:
    import yaml

    base = yaml.safe_load(recipe.read_text())["base_model"]
    return (recipe.parent / (base["path"] if isinstance(base, dict) else base)).exists()


def test_good_recipe_validates(tmp_path, good_recipe_text, capsys) -> None:
    code, lines = _validate(tmp_path, good_recipe_text, capsys)
    assert code == 0
    assert lines[0].startswith("ok: ") and "2 models (llama, 2 layers), 2 objectives" in lines[0]


# Each case: (what is broken, replace this, with that, the YAML path the error must name).
SCHEMA_CASES = [
    ("wrong type", "  - {name: b,", "  - {name: [1, 2],", "models[1].name"),
    ("unknown top-level key", "objectives:", "colour: blue\nobjectives:", "colour"),
    ("unknown nested key", "{name: a, path:", "{name: a, nme: x, path:", "models[0].nme"),
    ("gamma out of range", "objectives:", "agent: {gamma: 1.5}\nobjectives:", "agent.gamma"),
    ("iterations not a number", "objectives:", "agent: {iterations: many}\nobjectives:", "agent.iterations"),
    ("unknown agent actions", "objectives:", "agent: {actions: teleport}\nobjectives:", "agent.actions"),
    (
        "fixed layers without the edit agent",
        "objectives:",
        "architecture_level: {fixed_first: 1}\nobjectives:",
        "architecture_level.fixed_first",
    ),
    (
        "negative fixed layers",
        "objectives:",
        "architecture_level: {fixed_last: -1}\nobjectives:",
        "architecture_level.fixed_last",
    ),
    (
        "every layer fixed",
        "objectives:",
        "architecture_level: {fixed_first: 1, fixed_last: 1}\nagent: {actions: edit}\nobjectives:",
        "architecture_level",
    ),
    (
        "unknown merge method",
        "objectives:",
        "parameter_level: {method: magic}\nobjectives:",
        "parameter_level.method",
    ),
    (
        "density and drop_rate disagree",
        "objectives:",
        "parameter_level: {method: dare_ties, density: 0.4, drop_rate: 0.5}\nobjectives:",
        "parameter_level",
    ),
    (
        "search fraction out of range",
        "objectives:",
        "split: {search_fraction: 1.5}\nobjectives:",
        "split.search_fraction",
    ),
    (
        "a screen as large as the search split",
        "objectives:",
        "split: {screen_fraction: 1.0}\nobjectives:",
        "split.screen_fraction",
    ),
    (
        "screening switched with a word",
        "objectives:",
        "architecture_level: {screen_paths: sometimes}\nobjectives:",
        "architecture_level.screen_paths",
    ),
    (
        "unknown scalarization",
        "objectives:",
        "preferences: {scalarization: best}\nobjectives:",
        "preferences.scalarization",
    ),
    ("duplicate model names", "{name: b,", "{name: a,", "models"),
    ("unknown tokenizer source", "objectives:", "tokenizer_source: nobody\nobjectives:", "tokenizer_source"),
    (
        "task and dataset both",
        "{name: sst2, task: sst2, metric: acc}",
        "{name: sst2, task: sst2, dataset: {format: npz, path: x.npz}, head: h.safetensors}",
        "objectives[0]",
    ),
    (
        "vision objective without head",
        "{name: sst2, task: sst2, metric: acc}",
        "{name: sst2, dataset: {format: npz, path: x.npz}}",
        "objectives[0]",
    ),
    ("bad device", "objectives:", "device: tpu\nobjectives:", "device"),
    (
        "a hub data set's setting on a file",  # ignored before
        "{name: sst2, task: sst2, metric: acc}",
        "{name: sst2, dataset: {format: npz, path: x.npz, label_key: y}, head: h.safetensors}",
        "objectives[0].dataset",
    ),
    (
        "an lm-eval setting on a vision objective",  # ignored before
        "{name: sst2, task: sst2, metric: acc}",
        "{name: sst2, dataset: {format: npz, path: x.npz}, head: h.safetensors, num_fewshot: 5}",
        "objectives[0]",
    ),
    (
        "a head on an lm-eval objective",
        "{name: sst2, task: sst2, metric: acc}",
        "{name: sst2, task: sst2, head: h}",
        "objectives[0]",
    ),
    (
        "objective of an unknown model",
        "{name: sst2, task: sst2,",
        "{name: sst2, model: nobody, task: sst2,",
        "objectives[0].model",
    ),
    (
        "more objectives than models without a mapping",
        "  - {name: mathqa,",
        "  - {name: rte, task: rte}\n  - {name: mathqa,",
        "objectives",
    ),
]


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
def test_schema_errors_name_the_field(tmp_path, good_recipe_text, capsys, case) -> None:
    _, old, new, field = case
    assert old in good_recipe_text
    code, lines = _validate(tmp_path, good_recipe_text.replace(old, new, 1), capsys)
    assert code == 2
    assert any(f": {field}: " in line for line in lines), lines
    assert not any("Traceback" in line for line in lines)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("{name: sst2,", "{name: sst 2,", "objectives[0].name: must be letters, digits, '_', '.' or '-'"),
        (
            "objectives:",
            "parameter_level: {granularity: block:1}\nobjectives:",
            "must be 'model' or 'block:N'",
        ),
        ("objectives:", "output: {shard_size: 5 gigs}\nobjectives:", "must be a size such as '5GB'"),
    ],
    ids=["name", "granularity", "shard_size"],
)
def test_a_string_of_the_wrong_form_says_what_form_in_words(
    tmp_path, good_recipe_text, capsys, old, new, expected
) -> None:
    """Not the regular expression (``String should match pattern '^[\\w.\\-]+$'``), and the value given."""
    code, lines = _validate(tmp_path, good_recipe_text.replace(old, new, 1), capsys)
    given = {"name": "sst 2", "granularity": "block:1", "shard_size": "5 gigs"}
    assert code == 2 and len(lines) == 1 and expected in lines[0] and "pattern" not in lines[0], lines
    assert any(lines[0].endswith(f", not {value!r}") for value in given.values()), lines


def test_empty_objectives(tmp_path, good_recipe_text, capsys) -> None:
    text = good_recipe_text.split("objectives:")[0] + "objectives: []\n"
    code, lines = _validate(tmp_path, text, capsys)
    assert code == 2 and any("objectives: must not be empty" in line for line in lines)


def test_missing_models_section(tmp_path, tiny_llama, capsys) -> None:
    code, lines = _validate(
        tmp_path, f"base_model: {tiny_llama.base}\nobjectives: [{{name: o, task: sst2}}]\n", capsys
    )
    assert code == 2 and any("models: required" in line for line in lines)


def test_several_problems_reported_together(tmp_path, good_recipe_text, capsys) -> None:
    text = good_recipe_text.replace("objectives:", "agent: {gamma: 0, iterations: -1}\nobjectives:")
    code, lines = _validate(tmp_path, text, capsys)
    assert code == 2
    assert any("agent.gamma: must be in (0, 1]" in line for line in lines)
    assert any("agent.iterations" in line for line in lines)


def test_yaml_syntax_error_gives_line(tmp_path, capsys) -> None:
    code, lines = _validate(tmp_path, "models: [a, b\nobjectives: {", capsys)
    assert code == 2 and len(lines) == 1 and "line" in lines[0]


def test_a_key_given_twice_is_refused_but_a_merge_key_may_be_overridden(
    tmp_path, good_recipe_text, capsys
) -> None:
    """PyYAML keeps the last of two ``seed:`` lines silently; a recipe saying two things is refused instead."""
    code, lines = _validate(tmp_path, good_recipe_text + "seed: 1\nseed: 2\n", capsys)
    assert code == 2 and len(lines) == 1 and "key 'seed' is given twice in one mapping" in lines[0], lines
    merged = "defaults: &agent {gamma: 0.9, iterations: 5}\n"
    from hm3.recipe import _read_yaml

    (tmp_path / "m.yaml").write_text(merged + "agent: {<<: *agent, iterations: 7}\n")
    assert _read_yaml(tmp_path / "m.yaml", "")["agent"] == {"gamma": 0.9, "iterations": 7}


def test_nonexistent_include(tmp_path, good_recipe_text, capsys) -> None:
    code, lines = _validate(tmp_path, "include: nowhere.yaml\n" + good_recipe_text, capsys)
    assert code == 2 and any(": include: included file not found" in line for line in lines)


def test_include_cycle(tmp_path, capsys) -> None:
    write_recipe(tmp_path, "include: b.yaml\n", "a.yaml")
    write_recipe(tmp_path, "include: a.yaml\n", "b.yaml")
    assert main(["validate", str(tmp_path / "a.yaml")]) == 2
    assert "include cycle" in capsys.readouterr().err


def test_include_inherits_and_resolves_paths_against_its_own_folder(tmp_path, tiny_llama, capsys) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    relative_ft = Path("..") / ".." / Path(tiny_llama.finetunes[0]).relative_to(tiny_llama.root.parent.parent)
    write_recipe(
        shared,
        f"base_model: {tiny_llama.base}\nmodels: [{{name: a, path: {relative_ft}}}]\n"
        "agent: {gamma: 0.9, iterations: 5}\n",
        "base.yaml",
    )
    child = write_recipe(
        tmp_path, "include: shared/base.yaml\nagent: {iterations: 7}\nobjectives: [{name: o, task: sst2}]\n"
    )
    from hm3.recipe import load_recipe

    recipe = load_recipe(child)
    assert recipe.agent.gamma == 0.9 and recipe.agent.iterations == 7
    assert Path(recipe.models[0].path) == Path(tiny_llama.finetunes[0]).resolve()


def test_an_included_file_s_one_slash_paths_resolve_against_its_own_folder(tmp_path, tiny_llama) -> None:
    """``tasks/add.yaml`` in an included file is that file's ``tasks/add.yaml``, not the including recipe's, even
    where the including recipe's folder holds a file of that name (it read as a hub-id-like string before)."""
    from hm3.recipe import load_recipe

    shared = tmp_path / "inc" / "sub"
    for folder in (shared, tmp_path):  # the same relative names next to both files
        (folder / "tasks").mkdir(parents=True)
        (folder / "tasks" / "add.yaml").write_text("task: add\n")
    shutil.copytree(tiny_llama.finetunes[0], shared / "zoo" / "ft")
    write_recipe(
        shared,
        f"base_model: {tiny_llama.base}\nmodels: [{{name: a, path: zoo/ft}}]\n"
        "objectives: [{name: t, task: tasks/add.yaml, metric: acc}]\noutput: {dir: runs/out}\n",
        "common.yaml",
    )
    recipe = load_recipe(write_recipe(tmp_path, "include: inc/sub/common.yaml\n"))
    assert recipe.objectives[0].task == str((shared / "tasks" / "add.yaml").resolve())
    assert recipe.output.dir == str((shared / "runs" / "out").resolve())
    assert recipe.models[0].path == str((shared / "zoo" / "ft").resolve())


# -- problems found in the models themselves (headers and configs, nothing loaded) ----------------------


def test_missing_model_folder(tmp_path, good_recipe_text, tiny_llama, capsys) -> None:
    text = good_recipe_text.replace(str(tiny_llama.finetunes[1]), str(tmp_path / "gone"))
    code, lines = _validate(tmp_path, text, capsys)
    assert code == 2 and any(": models[1]: folder not found" in line for line in lines)


def test_pickle_checkpoint_needs_opt_in(tmp_path, good_recipe_text, tiny_llama, capsys) -> None:
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_llama.finetunes[0], pickled)
    state = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    text = good_recipe_text.replace(str(tiny_llama.finetunes[0]), str(pickled))
    code, lines = _validate(tmp_path, text, capsys)
    assert code == 2 and any(": models[0]: only pickle weights" in line for line in lines)
    code, lines = _validate(tmp_path, "allow_pickle: true\n" + text, capsys)
    assert code == 0, lines
    from hm3.checkpoint import Checkpoint

    checkpoint = Checkpoint(pickled, allow_pickle=True)  # its tensors load (they were dropped once)
    name = next(iter(state))
    assert checkpoint.pickled and torch.equal(checkpoint.load(name), state[name])


def test_mismatched_architecture(tmp_path, good_recipe_text, tiny_pools, tiny_llama, capsys) -> None:
    text = good_recipe_text.replace(str(tiny_llama.finetunes[1]), str(tiny_pools["qwen2"].finetunes[0]))
    code, lines = _validate(tmp_path, text, capsys)
    assert code == 2 and any(
        ": models[1]: architecture qwen2 differs from the base's llama" in line for line in lines
    )


def test_mismatched_shapes_lists_tensors(tmp_path, good_recipe_text, tiny_llama, capsys) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    wide = tmp_path / "wide"
    shutil.copytree(tiny_llama.finetunes[0], wide)
    state = load_file(wide / "model.safetensors")
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(65, 32)
    save_file(state, wide / "model.safetensors", metadata={"format": "pt"})
    code, lines = _validate(
        tmp_path, good_recipe_text.replace(str(tiny_llama.finetunes[0]), str(wide)), capsys
    )
    assert code == 2
    assert any(": models[0]: tensor shapes differ" in line and "up_proj" in line for line in lines)


def test_different_layer_count(tmp_path, good_recipe_text, tiny_llama, capsys) -> None:
    deep = build_tiny_model("llama", tmp_path / "deep", seed=3, layers=3)
    code, lines = _validate(
        tmp_path, good_recipe_text.replace(str(tiny_llama.finetunes[0]), str(deep)), capsys
    )
    assert code == 2 and any(": models[0]: 3 layers, the base has 2" in line for line in lines)


def test_missing_shard(tmp_path, good_recipe_text, tiny_llama, capsys) -> None:
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_llama.finetunes[0], sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    from hm3.checkpoint import read_safetensors_header

    names = list(read_safetensors_header(sharded / "model-00001-of-00002.safetensors"))
    weight_map = {n: "model-00001-of-00002.safetensors" for n in names}
    weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    code, lines = _validate(
        tmp_path, good_recipe_text.replace(str(tiny_llama.finetunes[0]), str(sharded)), capsys
    )
    assert code == 2 and any(": models[0]: missing shard(s) model-00002-of-00002" in line for line in lines)


def test_a_single_file_beside_an_index_of_other_shards_is_refused(
    tmp_path, good_recipe_text, tiny_llama, capsys
) -> None:
    """transformers reads ``model.safetensors`` and hm3 read the index: the search scored one model and
    ``hm3 eval`` another, silently."""
    both = tmp_path / "both"
    shutil.copytree(tiny_llama.finetunes[0], both)
    shutil.copy(tiny_llama.finetunes[1] / "model.safetensors", both / "model-00001-of-00001.safetensors")
    from hm3.checkpoint import read_safetensors_header

    names = list(read_safetensors_header(both / "model.safetensors"))
    (both / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": dict.fromkeys(names, "model-00001-of-00001.safetensors")})
    )
    code, lines = _validate(
        tmp_path, good_recipe_text.replace(str(tiny_llama.finetunes[0]), str(both)), capsys
    )
    assert code == 2 and len(lines) == 1, lines
    assert (
        ": models[0]: holds both model.safetensors and model.safetensors.index.json listing other" in lines[0]
    )


def test_remote_code_needs_opt_in(tmp_path, good_recipe_text, tiny_llama, capsys) -> None:
    custom = tmp_path / "custom"
    shutil.copytree(tiny_llama.finetunes[0], custom)
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.Custom"}
    (custom / "config.json").write_text(json.dumps(config))
    text = good_recipe_text.replace(str(tiny_llama.finetunes[0]), str(custom))
    code, lines = _validate(tmp_path, text, capsys)
    assert code == 2 and any(": models[0]: its config asks for custom code" in line for line in lines)
    assert _validate(tmp_path, "trust_remote_code: true\n" + text, capsys)[0] == 0


def test_device_memory_that_cannot_hold_one_candidate_is_refused(tmp_path, good_recipe_text, capsys) -> None:
    code, lines = _validate(tmp_path, good_recipe_text + "device_memory: 1KiB\n", capsys)
    assert code == 2
    assert any(
        ": device_memory: 1.00 KiB cannot hold one candidate: its shared tensors" in line for line in lines
    )
    code, lines = _validate(tmp_path, good_recipe_text + "device_memory: 1GiB\n", capsys)
    assert code == 0 and any("offload: the models stay in host memory" in line for line in lines)


def test_missing_task_yaml(tmp_path, good_recipe_text, capsys) -> None:
    text = good_recipe_text.replace("task: sst2,", "task: tasks/none.yaml,")
    code, lines = _validate(tmp_path, text, capsys)
    assert code == 2 and any(": objectives[0].task: task file not found" in line for line in lines)


def test_vocabulary_mismatch_is_a_note_not_an_error(tmp_path, tiny_llama) -> None:
    bigger = build_tiny_model("llama", tmp_path / "bigger", seed=5, vocab=72)
    path = write_recipe(
        tmp_path,
        f"""
base_model: {tiny_llama.base}
models: [{{name: a, path: {tiny_llama.finetunes[0]}}}, {{name: big, path: {bigger}}}]
objectives: [{{name: o, task: sst2}}, {{name: p, task: rte}}]
""",
    )
    result = hm3_in_process("validate", path)
    assert result.returncode == 0, result.stderr
    assert "models[1]: vocabulary has 72 rows, the merged model keeps 64" in result.stdout


def test_the_base_listed_as_a_model_is_a_note(tmp_path, tiny_llama) -> None:
    path = write_recipe(
        tmp_path,
        f"""
base_model: {tiny_llama.base}
models: [{{name: a, path: {tiny_llama.finetunes[0]}}}, {{name: b, path: {tiny_llama.base}/}}]
objectives: [{{name: o, task: sst2}}, {{name: p, task: rte}}]
""",
    )
    result = hm3_in_process("validate", path)
    assert result.returncode == 0, result.stderr
    assert "models[1]: is the base model itself: its task vector is zero" in result.stdout


def test_real_subprocess_has_no_traceback(tmp_path) -> None:
    path = write_recipe(
        tmp_path, "base_model: /nowhere\nmodels: [/nowhere/a]\nobjectives: [{name: o, task: sst2}]\n"
    )
    result = run_hm3("validate", path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"hm3 validate: {path}: base_model: folder not found: /nowhere",
        f"hm3 validate: {path}: models[0]: folder not found: /nowhere/a",
    ]


def test_preference_maps_to_model_weights(tmp_path, good_recipe_text) -> None:
    from hm3.recipe import load_recipe

    text = good_recipe_text.replace(
        "  - {name: mathqa, task: mathqa, metric: acc}",
        "  - {name: mathqa, model: b, task: mathqa, metric: acc}\n  - {name: gsm8k, model: b, task: gsm8k}",
    )
    text = text.replace("{name: sst2, task: sst2,", "{name: sst2, model: a, task: sst2,")
    recipe = load_recipe(write_recipe(tmp_path, text))
    assert recipe.model_weights([0.2, 0.5, 0.3]) == pytest.approx([0.2, 0.8])
