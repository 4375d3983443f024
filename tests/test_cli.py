"""The `hm3` command itself: every subcommand listed, help is instant, the schema is JSON."""

from __future__ import annotations

import json
import time

from cli.main import SUBCOMMANDS
from tests.fixtures_models import run_hm3


def test_help_lists_every_subcommand_quickly() -> None:
    run_hm3("--help")  # warm the file cache
    start = time.perf_counter()
    result = run_hm3("--help")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    for name, (_, description) in SUBCOMMANDS.items():
        assert name in result.stdout
        assert description.split()[0] in result.stdout
    assert elapsed < 2.0, f"hm3 --help took {elapsed:.2f}s"


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys; from cli.main import build_parser; build_parser().format_help(); "
        "heavy = [m for m in ('torch', 'transformers', 'lm_eval', 'stable_baselines3', 'ray', 'mergekit') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_every_subcommand_has_help() -> None:
    for name in SUBCOMMANDS:
        result = run_hm3(name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        assert "usage: hm3" in result.stdout


def test_schema_is_json_with_every_section() -> None:
    result = run_hm3("schema")
    schema = json.loads(result.stdout)
    for section in (
        "base_model",
        "models",
        "objectives",
        "split",
        "parameter_level",
        "architecture_level",
        "agent",
        "preferences",
        "output",
        "device",
        "dtype",
        "seed",
        "include",
    ):
        assert section in schema["properties"], section


def test_readme_shows_every_subcommand_and_the_two_commands() -> None:
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    for name in SUBCOMMANDS:
        assert f"hm3 {name}" in readme, f"README does not show `hm3 {name}`"
