"""Hostile and careless inputs: each ends in one line on stderr and exit 2 (no traceback), runs no code the user
did not opt into, and leaves every input file byte-for-byte as it was.

Everything runs in-process on files written into ``tmp_path`` (and two tiny llama folders); the only lm-eval
work is loading one five-document task YAML.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import shutil
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from tests.fixtures_models import build_tiny_model, hm3_in_process
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401

REGISTRY_OBJECTIVES = """objectives:
  - {name: x, task: sst2}
  - {name: y, task: mathqa}
"""
SCHEMA_ONLY = "base_model: base\nmodels: [a, b]\n" + REGISTRY_OBJECTIVES
ONE_OBJECTIVE = "objectives:\n  - {name: x, task: sst2}\n"


class _Poison:
    """Unpickling this creates ``marker``: the proof that a loader ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _hm3_fails(*args: object, expected: str) -> str:
    """Run ``hm3 ARGS`` in-process; assert exit 2 and exactly one stderr line containing ``expected``."""
    done = hm3_in_process(*args)
    code, err = done.returncode, done.stderr
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-layer llama base and one fine-tune (never modified: tests break copies)."""
    root = tmp_path_factory.mktemp("hostile_models")
    base = build_tiny_model("llama", root / "base", seed=0)
    return base, build_tiny_model("llama", root / "ft", seed=1, base=base)


# -- recipes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (
            "parameter_level: {method: ties, density: .nan}",
            "parameter_level.density: must be a finite number",
        ),
        ("parameter_level: {method: dare_ties, drop_rate: .inf}", "parameter_level.drop_rate"),
        ("parameter_level: {density_search: [0.5, .nan]}", "parameter_level.density_search[1]"),
        ("parameter_level: {scale_search: [1.0, .inf]}", "parameter_level.scale_search[1]"),
        ("parameter_level: {scale_search: [1.0e308]}", "parameter_level.scale_search[0]"),
        ("parameter_level: {density_search: [" + ", ".join(["0.5"] * 101) + "]}", "density_search"),
        ("architecture_level: {length_penalty: .nan}", "architecture_level.length_penalty"),
        ("architecture_level: {max_path_length: 1000000000000}", "architecture_level.max_path_length"),
        ("seed: -1", "seed: must be greater than or equal to 0"),
        ("seed: 1208925819614629174706176", "seed: must be less than 2147483648"),
        ("split: {seed: -3}", "split.seed"),
        ("parameter_level: {seed: 4294967296}", "parameter_level.seed"),
        ("preferences: {seed: -1}", "preferences.seed"),
        ("preferences: {count: 1.0e+9}", "preferences.count: must be less than or equal to 10000"),
        ("preferences: {count: .inf}", "preferences.count"),
        ("agent: {iterations: 1000000000}", "agent.iterations"),
        ("preferences: {count: 0, include_corners: false, include_centre: false}", "no preference to search"),
    ],
)
def test_out_of_range_recipe_values_are_one_line_naming_the_field(extra, field, tmp_path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(SCHEMA_ONLY + extra + "\n")
    before = _snapshot(tmp_path)
    _hm3_fails("validate", recipe, expected=field)
    assert _snapshot(tmp_path) == before


def test_an_infinite_objective_weight_is_refused(tmp_path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base_model: base\nmodels: [a]\nobjectives:\n  - {name: x, task: sst2, weight: .inf}\n")
    _hm3_fails("validate", recipe, expected="objectives[0].weight: must be a finite number")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"base_model: \xff\xfe\x00x\n", "not UTF-8 text"),
        (SCHEMA_ONLY.encode("utf-16"), "not UTF-8 text"),
        (b"\x00\x01\x02binary\xff", "not UTF-8 text"),
        (
            b"base_model: " + b"[" * 100_000,
            "nested too deeply to be a recipe",
        ),  # YAML's RecursionError before
    ],
    ids=["latin-bytes", "utf-16", "binary", "nested"],
)
def test_a_recipe_that_is_not_utf8_or_nests_too_deeply_is_one_line(
    content: bytes, expected: str, tmp_path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(content)
    for command in ("validate", "eval"):
        args = (
            ("validate", recipe)
            if command == "validate"
            else ("eval", "--recipe", recipe, "--model", tmp_path)
        )
        _hm3_fails(*args, expected=expected)
    assert recipe.read_bytes() == content


@pytest.mark.parametrize(
    "models",
    [
        "[ft, {path: ft, name: again}]",
        "[ft, {path: ./sub/../ft, name: again}]",
        "[ft, {path: link, name: again}]",
    ],
    ids=["same-path", "written-otherwise", "symlink"],
)
def test_the_same_model_listed_twice_is_refused(models: str, tiny_models, tmp_path) -> None:
    """Two slots of one model: nothing to merge between them, and each gets half its weight."""
    base, ft = tiny_models
    for name, target in (("base", base), ("ft", ft), ("link", ft)):
        (tmp_path / name).symlink_to(target, target_is_directory=True)
    (tmp_path / "sub").mkdir()
    recipe = tmp_path / "recipe.yaml"
    objectives = (
        "objectives:\n  - {name: x, task: sst2, model: ft}\n  - {name: y, task: sst2, model: again}\n"
    )
    recipe.write_text(f"base_model: base\nmodels: {models}\n{objectives}")
    _hm3_fails("validate", recipe, expected="models[1]: ")
    line = _hm3_fails("merge", "--recipe", recipe, "--out", tmp_path / "run", expected="is models[0] again")
    assert "'ft'" in line and not (tmp_path / "run").exists()


def test_a_folder_given_as_recipe_or_output_file_is_named_as_such(tmp_path) -> None:
    _hm3_fails("validate", tmp_path, expected="is a folder, not a recipe file")
    (tmp_path / "taken").write_text("a file\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(SCHEMA_ONLY + "output: {dir: taken}\n")
    _hm3_fails("validate", recipe, expected="output.dir")
    assert (tmp_path / "taken").read_text() == "a file\n"


# -- model folders --------------------------------------------------------------------------------------------


def _safetensors_bytes(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _break_config_not_utf8(folder: Path) -> None:
    (folder / "config.json").write_bytes(b'{"model_type": "\xff\xfe"}')


def _break_config_is_list(folder: Path) -> None:
    (folder / "config.json").write_text("[1, 2, 3]")


def _break_index_is_list(folder: Path) -> None:
    (folder / "model.safetensors.index.json").write_text("[]")


def _break_index_escapes_folder(folder: Path) -> None:
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"w": "../../etc/passwd"}}')


def _break_header_is_list(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(_safetensors_bytes(b"[1, 2]"))


def _break_header_dtype(folder: Path) -> None:
    header = json.dumps({"w": {"dtype": "F128", "shape": [2], "data_offsets": [0, 32]}}).encode()
    (folder / "model.safetensors").write_bytes(_safetensors_bytes(header, bytes(32)))


def _break_header_shape(folder: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}).encode()
    (folder / "model.safetensors").write_bytes(_safetensors_bytes(header, bytes(8)))


def _break_header_length(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")


def _break_header_not_utf8(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(_safetensors_bytes(b'{"\xff": 1}'))


def _break_truncated(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])


def _break_pickle_only(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Poison(folder.parent / "MARKER")))


def _break_file_not_folder(folder: Path) -> None:
    shutil.rmtree(folder)
    folder.write_text("not a model\n")


MODEL_BREAKERS = {
    "config-not-utf8": (_break_config_not_utf8, "config.json is not UTF-8"),
    "config-is-list": (_break_config_is_list, "config.json holds a JSON list"),
    "index-is-list": (_break_index_is_list, "holds a JSON list"),
    "index-escapes-folder": (_break_index_escapes_folder, "is malformed"),
    "header-is-list": (_break_header_is_list, "not an object"),
    "header-dtype": (_break_header_dtype, "unknown dtype 'F128'"),
    "header-shape": (_break_header_shape, "not a list of non-negative integers"),
    "header-length": (_break_header_length, "does not fit the file"),
    "header-not-utf8": (_break_header_not_utf8, "not a readable safetensors file"),
    "truncated": (_break_truncated, "truncated file"),
    "pickle-only": (_break_pickle_only, "allow_pickle: true"),
    "file-not-folder": (_break_file_not_folder, "is a file, not a model folder"),
    "missing": (shutil.rmtree, "folder not found"),  # hm3 eval said "no config.json (not a saved model)"
}


@pytest.mark.parametrize("broken", list(MODEL_BREAKERS))
def test_a_broken_model_folder_is_one_line_in_validate(broken, tiny_models, tmp_path) -> None:
    base, finetune = tiny_models
    folder = tmp_path / "ft"
    shutil.copytree(finetune, folder)
    breaker, expected = MODEL_BREAKERS[broken]
    breaker(folder)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base_model: {base}\nmodels: [{{name: a, path: {folder}}}]\n" + ONE_OBJECTIVE)
    before, models_before = _snapshot(tmp_path), _snapshot(base.parent)
    assert "models[0]" in _hm3_fails("validate", recipe, expected=expected)
    assert _snapshot(tmp_path) == before and _snapshot(base.parent) == models_before
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize(
    "broken", ["pickle-only", "truncated", "header-is-list", "file-not-folder", "missing"]
)
def test_hm3_eval_holds_a_saved_model_to_the_recipes_rules(
    broken,
    lm_zoo_micro,  # noqa: F811
    tmp_path,
) -> None:
    folder = tmp_path / "saved"
    shutil.copytree(lm_zoo_micro / "addition", folder)
    breaker, expected = MODEL_BREAKERS[broken]
    breaker(folder)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"base_model: {lm_zoo_micro / 'base'}\nmodels: [{lm_zoo_micro / 'addition'}]\nobjectives:\n"
        f"  - {{name: addition, task: {lm_zoo_micro / 'tasks/toy_addition.yaml'}, metric: exact_match, limit: 2}}\n"
    )
    before = _snapshot(tmp_path)
    _hm3_fails("eval", "--recipe", recipe, "--model", folder, expected=expected)
    assert _snapshot(tmp_path) == before and not (tmp_path / "MARKER").exists()


# -- task YAMLs -----------------------------------------------------------------------------------------------

TASK = """task: hostile_toy
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: 4}}
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true}}
"""
EVIL = """from pathlib import Path
Path(__file__).with_name("MARKER").write_text("task code ran")


