"""Bad input to `hm3 merge --mergekit`: exit code 2, one line, no traceback, no output folder left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.fixtures_models import hm3_in_process, run_hm3

pytestmark = pytest.mark.slow


def ties_config(folder: Path, base: Path, models: list[Path], **extra) -> Path:
    config = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"weight": 0.5, "density": 0.5}} for m in models],
        **extra,
    }
    path = folder / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def copy_model(source: Path, target: Path, edit=None) -> Path:
    target.mkdir(parents=True)
    (target / "config.json").write_text((source / "config.json").read_text())
    tensors = load_file(source / "model.safetensors")
    if edit is not None:
        edit(tensors)
    save_file(tensors, target / "model.safetensors")
    return target


def assert_refused(result: subprocess.CompletedProcess[str], out: Path, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())
    assert not any(p.name.startswith(f".{out.name}.partial") for p in out.parent.iterdir())


def test_nan_tensor_is_refused_naming_model_and_tensor(tiny_llama, tmp_path) -> None:
    name = "model.layers.1.mlp.up_proj.weight"

    def poison(tensors):
        tensors[name][0, 0] = float("nan")

    bad = copy_model(tiny_llama.finetunes[0], tmp_path / "poisoned", poison)
    config = ties_config(tmp_path, tiny_llama.base, [bad, tiny_llama.finetunes[1]])
    out = tmp_path / "out"
    assert_refused(hm3_in_process("merge", "--mergekit", config, "--out", out), out, "NaN", name, "poisoned")


def test_custom_code_models_are_refused(tiny_llama, tmp_path) -> None:
    """A model whose config names custom code (auto_map) is not merged into an output that would name it too."""
    custom = copy_model(tiny_llama.finetunes[0], tmp_path / "custom")
    config_json = json.loads((custom / "config.json").read_text())
    config_json["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (custom / "config.json").write_text(json.dumps(config_json))
    config = ties_config(tmp_path, tiny_llama.base, [custom, tiny_llama.finetunes[1]])
    out = tmp_path / "out"
    assert_refused(hm3_in_process("merge", "--mergekit", config, "--out", out), out, "auto_map", "custom")


def test_mismatched_shapes_are_refused(tiny_llama, tmp_path) -> None:
    name = "model.layers.0.mlp.down_proj.weight"

    def widen(tensors):
        tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 1)

    bad = copy_model(tiny_llama.finetunes[0], tmp_path / "wide", widen)
    config = ties_config(tmp_path, tiny_llama.base, [bad])
    out = tmp_path / "out"
    assert_refused(hm3_in_process("merge", "--mergekit", config, "--out", out), out, name, "shape")


def test_missing_shard_is_refused(tiny_llama, tmp_path) -> None:
    bad = copy_model(tiny_llama.finetunes[0], tmp_path / "sharded")
    tensors = load_file(bad / "model.safetensors")
    (bad / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    save_file({n: tensors[n] for n in names[:half]}, bad / "model-00001-of-00002.safetensors")
    weight_map = {n: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, n in enumerate(names)}
    (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    config = ties_config(tmp_path, tiny_llama.base, [bad])
    out = tmp_path / "out"
    assert_refused(hm3_in_process("merge", "--mergekit", config, "--out", out), out, "missing shard")


def test_non_empty_output_needs_force(tiny_llama, tmp_path) -> None:
    config = ties_config(tmp_path, tiny_llama.base, list(tiny_llama.finetunes))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = hm3_in_process("merge", "--mergekit", config, "--out", out)
    assert result.returncode == 2 and "--force" in result.stderr and "Traceback" not in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    result = hm3_in_process("merge", "--mergekit", config, "--out", out, "--force", "--quiet")
    assert result.returncode == 2 and "replaces only folders hm3 wrote" in result.stderr  # not hm3's
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert run_hm3("merge", "--mergekit", config, "--out", out, "--quiet").returncode == 0
    result = run_hm3("merge", "--mergekit", config, "--out", out, "--force", "--quiet")  # hm3's: replaced
    assert result.returncode == 0, result.stderr
    assert "replacing the model folder" in result.stderr and (out / "model.safetensors").is_file()


def test_unwritable_output_is_refused(tiny_llama, tmp_path) -> None:
    config = ties_config(tmp_path, tiny_llama.base, list(tiny_llama.finetunes))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    result = hm3_in_process("merge", "--mergekit", config, "--out", out)
    assert result.returncode == 2 and "cannot write" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_too_little_disk_is_refused_up_front(tiny_llama, tmp_path) -> None:
    config = ties_config(tmp_path, tiny_llama.base, list(tiny_llama.finetunes))
    out = tmp_path / "out"
    # the real CLI, with the disk reported nearly full
    script = (
        "import shutil, sys; from collections import namedtuple;"
        "shutil.disk_usage = lambda p: namedtuple('u', 'total used free')(10**9, 10**9 - 1000, 1000);"
        "from cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "merge", "--mergekit", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_refused(result, out, "not enough free disk")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"tokenizer": {"source": "union"}}, "tokenizer: not supported"),
        ({"merge_method": "slerp"}, "merge_method 'slerp' is not supported"),
        ({"parameters": {"t": 0.5}}, "parameters.t: not a parameter hm3 knows"),
    ],
)
def test_unsupported_features_are_refused_in_one_line(tiny_llama, tmp_path, extra, fragment) -> None:
    config = ties_config(tmp_path, tiny_llama.base, list(tiny_llama.finetunes), **extra)
    out = tmp_path / "out"
    assert_refused(hm3_in_process("merge", "--mergekit", config, "--out", out), out, fragment)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"merge_method: ties\nbase_model: \xff\xfe\n", "not UTF-8 text (byte 31)"),
        (b"models: " + b"[" * 100_000, "nested too deeply to be a mergekit config"),
    ],
    ids=["not-utf8", "nested"],
)
def test_a_config_that_is_not_text_or_nests_too_deeply_is_one_line(tmp_path, content, fragment) -> None:
    """Tracebacks before: a UnicodeDecodeError, and the YAML parser's RecursionError."""
    config = tmp_path / "config.yml"
    config.write_bytes(content)
    out = tmp_path / "out"
    assert_refused(hm3_in_process("merge", "--mergekit", config, "--out", out), out, fragment)
