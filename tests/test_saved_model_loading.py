"""Loading saved models (``hm3.load_merged``, ``hm3 eval``): one loader for both, a routed model's ``stats`` maps
attached and checked against its routing record, weights that do not match the config refused in one line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hm3.errors import UserError
from hm3.routing.path import InferencePath
from tests.fixtures_models import hm3_in_process, run_hm3
from tests.fixtures_zoo import lm_zoo_micro, vit_zoo_micro  # noqa: F401

# The vision micro zoo, one preference (the centre): its front holds routed members with maps (about 20 s).
VISION_STATS = """
base_model: {{path: {zoo}/base}}
models:
  - {{name: rotated, path: {zoo}/rotated}}
  - {{name: inverted, path: {zoo}/inverted}}
  - {{name: permuted, path: {zoo}/permuted}}
objectives:
  - {{name: rotated, dataset: {{format: npz, path: {zoo}/data/rotated_test.npz}}, head: {zoo}/rotated/head.safetensors, metric: accuracy}}
  - {{name: inverted, dataset: {{format: npz, path: {zoo}/data/inverted_test.npz}}, head: {zoo}/inverted/head.safetensors, metric: accuracy}}
  - {{name: permuted, dataset: {{format: npz, path: {zoo}/data/permuted_test.npz}}, head: {zoo}/permuted/head.safetensors, metric: accuracy}}
split: {{search_fraction: 0.7, seed: 0}}
parameter_level: {{method: task_arithmetic, weights: preference}}
architecture_level: {{enabled: true, alignment: stats}}
preferences: {{count: 1}}
agent: {{iterations: 8, n_steps: 16, batch_size: 8, n_epochs: 1, patience: null, actions: edit}}
seed: 0
"""  # fmt: skip

# hm3 eval on the language micro zoo, a few documents per objective.
LM_EVAL = """
base_model: {{path: {zoo}/base}}
models:
  - {{name: addition, path: {zoo}/addition}}
  - {{name: reversal, path: {zoo}/reversal}}
objectives:
  - {{name: addition, task: {zoo}/tasks/toy_addition.yaml, metric: exact_match, limit: 4}}
  - {{name: reversal, task: {zoo}/tasks/toy_reversal.yaml, metric: exact_match, limit: 4}}
