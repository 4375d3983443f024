"""Finished benchmark runs kept in git, so that a long benchmark continues on another machine or checkout.

A benchmark's scratch space (``benchmarks/scratch/``, trained weights and logs) lives and dies with one machine;
a benchmark that needs more compute than one session has would start over on every new machine. What a finished
run *reports* (its scores, a few hundred bytes) is kept instead under ``benchmarks/results/<name>_runs/<key>/``
and committed beside the Markdown table it feeds. A kept report is reused only where it is the same experiment:

* ``key`` digests what every run of the benchmark shares: the zoo's weights (its ``fingerprint``, the same on
  every machine that builds the same bits, whatever the path or build date), the recipe file, the source code of
  the packages that train and score (compared as syntax trees without docstrings: a reformatted or re-documented
  file is the same code, any other edit is a new key), and the versions of the libraries that decide the
  numbers;
* each report holds the digest of its run's full configuration (``config``), checked on reuse: a run whose
  configuration changed (a recipe default, a variant's override) is trained again.

Each report also names the machine that made it (``machine``): runs of one key on machines with other CPU
kernels differ in their last bits, as two seeds do, and the table says which machines its runs came from.
"""

from __future__ import annotations

import ast
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from _bench import REPO, cpu_name

LIBRARIES = ("torch", "transformers", "lm_eval", "numpy")
"""The libraries whose versions are part of a key."""


def source_digest(*packages: Path) -> str:
    """Digest of the Python code under ``packages``: each file's syntax tree with its docstrings removed."""
    digest = hashlib.sha256()
    for package in packages:
        for file in sorted(package.rglob("*.py")):
            tree = ast.parse(file.read_text())
            for node in ast.walk(tree):
                body = getattr(node, "body", None)
                if (
                    isinstance(body, list)
                    and body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)
                ):
                    node.body = body[1:] or [ast.Pass()]
            digest.update(file.relative_to(package.parent).as_posix().encode())
            digest.update(ast.dump(tree).encode())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in LIBRARIES}


def machine() -> str:
    """The CPU's model name and the kernels torch picked on it (``AMD EPYC, avx512``)."""
    import torch

    return f"{cpu_name()}, {torch.backends.cpu.get_cpu_capability().lower()}"


def config_digest(config: dict) -> str:
    """Digest of a run's configuration (JSON-able), with this checkout's path taken out."""
    text = json.dumps(config, sort_keys=True, default=str).replace(str(REPO), "<repo>")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunRecords:
    """The committed reports of one benchmark's finished runs under one key.

    Args:
        name: The benchmark (``himole``): reports live in ``benchmarks/results/<name>_runs/<label>-<key>/``.
        label: What the key is of (``deep``), for people reading the folder names.
        zoo: The zoo folder whose ``zoo.json`` fingerprint the runs stand on.
        recipe_file: The recipe file the runs start from.
        packages: The source packages that train and score (their code is part of the key).
        extra: Anything else the runs share (JSON-able), e.g. the benchmark's own variant table.
        results: The results folder (the repository's ``benchmarks/results``).
    """

    def __init__(
        self,
        name: str,
        label: str,
        zoo: Path,
        recipe_file: Path,
        packages: list[Path],
        extra: object = None,
        results: Path = REPO / "benchmarks" / "results",
    ) -> None:
        manifest = json.loads((zoo / "zoo.json").read_text())
        digest = hashlib.sha256()
        for part in (
            manifest["fingerprint"],
            recipe_file.read_bytes().decode(),
            source_digest(*packages),
            json.dumps(library_versions(), sort_keys=True),
            json.dumps(extra, sort_keys=True, default=str),
        ):
            digest.update(part.encode())
            digest.update(b"\0")
        self.key = digest.hexdigest()[:16]
        self.folder = results / f"{name}_runs" / f"{label}-{self.key}"

    def report(self, run: str, config: dict, work: Callable[[], dict]) -> dict:
        """The kept report of ``run`` if it was made with ``config``; otherwise ``work()``'s, kept now.

        ``work`` returns the report (a JSON-able dict); ``seconds``, ``machine`` and ``config`` are added.
        A report is written whole (a temporary file, then renamed), so an interrupted run leaves none.
        """
        target = self.folder / f"{run}.json"
        wanted = config_digest(config)
        if target.is_file():
            kept = json.loads(target.read_text())
            if kept.get("config") == wanted:
                return kept
        started = time.perf_counter()
        report = work()
        report.update(seconds=time.perf_counter() - started, machine=machine(), config=wanted)
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.tmp")
        staging.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        staging.replace(target)
        return report
