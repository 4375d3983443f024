"""The run directory: everything a search produced, written so that a crash at any moment loses nothing.

Layout::

    RUN/
      recipe.yaml        the resolved recipe (absolute paths), written once when the run starts
      fingerprint.json   what decides the run's scores: the recipe, task and data files, model weights
      candidates.jsonl   one JSON line per scored candidate, appended, flushed and fsynced at once
      front.json         the Pareto front members with search and held-out scores (written at the end)
      summary.json       hypervolume (with its normalisation), counts, wall time, baseline scores
      policy/            the agent's policy and value networks
      mergekit/<id>.yml  a mergekit configuration for each front member that has one
      log.txt            what the run printed, with times
      .hm3-output.json   marks the folder as a run hm3 wrote (only such a folder is replaced by --force)
      .hm3.lock          while a process works in the run (:mod:`hm3.run_lock`)

``candidates.jsonl`` is the run's memory: a resumed run reads it back and never scores a candidate twice. A
line torn by a kill mid-write is dropped (and cut off the file) on the next open. ``front.json`` and
``summary.json`` are replaced atomically (temp file + rename), so they are either the old or the new version.

**Guarantees.** A new run starts only where it overlaps no input (:mod:`hm3.output_guard`); ``force`` replaces
only a run folder, and only once the new one is complete (:mod:`hm3.folder_swap`: a kill leaves the old run
or the new one). One process at a time works in a run: :meth:`RunStore.create` and :meth:`RunStore.resume`
take its lock, and a second process is refused. The logged scores belong to the inputs as they were: a run
whose recipe, task or data files or model weights changed since it started is not resumed
(:mod:`hm3.run_fingerprint`), and the change is named; when only the model weights changed the refusal is a
:class:`~hm3.errors.ModelsChangedError` (exit code 3), which ``make demo`` takes as the sign to start afresh.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from hm3.errors import ModelsChangedError, StaleRunError, UserError
from hm3.folder_swap import (
    clear_leftovers,
    clear_stale_temporaries,
    replace_file,
    staging_folder,
    swap_into_place,
)
from hm3.output_guard import (
    InputPath,
    announce_replacement,
    check_no_overlap,
    check_replaceable,
    mark,
    recipe_inputs,
)
from hm3.recipe import Recipe, read_stored_recipe
from hm3.run_fingerprint import (
    FINGERPRINT_FILE,
    added_fields,
    data_differences,
    fingerprint_changes,
    model_files,
    models_changed,
    run_fingerprint,
    scoring_key,
)
from hm3.run_lock import RunLock

RECIPE_FILE = "recipe.yaml"
CANDIDATES_FILE = "candidates.jsonl"
FRONT_FILE = "front.json"
SUMMARY_FILE = "summary.json"
LOG_FILE = "log.txt"
__all__ = ["RunStore", "model_files", "recipe_differences", "recipe_to_yaml"]


BASELINE_FILE = "baseline.json"
"""What ``hm3 baseline`` writes into its runs (its method and budget), which marks them as a baseline's."""


def run_writer(directory: Path) -> str:
    """The command that wrote a run and continues it: ``hm3 baseline`` for one holding :data:`BASELINE_FILE`."""
    return "hm3 baseline" if (Path(directory) / BASELINE_FILE).is_file() else "hm3 merge"