def process_docs(dataset):
    return dataset
"""


def _task_folder(tmp_path: Path, *, included: bool = False) -> Path:
    """A task YAML whose ``!function`` runs ``evil.py`` (directly, or from a YAML it includes)."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = tasks / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"{i}+{i}=", "target": str(2 * i)}) + "\n" for i in range(10))
    )
    (tasks / "evil.py").write_text(EVIL)
    body = TASK.format(data=data)
    if included:
        (tasks / "common.yaml").write_text(
            body.replace("task: hostile_toy\n", "") + "process_docs: !function evil.process_docs\n"
        )
        (tasks / "task.yaml").write_text("include: common.yaml\ntask: hostile_toy\n")
    else:
        (tasks / "task.yaml").write_text(body + "process_docs: !function evil.process_docs\n")
    return tasks


def _task_recipe(tmp_path: Path, tiny_models, task: Path, extra: str = "") -> Path:
    base, finetune = tiny_models
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"base_model: {base}\nmodels: [{{name: a, path: {finetune}}}]\n"
        f"objectives:\n  - {{name: toy, task: {task}, metric: exact_match}}\n{extra}"
    )
    return recipe


@pytest.mark.parametrize("included", [False, True], ids=["in-the-task", "in-an-include"])
def test_task_code_does_not_run_without_allow_task_code(included, tiny_models, tmp_path) -> None:
    tasks = _task_folder(tmp_path, included=included)
    recipe = _task_recipe(tmp_path, tiny_models, tasks / "task.yaml")
    before = _snapshot(tmp_path)
    line = _hm3_fails("validate", recipe, expected="runs Python code")
    assert "!function evil.process_docs" in line and "allow_task_code: true" in line
    assert not (tasks / "MARKER").exists() and _snapshot(tmp_path) == before  # no marker, no __pycache__


