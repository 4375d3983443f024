"""The run directory: everything a search produced, written so that a crash at any moment loses nothing.

Layout::

    RUN/
      recipe.yaml        the resolved recipe (absolute paths), written once when the run starts
      models.json        size and modification time of every local model's weight files at the start
      candidates.jsonl   one JSON line per scored candidate, appended, flushed and fsynced at once
      front.json         the Pareto front members with search and held-out scores (written at the end)
      summary.json       hypervolume (with its normalisation), counts, wall time, baseline scores
      policy/            the agent's policy and value networks
      mergekit/<id>.yml  a mergekit configuration for each front member that has one
      log.txt            what the run printed, with times

``candidates.jsonl`` is the run's memory: a resumed run reads it back and never scores a candidate twice. A
line torn by a kill mid-write is dropped (and cut off the file) on the next open. ``front.json`` and
``summary.json`` are replaced atomically (temp file + rename), so they are either the old or the new version.
The logged scores belong to the models as they were: a run whose model files changed since it started (a
rebuilt zoo, a re-downloaded checkpoint) is not resumed (``models.json``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hm3.errors import UserError
from hm3.recipe import Recipe

RECIPE_FILE = "recipe.yaml"
CANDIDATES_FILE = "candidates.jsonl"
FRONT_FILE = "front.json"
SUMMARY_FILE = "summary.json"
LOG_FILE = "log.txt"
MODELS_FILE = "models.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class RunStore:
    """Read and write one run directory. Create with :meth:`create` or :meth:`resume`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    # -- opening ------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str | Path, recipe: Recipe, force: bool = False) -> RunStore:
        """Start a new run in ``directory``, which must not exist (or be replaced with ``force``).

        Raises:
            UserError: the directory exists and ``force`` is not set.
        """
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()):
            if not force:
                raise UserError(
                    f"run directory {directory} exists; continue it with --resume {directory}, "
                    "or replace it with --force"
                )
            import shutil

            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        store = cls(directory)
        store._write_atomic(RECIPE_FILE, recipe_to_yaml(recipe))
        store._write_atomic(MODELS_FILE, json.dumps(model_files(recipe), indent=1) + "\n")
        (directory / CANDIDATES_FILE).touch()
        return store

    @classmethod
    def resume(cls, directory: str | Path, recipe: Recipe | None = None) -> tuple[RunStore, Recipe]:
        """Open an existing run to continue it; with ``recipe``, refuse if it differs from the run's own.

        Raises:
            UserError: no run there, or the recipe differs (the differing fields are named).
        """
        directory = Path(directory)
        stored_file = directory / RECIPE_FILE
        if not stored_file.is_file():
            raise UserError(f"{directory} is not a run directory (no {RECIPE_FILE})")
        import yaml

        from hm3.recipe import recipe_from_dict

        stored = recipe_from_dict(yaml.safe_load(stored_file.read_text()), source=str(stored_file))
        if recipe is not None:
            differences = recipe_differences(stored, recipe)
            if differences:
                shown = "; ".join(differences[:3]) + (
                    f" (+{len(differences) - 3} more)" if len(differences) > 3 else ""
                )
                raise UserError(f"cannot resume {directory} with a different recipe: {shown}")
        store = cls(directory)
        store._check_models_unchanged(stored)
        store._repair_torn_tail()
        return store, stored

    def _check_models_unchanged(self, recipe: Recipe) -> None:
        """Refuse to resume when a local model's weight files changed since the run started."""
        file = self.directory / MODELS_FILE
        if not file.is_file():
            return  # a run from before models.json: nothing to compare
        then, now = json.loads(file.read_text()), model_files(recipe)
        changed = [name for name in then if then[name] != now.get(name)]
        if changed:
            raise UserError(
                f"cannot resume {self.directory}: the weights in {', '.join(changed[:3])} changed since the run "
                "started (its logged scores are for the old ones); start a new run, or replace this one "
                "with hm3 merge --recipe ... --force"
            )

    # -- candidates ---------------------------------------------------------------------------------------

    @property
    def candidates_path(self) -> Path:
        return self.directory / CANDIDATES_FILE

    def append_candidate(self, record: dict[str, Any]) -> None:
        """Append one scored candidate and make it durable before returning."""
        line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
        with open(self.candidates_path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def candidates(self) -> Iterator[dict[str, Any]]:
        """Every complete record, in the order written."""
        if not self.candidates_path.exists():
            return
        with open(self.candidates_path, encoding="utf-8") as handle:
            for line in handle:
                if line.endswith("\n"):
                    yield json.loads(line)

    def _repair_torn_tail(self) -> None:
        """Cut a last line that a kill left half-written, so appends start on a clean line."""
        path = self.candidates_path
        if not path.exists() or path.stat().st_size == 0:
            return
        data = path.read_bytes()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as handle:
            handle.truncate(keep)

    # -- other files --------------------------------------------------------------------------------------

    def write_json(self, name: str, payload: Any) -> Path:
        """Write ``name`` (e.g. ``front.json``) atomically."""
        return self._write_atomic(name, json.dumps(payload, indent=2, sort_keys=False) + "\n")

    def read_json(self, name: str) -> Any:
        """Read a JSON file of the run; UserError if it is missing (the run has not finished)."""
        path = self.directory / name
        if not path.is_file():
            raise UserError(
                f"{self.directory}: no {name} yet (has the run finished? resume it with --resume)"
            )
        return json.loads(path.read_text())

    def log(self, message: str) -> None:
        """Append a timestamped line to the run's log."""
        with open(self.directory / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def subdirectory(self, name: str) -> Path:
        """A folder inside the run (``policy``, ``mergekit``), created on demand."""
        path = self.directory / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _write_atomic(self, name: str, text: str) -> Path:
        target = self.directory / name
        temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        return target


def model_files(recipe: Recipe) -> dict[str, dict[str, list[int]]]:
    """Model folder -> {weight file: [size, mtime in ns]} for every local model of the recipe (hub ids skipped)."""
    found: dict[str, dict[str, list[int]]] = {}
    for ref in [recipe.base_model, *recipe.models]:
        folder = Path(ref.path)
        if ref.is_hub or not folder.is_dir():
            continue
        stats = {f.name: f.stat() for f in sorted(folder.iterdir()) if f.suffix in WEIGHT_SUFFIXES}
        found[str(folder)] = {name: [stat.st_size, stat.st_mtime_ns] for name, stat in stats.items()}
    return found


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (absolute paths, every default spelled out)."""
    import yaml

    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def recipe_differences(old: Recipe, new: Recipe) -> list[str]:
    """Dotted paths of the fields where two recipes differ, with both values."""
    differences: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{path}[{i}]")
        elif a != b:
            differences.append(f"{path}: {a!r} -> {b!r}")

    walk(old.model_dump(mode="json"), new.model_dump(mode="json"), "")
    return differences