class RunStore:
    """Read and write one run directory. Create with :meth:`create` or :meth:`resume` (both lock the run until
    :meth:`close`, the end of a ``with`` block, or the store's collection)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock: RunLock | None = None
        self._release: weakref.finalize | None = None

    # -- opening ------------------------------------------------------------------------------------------

    @staticmethod
    def check_new(
        directory: str | Path, recipe: Recipe, force: bool = False, inputs: Iterable[InputPath] = ()
    ) -> str | None:
        """Refuse a place a new run cannot go, before any work; returns what ``force`` will replace (or None).

        Raises:
            UserError: ``directory`` is, contains or lies inside an input (the recipe's models, task files,
                data, or ``inputs``); it holds something and ``force`` is not set; with ``force``, it is not a
                run folder hm3 wrote; or another process works in it.
        """
        directory = Path(directory)
        check_no_overlap(directory, [*recipe_inputs(recipe), *inputs])
        command = run_writer(directory)  # the command that wrote the run continues it
        replaced = check_replaceable(
            directory,
            "run",
            force,
            resume_hint=f"continue it with --resume {shlex.quote(str(directory))} ({command}), or replace it "
            "with --force",
        )
        if replaced is not None:
            RunLock(directory).acquire().release()  # refused here if a process works in it
        return replaced

    @classmethod
    def create(
        cls,
        directory: str | Path,
        recipe: Recipe,
        force: bool = False,
        inputs: Iterable[InputPath] = (),
    ) -> RunStore:
        """Start a new run in ``directory`` (see :meth:`check_new`); with ``force``, replace the run there.

        The new run is built beside ``directory`` and swapped in whole; the old run is deleted only then.

        Raises:
            UserError: from :meth:`check_new`.
        """
        directory = Path(directory)
        clear_leftovers(directory)
        replaced = cls.check_new(directory, recipe, force, inputs)
        directory.parent.mkdir(parents=True, exist_ok=True)
        old = RunLock(directory).acquire() if replaced is not None else None
        staging = staging_folder(directory)
        store = cls(staging)
        try:
            mark(staging, "run")
            store._write_atomic(RECIPE_FILE, recipe_to_yaml(recipe))
            store._write_atomic(FINGERPRINT_FILE, json.dumps(run_fingerprint(recipe), indent=1) + "\n")
            (staging / CANDIDATES_FILE).touch()
            store._hold(RunLock(staging).acquire())
            announce_replacement(replaced)
            swap_into_place(staging, directory)
        except BaseException:
            store.close()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            if old is not None:
                old.release()
        store.directory = directory
        assert store._lock is not None
        store._lock.folder = directory
        return store

    @classmethod
    def resume(
        cls, directory: str | Path, recipe: Recipe | None = None, lock: bool = True, use: str = "resume"
    ) -> tuple[RunStore, Recipe]:
        """Open an existing run to continue it; with ``recipe``, refuse if it differs from the run's own.

        Args:
            directory: The run.
            recipe: The recipe the caller means to run (None: the run's own).
            lock: Take the run's lock (False only for readers that write nothing into the run, e.g. export).
            use: What the caller does with the run, as its refusals say it (``cannot select from RUN: …``).

        Raises:
            UserError: no run there, another process works in it, the recipe differs, or what decides its
                scores changed since it started (the change is named).
            ModelsChangedError: only the model weights changed since the run started (exit code 3).
        """
        directory = Path(directory)
        clear_leftovers(directory)
        stored_file = require_run_directory(directory) / RECIPE_FILE

        stored = read_stored_recipe(stored_file)
        if recipe is not None:
            differences = recipe_differences(stored, recipe)
            read_as_before = recipe.with_directions({o.name: True for o in recipe.objectives})  # older hm3's
            if differences and not recipe_differences(stored, read_as_before):
                left_to_task = [
                    f"objectives[{i}].higher_is_better"
                    for i, objective in enumerate(recipe.objectives)
                    if objective.higher_is_better is None
                ]
                raise UserError(
                    f"cannot resume {directory}: its recipe sets {', '.join(left_to_task)} to true, this one "
                    "leaves it to the task (an older hm3 read an unset direction as true, this one takes the "
                    "task's); write higher_is_better: true as the run has it to resume, or start afresh with --force"
                )
            if differences:
                raise UserError(f"cannot resume {directory} with a different recipe: {_some(differences)}")
        store = cls(directory)
        try:
            if lock:
                store._hold(RunLock(directory).acquire())
            store._check_fingerprint(stored, writing=lock, use=use)
            if lock:
                store._repair_torn_tail()
                clear_stale_temporaries(directory)
        except BaseException:
            store.close()
            raise
        return store, stored

    def close(self) -> None:
        """Release the run's lock (if this store holds it)."""
        if self._release is not None:
            self._release()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _hold(self, lock: RunLock) -> None:
        self._lock = lock
        self._release = weakref.finalize(self, lock.release)

    def scoring_key(self, recipe: Recipe) -> str:
        """What decides a score in this run (part of every candidate key): from ``fingerprint.json``, or
        computed from ``recipe`` for a folder without one."""
        file = self.directory / FINGERPRINT_FILE
        if file.is_file():
            return str(json.loads(file.read_text())["scoring"])
        return run_fingerprint(recipe)["scoring"]

    def _check_fingerprint(self, recipe: Recipe, writing: bool = True, use: str = "resume") -> None:
        """Refuse to resume when anything that decides the run's scores changed since it started.

        A run an older hm3 started lacks the recipe fields added since (their defaults fill them in today):
        readers (``writing`` False: export, select) go on — a candidate is rebuilt from its own data —, but
        the search cannot be continued the same way, so a writer gets :class:`StaleRunError` (exit 3)."""
        file = self.directory / FINGERPRINT_FILE
        if not file.is_file():
            raise UserError(
                f"cannot {use} {self.directory}: it has no {FINGERPRINT_FILE} (an older hm3 started it), so "
                "its logged scores cannot be checked against its inputs; start it afresh with --force"
            )
        try:
            then = json.loads(file.read_text())
        except ValueError:
            then = None
        sections = ("recipe", "files", "models")
        if not isinstance(then, dict) or not all(isinstance(then.get(k), dict) for k in sections):
            raise UserError(
                f"cannot {use} {self.directory}: its {FINGERPRINT_FILE} is damaged, so its logged scores "
                "cannot be checked against its inputs; start it afresh with --force"
            )
        now = run_fingerprint(recipe)
        if then.get("format") != now["format"]:
            raise StaleRunError(
                f"cannot {use} {self.directory}: {FINGERPRINT_FILE} has format {then.get('format')!r}, this "
                f"hm3 writes {now['format']} (its candidate log cannot be read the same way); start it afresh with "
                "--force"
            )
        changes = fingerprint_changes(then, now)
        added = added_fields(then["recipe"], now["recipe"])
        if added and not changes and writing:
            raise StaleRunError(
                f"cannot {use} {self.directory}: an older hm3 started it, without the recipe settings "
                f"{_some(added)} that this one has; its search cannot be continued the same way; start it "
                "afresh with --force"
            )
        if changes or (then.get("scoring") != scoring_key(now) and not added):
            only_models = (
                models_changed(then, now)
                and then["files"] == now["files"]
                and not data_differences(then["recipe"], now["recipe"])
            )
            error = ModelsChangedError if only_models else UserError
            raise error(
                f"cannot {use} {self.directory}: {_some(changes) or 'its fingerprint changed'} since the run "
                "started (its logged scores are for the old inputs); start a new run, or replace this one "
                f"with {run_writer(self.directory)} --recipe ... --force"
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
        with open(self.candidates_path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if line.endswith(b"\n"):
                    try:
                        yield json.loads(line)
                    except ValueError as error:  # not UTF-8 or not JSON: edited or damaged, not torn
                        raise UserError(
                            f"{self.candidates_path}, line {number}: not a JSON record ({error}); delete that "
                            "line to score its candidate again"
                        ) from None

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
        """Read a JSON file of the run; UserError if it is missing (the run has not finished, or the folder is
        not a run)."""
        path = self.directory / name
        if not path.is_file():
            require_run_directory(self.directory)
            raise UserError(
                f"{self.directory}: no {name} yet (has the run finished? resume it with --resume)"
            )
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:  # not UTF-8 or not JSON: an empty, damaged or foreign file
            raise UserError(f"{path}: not valid JSON ({error})") from None

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
        return replace_file(self.directory / name, lambda handle: handle.write(text.encode("utf-8")))


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (absolute paths, every default spelled out)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def recipe_differences(old: Recipe, new: Recipe) -> list[str]:
    """Dotted paths of the fields where two recipes differ, with both values."""
    return data_differences(old.model_dump(mode="json"), new.model_dump(mode="json"))


def _some(differences: list[str], shown: int = 3) -> str:
    """The first few differences, and how many more."""
    more = len(differences) - shown
    return "; ".join(differences[:shown]) + (f" (+{more} more)" if more > 0 else "")


def require_run_directory(directory: str | Path) -> Path:
    """``directory`` as a path, if it is a run hm3 wrote (it holds the run's ``recipe.yaml``).

    Raises:
        UserError: it is not: a missing folder, a file, any other folder (one line each, the same for every
            command that reads a run).
    """
    directory = Path(directory)
    if not directory.exists():
        raise UserError(f"run directory not found: {directory}")
    if not directory.is_dir():
        raise UserError(f"{directory} is a file, not a run directory")
    if not (directory / RECIPE_FILE).is_file():
        raise UserError(f"{directory} is not a run directory (no {RECIPE_FILE})")
    return directory