"""


@pytest.fixture(scope="module")
def stats_run(vit_zoo_micro: Path, tmp_path_factory) -> tuple[Path, Path]:  # noqa: F811
    """A finished vision micro run with ``stats`` alignment: (recipe, run)."""
    folder = tmp_path_factory.mktemp("stats_run")
    recipe = folder / "stats.yaml"
    recipe.write_text(VISION_STATS.format(zoo=vit_zoo_micro))
    done = run_hm3("merge", "--recipe", recipe, "--out", folder / "run", "--quiet", timeout=900)
    assert done.returncode == 0, done.stderr
    return recipe, folder / "run"


@pytest.fixture(scope="module")
def stats_export(stats_run: tuple[Path, Path], tmp_path_factory) -> tuple[dict, Path]:
    """A front member whose path has a step with a map, exported: (its front entry, the folder)."""
    _, run = stats_run
    front = json.loads((run / "front.json").read_text())
    merged = len(front["members"][0]["preference"])  # index K: the merged model, whose embeddings are used

    def mapped(member: dict) -> bool:
        path = InferencePath.from_data(member["path"] or [])
        return any(not path.is_native_input(step, merged) for step in range(len(path)))

    member = next(m for m in front["members"] if m["alignment"] == "stats" and m["path"] and mapped(m))
    out = tmp_path_factory.mktemp("stats_export") / "model"
    done = hm3_in_process("export", run, "--member", member["id"], "--out", out)
    assert done.returncode == 0, done.stderr
    assert (out / "hm3_alignment.safetensors").is_file() and (out / "hm3_routing.json").is_file()
    assert not (out / "mergekit_config.yml").exists()  # README: an export has no mergekit config
    return member, out


def _edited_copy(source: Path, folder: Path) -> Path:
    return Path(shutil.copytree(source, folder / "edited"))


def _edit_record(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        file = folder / "hm3_routing.json"
        file.write_text(json.dumps(edit(json.loads(file.read_text()))))

    return apply


def _edit_maps(edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        file = folder / "hm3_alignment.safetensors"
        save_file(edit(load_file(str(file))), str(file))

    return apply


def _first_map(value: float, kind: str = "scale") -> Callable[[dict[str, torch.Tensor]], dict]:
    def edit(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        name = sorted(n for n in tensors if n.endswith(kind))[0]
        tensors[name] = tensors[name].clone()
        tensors[name][0] = value
        return tensors

    return edit


def _without(suffix: str) -> Callable[[dict[str, torch.Tensor]], dict]:
    return lambda tensors: {n: t for n, t in tensors.items() if not n.endswith(suffix)}


def _reshaped(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t[:-1].clone() for n, t in tensors.items()}


def _with_native_step(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    steps = {int(n.split(".")[1]) for n in tensors}
    free = next(s for s in range(8) if s not in steps)
    like = next(iter(tensors.values()))
    return {
        **tensors,
        f"step.{free}.scale": torch.ones_like(like),
        f"step.{free}.shift": torch.zeros_like(like),
    }


def test_eval_of_a_stats_export_scores_what_the_front_says(
    stats_run: tuple[Path, Path], stats_export: tuple[dict, Path]
) -> None:
    """``hm3 eval`` loads an export as ``hm3.load_merged`` does, maps attached: its held-out scores are the
    front's, exactly (``from_pretrained`` alone, the model without its maps, scores otherwise)."""
    recipe, _ = stats_run
    member, out = stats_export
    done = hm3_in_process("eval", "--recipe", recipe, "--model", out, "--split", "heldout", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["scores"][str(out.resolve())] == member["scores"]["heldout"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_edit_record(lambda r: {**r, "alignment": "none"}), "but hm3_routing.json says alignment 'none'"),
        (
            _edit_record(lambda r: {**r, "alignment": "Stats"}),
            "'alignment' is 'Stats', not 'none' or 'stats'",
        ),
        (_edit_record(lambda r: {k: v for k, v in r.items() if k != "alignment"}), "'alignment' is None"),
        (
            lambda f: (f / "hm3_routing.json").unlink(),
            "holds hm3_alignment.safetensors but no hm3_routing.json",
        ),
        (_edit_record(lambda r: [r]), "hm3_routing.json: holds a JSON list, not an object"),
        (_edit_record(lambda r: {**r, "path": r["path"][:-1] or None}), "hm3_routing.json: "),
        (_edit_maps(_first_map(float("nan"))), "holds NaN or infinite values"),
        (_edit_maps(_first_map(float("inf"), "shift")), "holds NaN or infinite values"),
        (_edit_maps(_without("shift")), "hm3_alignment.safetensors: lacks step."),
        (_edit_maps(_with_native_step), "hm3_alignment.safetensors: has extra step."),
        (_edit_maps(_reshaped), "a map is a float vector of the hidden size"),
        (lambda f: (f / "hm3_alignment.safetensors").write_bytes(b"junk"), "not a readable safetensors file"),
        (lambda f: (f / "model.safetensors").unlink(), "cannot be loaded"),
        (lambda f: (f / "config.json").write_text("{not json"), "config.json is not valid JSON"),
        (lambda f: (f / "config.json").write_text("[]"), "config.json holds a JSON list, not an object"),
    ],
    ids=[
        "alignment-none",
        "alignment-Stats",
        "alignment-removed",
        "record-removed",
        "record-not-object",
        "path-short",
        "nan",
        "inf",
        "step-missing",
        "step-extra",
        "shape",
        "maps-corrupt",
        "no-weights",
        "config-not-json",
        "config-not-object",
    ],
)
def test_load_merged_refuses_an_edited_export_in_one_line(
    edit: Callable[[Path], None], message: str, stats_export: tuple[dict, Path], tmp_path: Path
) -> None:
    import hm3

    folder = _edited_copy(stats_export[1], tmp_path)
    edit(folder)
    with pytest.raises(UserError) as refused:
        hm3.load_merged(folder)
    text = str(refused.value)
    assert message in text and len(text.splitlines()) == 1, text