def test_task_code_runs_with_allow_task_code_and_validate_names_it(tiny_models, tmp_path, capsys) -> None:
    tasks = _task_folder(tmp_path)
    recipe = _task_recipe(tmp_path, tiny_models, tasks / "task.yaml", "allow_task_code: true\n")
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert (
        f"runs code: objectives[0].task (toy): !function evil.process_docs in task.yaml runs {tasks / 'evil.py'}"
        in out
    )
    assert (tasks / "MARKER").read_text() == "task code ran"  # the opt-in is what let it run


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda path: path.write_bytes(b"task: \xff\xfe\n"), "not UTF-8 text"),
        (lambda path: path.mkdir(), "is a folder, not a task file"),
        (lambda path: path.write_text("task: " + "[" * 100_000), "nested too deeply to be an lm-eval task"),
    ],
    ids=["not-utf8", "a-folder", "nested"],
)
def test_a_task_yaml_that_is_not_text_is_one_line(write, expected, tiny_models, tmp_path) -> None:
    task = tmp_path / "task.yaml"
    write(task)
    recipe = _task_recipe(tmp_path, tiny_models, task)
    before = _snapshot(tmp_path)
    assert "objectives[0].task" in _hm3_fails("validate", recipe, expected=expected)
    assert _snapshot(tmp_path) == before


