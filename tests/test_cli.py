"""The `hm3` command itself: every subcommand listed, help is instant, the schema is JSON."""

from __future__ import annotations

import json
import time

import pytest

from cli.main import SUBCOMMANDS
from tests.fixtures_models import hm3_in_process, run_hm3


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


def test_a_missing_recipe_or_run_is_one_line_before_anything_heavy_is_imported(tmp_path) -> None:
    """A typo in a path is answered at once: each command checks the recipe file or run folder it was given
    (``preflight``) before importing torch, transformers or lm-eval (seconds, for a one-line error)."""
    missing, not_a_run = tmp_path / "missing.yaml", tmp_path
    commands = [
        ["validate", missing],
        ["merge", "--recipe", missing],
        ["merge", "--resume", not_a_run],
        ["baseline", "--recipe", missing, "--method", "grid"],
        ["eval", "--recipe", missing, "--model", tmp_path],
        ["himole", "train", "--recipe", missing],
        ["select", not_a_run, "--preference", "1,1"],
        ["export", not_a_run, "--member", "x", "--out", tmp_path / "out"],
    ]
    code = (
        "import contextlib, io, json, sys; from cli.main import main\n"
        "results = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        status = main(argv)\n"
        "    heavy = [m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules]\n"
        "    results.append([status, err.getvalue(), heavy])\n"
        "print(json.dumps(results))"
    )
    import subprocess
    import sys

    argv = json.dumps([[str(a) for a in command] for command in commands])
    done = subprocess.run([sys.executable, "-c", code, argv], capture_output=True, text=True, check=True)
    for command, (status, err, heavy) in zip(commands, json.loads(done.stdout), strict=True):
        assert status == 2 and len(err.strip().splitlines()) == 1, (command, err)
        assert ("file not found" in err) or ("is not a run directory" in err), (command, err)
        assert heavy == [], (command, heavy)


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
    assert json.loads(run_hm3("schema", "--indent", "0").stdout) == schema
    refused = run_hm3("schema", "--indent", "100000000")  # gigabytes of spaces before
    assert (
        refused.returncode == 2
        and refused.stderr == "hm3 schema: --indent must be 0 to 16 spaces, not 100000000\n"
    )


def test_readme_shows_every_subcommand_and_the_two_commands() -> None:
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    for name in SUBCOMMANDS:
        assert f"hm3 {name}" in readme, f"README does not show `hm3 {name}`"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["select", "RUN", "--preference", "-1,1,1"], "--preference=VALUE"),
        (["baseline", "--recipe", "r.yaml", "--method", "foo"], "invalid choice: 'foo'"),
        (["baseline", "--recipe", "r.yaml", "--method", "grid", "--budget", "nan"], "invalid int value"),
        (["export", "RUN"], "the following arguments are required: --member, --out"),
        (["merge", "--recipe", "r.yaml", "--resume", "RUN"], "not allowed with argument --recipe"),
        (["nosuch"], "invalid choice: 'nosuch'"),
    ],
)
def test_argument_errors_are_one_line_with_exit_code_2(arguments: list[str], message: str) -> None:
    """argparse printed its usage text before the error: several lines."""
    done = hm3_in_process(*arguments)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("hm3")