def test_eval_refuses_an_edited_export_in_one_line(
    stats_run: tuple[Path, Path], stats_export: tuple[dict, Path], tmp_path: Path
) -> None:
    folder = _edited_copy(stats_export[1], tmp_path)
    _edit_record(lambda r: {**r, "alignment": "none"})(folder)
    done = hm3_in_process("eval", "--recipe", stats_run[0], "--model", folder, "--split", "heldout")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"hm3 eval: {folder.resolve()}: holds hm3_alignment.safetensors but hm3_routing.json says alignment 'none'"
    ]


def _drop_tensor(name: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        tensors = load_file(str(folder / "model.safetensors"))
        del tensors[name]
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})

    return apply


def _edit_config(**changes: object) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))

    return apply


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _drop_tensor("model.layers.1.mlp.down_proj.weight"),
            "they lack model.layers.1.mlp.down_proj.weight",
        ),
        (_edit_config(num_hidden_layers=1), "they hold unused model.layers.1."),
        (
            _edit_config(intermediate_size=24),
            "they store in another shape model.layers.0.mlp.down_proj.weight",
        ),
    ],
    ids=["layer-tensor-removed", "fewer-layers", "other-shape"],
)
def test_eval_refuses_weights_that_do_not_match_the_config(
    edit: Callable[[Path], None],
    message: str,
    lm_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """transformers would initialise a missing tensor at random and drop an unused one: refused instead."""
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(LM_EVAL.format(zoo=lm_zoo_micro))
    folder = _edited_copy(lm_zoo_micro / "addition", tmp_path)
    edit(folder)
    done = hm3_in_process("eval", "--recipe", recipe, "--model", folder)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "its weights do not match its config.json" in lines[0] and message in lines[0]


def test_a_head_left_out_is_refused_unless_the_config_ties_it(
    lm_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Without ``lm_head.weight`` transformers would give the model a random head: refused. A model that ties its
    head to its embeddings stores none: it loads (the head is the embeddings) and is scored."""
    import hm3

    recipe = tmp_path / "eval.yaml"
    recipe.write_text(LM_EVAL.format(zoo=lm_zoo_micro))
    folder = _edited_copy(lm_zoo_micro / "addition", tmp_path)
    _drop_tensor("lm_head.weight")(folder)
    done = hm3_in_process("eval", "--recipe", recipe, "--model", folder)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"hm3 eval: model folder {folder.resolve()}: its weights do not match its config.json: they lack "
        "lm_head.weight"
    ], done.stderr
    _edit_config(tie_word_embeddings=True)(folder)
    model = hm3.load_merged(folder)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    done = hm3_in_process("eval", "--recipe", recipe, "--model", folder, "--json")
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["scores"][str(folder.resolve())]) == {"addition", "reversal"}


def test_eval_tells_folders_of_one_name_apart() -> None:
    """Two exports named ``merged`` under different runs get their parents in the table's header."""
    from hm3.evaluate.saved import folder_labels

    assert folder_labels(["/runs/a/merged", "/runs/b/merged", "/zoo/addition"]) == {
        "/runs/a/merged": "a/merged",
        "/runs/b/merged": "b/merged",
        "/zoo/addition": "addition",
    }
    assert folder_labels(["/x/a/m", "/y/a/m"]) == {"/x/a/m": "x/a/m", "/y/a/m": "y/a/m"}


def test_eval_refuses_a_folder_given_twice(lm_zoo_micro: Path, tmp_path: Path) -> None:  # noqa: F811
    """Scores are keyed by folder: a second mention would silently drop a column."""
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(LM_EVAL.format(zoo=lm_zoo_micro))
    folder = lm_zoo_micro / "addition"
    done = hm3_in_process("eval", "--recipe", recipe, "--model", folder, "--models", f"{folder}/")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"hm3 eval: model folder {folder.resolve()} is given twice; name each folder once"
    ]