# -- saved agents ---------------------------------------------------------------------------------------------


def _poisoned_policy_zip(path: Path, marker: Path) -> None:
    """A stable-baselines3 zip whose ``data`` carries a cloudpickled object that creates ``marker``."""
    serialized = base64.b64encode(pickle.dumps(_Poison(marker))).decode()
    data = {"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": serialized}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data", json.dumps(data))
        archive.writestr("_stable_baselines3_version", "2.0.0")
    path.write_bytes(buffer.getvalue())


def test_a_poisoned_policy_zip_is_not_unpickled_without_allow_pickle(tmp_path) -> None:
    from hm3.errors import UserError
    from hm3.routing.agent import PathAgent

    folder = tmp_path / "policy" / "conditioned"
    folder.mkdir(parents=True)
    marker = tmp_path / "MARKER"
    _poisoned_policy_zip(folder / "policy.zip", marker)
    (folder / "agent.json").write_text(
        '{"max_length": 3, "num_objectives": 2, "neighbours": 2, "stop_threshold": 1}'
    )
    np.save(folder / "summaries.npy", np.zeros((3, 2, 4), np.float32))
    before = _snapshot(tmp_path)
    assert PathAgent.saved_in(folder)
    with pytest.raises(UserError) as refused:
        PathAgent.load(folder)
    assert "pickle" in str(refused.value) and "allow_pickle: true" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1
    assert not marker.exists() and _snapshot(tmp_path) == before
    with pytest.raises(Exception):  # noqa: B017 - with the opt-in SB3 unpickles it: the poison is real
        PathAgent.load(folder, allow_pickle=True)
    assert marker.exists()


def test_a_pickled_summaries_array_is_refused(tmp_path) -> None:
    from hm3.errors import UserError
    from hm3.routing.agent import PathAgent

    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "policy.safetensors").write_bytes(_safetensors_bytes(b"{}"))
    (folder / "agent.json").write_text('{"format": "hm3-agent/1"}')
    poisoned = np.empty(1, dtype=object)
    poisoned[0] = _Poison(tmp_path / "MARKER")
    np.save(folder / "summaries.npy", poisoned, allow_pickle=True)
    before = _snapshot(tmp_path)
    with pytest.raises(UserError, match="not a plain array file"):
        PathAgent.load(folder)
    assert not (tmp_path / "MARKER").exists() and _snapshot(tmp_path) == before


# -- run folders: front.json and candidates.jsonl -------------------------------------------------------------

FRONT = {
    "objectives": ["x", "y"],
    "higher_is_better": [True, True],
    "members": [
        {
            "id": "abc123",
            "preference": [0.5, 0.5],
            "merge": None,
            "path": None,
            "alignment": "none",
            "scores": {"search": {"x": 0.5, "y": 0.4}, "heldout": {"x": 0.4, "y": 0.3}},
        }
    ],
    "references": [],
}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "not valid JSON"),
        (b'{"objectives": ["x", "y"], "members": [', "not valid JSON"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not valid JSON"),
        (b"[1, 2, 3]", "a JSON list, not an object"),
        (json.dumps({**FRONT, "objectives": "x"}).encode(), "'objectives' is not a list"),
        (
            json.dumps(
                {**FRONT, "members": [{**FRONT["members"][0], "scores": {"search": {"x": 1}}}]}
            ).encode(),
            "members[0].scores",
        ),
        (
            json.dumps({**FRONT, "members": [{"scores": FRONT["members"][0]["scores"]}]}).encode(),
            "not an hm3 front",
        ),
    ],
    ids=[
        "empty",
        "cut-short",
        "binary",
        "a-list",
        "objectives-not-a-list",
        "member-scores-incomplete",
        "member-fields-missing",
    ],
)
def test_a_damaged_front_json_is_one_line(content: bytes, expected: str, tmp_path) -> None:
    (tmp_path / "front.json").write_bytes(content)
    _hm3_fails("pareto", tmp_path, expected=expected)
    assert (tmp_path / "front.json").read_bytes() == content


