"""The import graph of ``hm3``: no cycles between its modules, and every module imports on its own."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hm3"


def hm3_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package by its ``__init__.py``)."""
    modules = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = list(file.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = file
    return modules


def imported_modules(name: str, file: Path, known: dict[str, Path]) -> dict[str, int]:
    """The ``hm3`` modules ``name`` imports, each with the line of its first import: every ``import`` and
    ``from ... import`` anywhere in the file (module level, in functions, under ``TYPE_CHECKING``), relative ones
    resolved; ``from pkg import name`` counts as importing ``pkg.name`` where that is a module, else ``pkg``."""
    package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
        for target in targets:
            parts = target.split(".")
            while parts and ".".join(parts) not in known:  # `import hm3.a.b.Name`-like: the longest module
                parts.pop()
            module = ".".join(parts)
            if module and module != name:
                found.setdefault(module, node.lineno)
    return found


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_import_graph_finds_relative_and_submodule_imports(tmp_path: Path) -> None:
    known = {name: tmp_path / "x.py" for name in ("hm3", "hm3.a", "hm3.a.b", "hm3.a.c", "hm3.d")}
    file = tmp_path / "a" / "c.py"
    file.parent.mkdir()
    file.write_text(
        "from . import b\nfrom .. import d\nfrom hm3.a import helper\n"
        "def f():\n    import hm3.d.thing\n    from hm3.a.b import x\n"
    )
    assert imported_modules("hm3.a.c", file, known) == {"hm3.a.b": 1, "hm3.d": 2, "hm3.a": 3}
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_between_hm3_modules() -> None:
    known = hm3_modules()
    graph = {name: imported_modules(name, file, known) for name, file in known.items()}
    assert len(graph) > 50 and graph["hm3.search.run"]  # the walk found the package and its imports
    problems = []
    for cycle in import_cycles(graph):
        edges = [
            f"{source} (line {line}) -> {target}"
            for source in cycle
            for target, line in graph[source].items()
            if target in cycle
        ]
        problems.append("; ".join(edges))
    assert not problems, "import cycles:\n" + "\n".join(problems)


# Imports each module in a child forked from a parent that has imported the slow third-party libraries (torch,
# transformers' model code, lm-eval, ...: ~7 s or more each time on a busy CPU; hm3's library modules import
# them at the top) but no hm3 module: each child starts with no hm3 module loaded.
IMPORT_EACH = r"""
import importlib, json, os, sys, time, traceback
import numpy, torch
import transformers.modeling_utils, transformers.processing_utils
import lm_eval.evaluator, lm_eval.tasks, lm_eval.models.huggingface
import datasets, sklearn.datasets, stable_baselines3, matplotlib.pyplot, numba, peft, accelerate

modules, parallel = json.loads(sys.argv[1]), int(sys.argv[2])
running, failures, slowest = {}, {}, (0.0, "")
read_end = {}
while modules or running:
    while modules and len(running) < parallel:
        name = modules.pop()
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(reader)
            code = 0
            try:
                importlib.import_module(name)
            except BaseException:
                os.write(writer, traceback.format_exc()[-2000:].encode())
                code = 1
            os._exit(code)
        os.close(writer)
        running[pid] = (name, reader, time.perf_counter())
    pid, status = os.wait()
    name, reader, started = running.pop(pid)
    slowest = max(slowest, (time.perf_counter() - started, name))
    with os.fdopen(reader, "rb") as pipe:
        error = pipe.read().decode(errors="replace")
    if status != 0:
        failures[name] = error or f"exit status {status}"
print(json.dumps({"failures": failures, "slowest": slowest}))
"""


def test_every_hm3_module_imports_on_its_own() -> None:
    modules = sorted(hm3_modules())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    parallel = str(min(4, os.cpu_count() or 1))
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH, json.dumps(modules), parallel],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["failures"], "\n\n".join(f"{n}:\n{e}" for n, e in result["failures"].items())


# `hm3 --help` (the console script runs cli.main:main) in a fresh interpreter: which heavy libraries it loaded.
HELP_IMPORTS = r"""
import json, sys
import cli.main
try:
    cli.main.main(["--help"])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in ("torch", "lm_eval", "transformers") if m in sys.modules)))
"""


def test_cli_main_and_help_import_no_heavy_library() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "usage: hm3" in done.stdout
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
