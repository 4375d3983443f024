"""The committed reports that let a long benchmark continue on another machine (``benchmarks/_records.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _records import RunRecords, source_digest  # noqa: E402


def _package(root: Path, code: str) -> Path:
    package = root / "pkg"
    package.mkdir(parents=True, exist_ok=True)
    (package / "train.py").write_text(code)
    return package


def test_the_code_digest_ignores_docstrings_comments_and_layout_but_not_code(tmp_path):
    plain = source_digest(_package(tmp_path / "a", "def step(x):\n    return x * 2\n"))
    documented = source_digest(
        _package(
            tmp_path / "b",
            '"""Module."""\n\n\ndef step(x):  # doubles\n    """Twice x."""\n    return (x *\n 2)\n',
        )
    )
    changed = source_digest(_package(tmp_path / "c", "def step(x):\n    return x * 3\n"))
    assert plain == documented
    assert plain != changed


def _records(tmp_path: Path, fingerprint: str, built: str, code: str = "LR = 1\n") -> RunRecords:
    zoo = tmp_path / f"zoo-{built}"
    zoo.mkdir(exist_ok=True)
    (zoo / "zoo.json").write_text(json.dumps({"fingerprint": fingerprint, "built": built, "path": str(zoo)}))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed: 0\n")
    package = _package(tmp_path / f"src-{code.strip()}", code)
    return RunRecords(
        "bench", "deep", zoo, recipe, [package], extra={"lora": 8}, results=tmp_path / "results"
    )


def test_a_report_is_reused_for_the_same_experiment_on_another_build_of_the_same_weights(tmp_path):
    calls = []

    def work():
        calls.append(1)
        return {"score": 0.5}

    first = _records(tmp_path, "f" * 64, "monday").report("lora-s0", {"lr": 1e-3}, work)
    again = _records(tmp_path, "f" * 64, "tuesday").report("lora-s0", {"lr": 1e-3}, work)
    assert calls == [1]
    assert again == first
    assert first["score"] == 0.5 and first["machine"] and first["seconds"] >= 0


def test_other_weights_code_or_configuration_train_again(tmp_path):
    calls = []

    def work():
        calls.append(1)
        return {"score": float(len(calls))}

    base = _records(tmp_path, "f" * 64, "monday")
    base.report("lora-s0", {"lr": 1e-3}, work)
    assert _records(tmp_path, "e" * 64, "monday").key != base.key
    assert _records(tmp_path, "f" * 64, "monday", code="LR = 2\n").key != base.key
    assert base.report("lora-s0", {"lr": 3e-3}, work)["score"] == 2.0  # same key, another configuration
    assert base.report("lora-s0", {"lr": 3e-3}, work)["score"] == 2.0  # kept now
    assert len(calls) == 2


def test_an_interrupted_run_leaves_no_report(tmp_path):
    records = _records(tmp_path, "f" * 64, "monday")

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        records.report("lora-s0", {"lr": 1e-3}, interrupted)
    assert not records.folder.exists() or not list(records.folder.iterdir())


def test_the_overhead_report_replaces_its_own_section_and_keeps_the_scoring_speed_one():
    """``eval_overhead.py`` once rewrote the whole results file, dropping ``scoring_speed.py``'s section."""
    from _bench import SCORING_SPEED
    from eval_overhead import END, START, replace_section

    speed = f"{SCORING_SPEED[0]}\nspeed table\n{SCORING_SPEED[1]}\n\nnotes on the speed run\n"
    first = replace_section(f"# old report\nold notes\n\n{speed}", f"{START}\nreport 1\n{END}")
    assert first == f"{START}\nreport 1\n{END}\n\n{speed}"  # a file from before the markers: old report gone
    notes = first.replace(f"{END}\n", f"{END}\nnotes added by hand\n")
    second = replace_section(notes, f"{START}\nreport 2\n{END}")
    assert second == notes.replace("report 1\n", "report 2\n")
    assert replace_section("", f"{START}\nx\n{END}") == f"{START}\nx\n{END}\n"