def test_a_damaged_line_in_the_middle_of_candidates_jsonl_is_named(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "front.json").write_text(json.dumps(FRONT))
    good = json.dumps({"key": "k1", "scores": {"x": 0.5, "y": 0.4}})
    (run / "candidates.jsonl").write_bytes(
        f"{good}\n".encode() + b'{"key": "k2", "sco\xff\n' + f"{good}\n".encode()
    )
    before = _snapshot(run)
    plot = tmp_path / "front.png"
    expected = "candidates.jsonl, line 2: not a JSON record"
    _hm3_fails("pareto", run, "--split", "search", "--plot", plot, expected=expected)
    assert _snapshot(run) == before and not plot.exists()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[1, 2]", "a JSON list, not a record object"),
        ('{"scores": {"x": 1}}', "no 'key' string"),
        ('{"key": "k", "level": "merge", "scores": {"x": "high"}}', "'scores' is not a mapping"),
        ('{"key": "k", "level": "best", "scores": {"x": 1}}', "'level' is not one of"),
        ('{"key": "k", "level": "path", "path": [[0]], "scores": {"x": 1}}', "'path' is not null or a list"),
    ],
)
def test_a_wrongly_shaped_candidate_record_stops_the_resume_with_its_number(line, expected, tmp_path) -> None:
    from hm3.errors import UserError
    from hm3.search.log import CandidateLog
    from hm3.store import RunStore

    good = json.dumps({"key": "k1", "level": "path", "path": [[0, 1]], "scores": {"x": 0.5}})
    (tmp_path / "candidates.jsonl").write_text(f"{good}\n{line}\n{good}\n")
    before = _snapshot(tmp_path)
    with pytest.raises(UserError, match="record 2") as refused:
        CandidateLog(RunStore(tmp_path))
    assert expected in str(refused.value) and _snapshot(tmp_path) == before


# -- merge settings and preferences ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"weights": [float("nan"), 0.5]},
        {"weights": [1e308, 0.5]},
        {"weights": [[0.5, float("inf")], 0.5]},
        {"weights": [0.5, 0.5], "scale": float("nan")},
        {"weights": [0.5, 0.5], "scale": 1e308},
        {"weights": [0.5, 0.5], "density": float("nan")},
    ],
    ids=["nan-weight", "huge-weight", "inf-gradient", "nan-scale", "huge-scale", "nan-density"],
)
def test_a_merge_spec_read_back_from_a_run_must_be_finite_and_in_range(settings) -> None:
    from hm3.errors import UserError
    from hm3.merge.spec import MergeSpec

    with pytest.raises(UserError, match="front member abc: merge") as refused:
        MergeSpec.from_record({"method": "ties", **settings}, "front member abc")
    assert len(str(refused.value).splitlines()) == 1


def test_preference_deduplication_is_linear_and_keeps_the_order() -> None:
    from hm3.moo.preferences import parse_preference, preference_vectors

    started = time.perf_counter()
    vectors = preference_vectors(3, 10_000, seed=0)
    assert time.perf_counter() - started < 2.0  # was ~27 min (pairwise allclose)
    assert vectors.shape == (3 + 1 + 10_000, 3) and np.allclose(vectors.sum(axis=1), 1)
    assert preference_vectors(2, 0, 0, include_centre=False).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert len(preference_vectors(1, 5, 0)) == 1  # one objective: every vector is (1,)
    for text in ("nan,1", "inf,1"):
        with pytest.raises(ValueError, match="finite"):
            parse_preference(text, 2)
    assert parse_preference("1e308,1e308", 2).tolist() == [0.5, 0.5]  # finite values whose sum is not
    with pytest.raises(ValueError) as refused:
        parse_preference(",".join(["1"] * 20_000), 2)  # not echoed back in full (40 KB)
    assert "20000 values for 2 objectives" in str(refused.value) and len(str(refused.value)) < 120


def test_an_os_error_is_one_line_not_a_traceback(monkeypatch, tmp_path) -> None:
    import hm3.pareto_report

    def refuse(*args, **kwargs):
        raise NotADirectoryError(20, "Not a directory", str(tmp_path / "file" / "run"))

    monkeypatch.setattr(hm3.pareto_report, "pareto_report", refuse)
    _hm3_fails("pareto", tmp_path, expected=f"Not a directory: {tmp_path / 'file' / 'run'}")
