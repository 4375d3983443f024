"""The run directory: append-only candidates that survive a torn write, atomic files, resume checks."""

from __future__ import annotations

import pytest

from hm3.errors import UserError
from hm3.recipe import recipe_from_dict
from hm3.store import RunStore


def _recipe(iterations: int = 10):
    return recipe_from_dict(
        {
            "base_model": "/models/base",
            "models": ["/models/a", "/models/b"],
            "objectives": [{"name": "x", "task": "sst2"}, {"name": "y", "task": "rte"}],
            "agent": {"iterations": iterations},
        }
    )


def test_create_append_and_read_back(tmp_path) -> None:
    store = RunStore.create(tmp_path / "run", _recipe())
    for i in range(3):
        store.append_candidate({"id": f"c{i}", "scores": {"x": i / 10}})
    assert [r["id"] for r in store.candidates()] == ["c0", "c1", "c2"]
    assert (tmp_path / "run" / "recipe.yaml").read_text().startswith("base_model:")


def test_existing_directory_needs_resume_or_force(tmp_path) -> None:
    RunStore.create(tmp_path / "run", _recipe()).append_candidate({"id": "c0"})
    with pytest.raises(UserError, match="--resume"):
        RunStore.create(tmp_path / "run", _recipe())
    store = RunStore.create(tmp_path / "run", _recipe(), force=True)
    assert list(store.candidates()) == []


def test_torn_last_line_is_dropped_on_resume(tmp_path) -> None:
    store = RunStore.create(tmp_path / "run", _recipe())
    store.append_candidate({"id": "c0"})
    with open(store.candidates_path, "a") as handle:
        handle.write('{"id": "c1", "sco')  # a kill mid-write
    assert [r["id"] for r in store.candidates()] == ["c0"]
    resumed, _ = RunStore.resume(tmp_path / "run", _recipe())
    resumed.append_candidate({"id": "c2"})
    assert [r["id"] for r in resumed.candidates()] == ["c0", "c2"]


def test_resume_refuses_a_different_recipe_and_names_the_field(tmp_path) -> None:
    RunStore.create(tmp_path / "run", _recipe(iterations=10))
    with pytest.raises(UserError, match=r"agent\.iterations: 10 -> 20"):
        RunStore.resume(tmp_path / "run", _recipe(iterations=20))
    _, stored = RunStore.resume(tmp_path / "run")
    assert stored.agent.iterations == 10
    with pytest.raises(UserError, match="run directory not found"):
        RunStore.resume(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UserError, match="is not a run directory"):
        RunStore.resume(tmp_path / "elsewhere")
    (tmp_path / "a file").write_text("")
    with pytest.raises(UserError, match="is a file, not a run directory"):
        RunStore.resume(tmp_path / "a file")


def test_json_files_are_replaced_atomically(tmp_path) -> None:
    store = RunStore.create(tmp_path / "run", _recipe())
    store.write_json("front.json", {"members": [1]})
    store.write_json("front.json", {"members": [1, 2]})
    assert store.read_json("front.json") == {"members": [1, 2]}
    assert not list((tmp_path / "run").glob(".*tmp*"))
    with pytest.raises(UserError, match="no summary.json"):
        store.read_json("summary.json")


def test_resume_refuses_when_a_model_was_rebuilt_since_the_run_started(tmp_path) -> None:
    """Logged scores belong to the weights they were measured on: a rebuilt model ends resuming."""
    import os

    folders = {name: tmp_path / "models" / name for name in ("base", "a", "b")}
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights v1")
        (folder / "config.json").write_text("{}")
    recipe = recipe_from_dict(
        {
            "base_model": str(folders["base"]),
            "models": [str(folders["a"]), str(folders["b"])],
            "objectives": [{"name": "x", "task": "sst2"}, {"name": "y", "task": "rte"}],
        }
    )
    RunStore.create(tmp_path / "run", recipe)
    (folders["a"] / "config.json").write_text('{"edited": true}')  # what the model computes: refused too
    with pytest.raises(UserError, match=r"config\.json in .*models/a changed since the run started"):
        RunStore.resume(tmp_path / "run", recipe)
    (folders["a"] / "README.md").write_text("notes")  # not read by a model: no refusal
    (folders["a"] / "config.json").write_text("{}")  # compared by content: restored is unchanged
    RunStore.resume(tmp_path / "run", recipe)
    weights = folders["a"] / "model.safetensors"
    weights.write_bytes(b"weights v2")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(UserError, match=r"weights in .*models/a changed since the run started"):
        RunStore.resume(tmp_path / "run", recipe)
