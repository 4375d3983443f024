"""Whether runs scored their candidates alike, so that one table and one normalisation may hold their fronts.

Runs must have the same objectives, in the same order, with the same directions, scored the same way
(:func:`scoring_protocol`): the same split of each task's data and the same task settings, and task files of
the same name holding the same data and settings when each run started (:func:`file_differences`) — otherwise
their scores are on other documents or another metric. ``hm3 pareto`` (:mod:`hm3.pareto_report`) checks this
before it draws runs together (:func:`check_scored_alike`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hm3.errors import UserError
from hm3.recipe import recipe_from_dict
from hm3.run_fingerprint import FINGERPRINT_FILE, data_differences, file_digest, load_task_yaml
from hm3.store import RECIPE_FILE

UNSCORED_OBJECTIVE_FIELDS = ("weight", "batch_size", "model", "include_path")
"""Objective settings that do not decide which documents a score is on or how it is computed."""
TASK_SUFFIXES = (".yaml", ".yml")
"""Task files, compared by their settings rather than their bytes (:func:`file_differences`)."""


@dataclass(frozen=True)
class ScoredFile:
    """A task or data file a run scored on, as its ``fingerprint.json`` recorded it when the run started."""

    path: Path
    digest: str
    """The content hash recorded then."""
    settings: str | None
    """What the file held that decides a score: a task YAML's settings (:func:`_task_settings`), None once the
    file on disk is no longer the one recorded (its settings then are unknown); a data file's content hash."""


def check_scored_alike(runs: Sequence[str | Path]) -> None:
    """Refuse runs that score their candidates differently (:func:`scoring_protocol`) or on task files of the same
    name that held other data or settings when they started (:func:`file_differences`); one run is compared with
    nothing.

    Raises:
        UserError: one line naming the runs and the first differences, or the task file whose settings one run's
            record cannot tell.
    """
    if len(runs) < 2:
        return
    protocol = scoring_protocol(Path(runs[0]))
    files = scored_files(Path(runs[0]))
    for run in runs[1:]:
        differences = data_differences(protocol, scoring_protocol(Path(run)))
        if not differences:
            differences = file_differences((runs[0], files), (run, scored_files(Path(run))))
        if differences:
            more = len(differences) - 3
            shown = ", ".join(differences[:3]) + (f" and {more} more" if more > 0 else "")
            raise UserError(
                f"{runs[0]} and {run} score their candidates differently ({shown}): their fronts are on other "
                "documents or metrics and cannot share one normalisation"
            )


def scoring_protocol(run: Path) -> dict[str, Any]:
    """How a run's scores were taken, besides the models scored: its split of each task's data (the search
    fraction and seed) and each objective's settings, from the run's stored recipe (the recipe format's defaults
    filled in where it validates, so a run written before a setting existed compares with one written after).
    A file is named by its file name (a task YAML, a data set, a head): two zoos built alike hold their tasks in
    other folders; what the files hold is compared by :func:`scored_files`.

    Raises:
        UserError: the run's ``recipe.yaml`` cannot be read as a mapping.
    """
    try:
        stored = yaml.safe_load((run / RECIPE_FILE).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(
            f"{run}: its {RECIPE_FILE} cannot be read ({error}), so how its scores were taken is unknown"
        ) from None
    if not isinstance(stored, dict):
        raise UserError(f"{run}: its {RECIPE_FILE} is not a recipe, so how its scores were taken is unknown")
    try:
        stored = recipe_from_dict(stored).model_dump(mode="json")
    except (ValueError, TypeError, UserError):
        pass  # a recipe the format no longer takes: its settings as stored, their types checked below
    split, objectives = stored.get("split", {}), stored.get("objectives", [])
    if not isinstance(split, dict):
        raise _unknown_protocol(run, "'split' is not a mapping")
    if not isinstance(objectives, list):
        raise _unknown_protocol(run, "'objectives' is not a list")
    for i, objective in enumerate(objectives):
        if not isinstance(objective, dict):
            raise _unknown_protocol(run, f"'objectives[{i}]' is not a mapping")
    return {
        "split": {key: _file_name(split.get(key)) for key in ("search_fraction", "seed")},
        "objectives": [
            {k: v for k, v in _file_name(objective).items() if k not in UNSCORED_OBJECTIVE_FIELDS}
            for objective in objectives
        ],
    }


def _unknown_protocol(run: Path, problem: str) -> UserError:
    return UserError(f"{run / RECIPE_FILE}: {problem}, so how the run's scores were taken is unknown")


def scored_files(run: Path) -> dict[str, list[ScoredFile]]:
    """The task and data files a run scored on, by file name, as its ``fingerprint.json`` recorded them when it
    started (:mod:`hm3.run_fingerprint`); a file recorded by size and time (large, or a folder of images) cannot
    be compared and is left out, as is everything of a run without a fingerprint.
    """
    try:
        recorded = json.loads((run / FINGERPRINT_FILE).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    files: dict[str, list[ScoredFile]] = {}
    for name, digest in recorded.items() if isinstance(recorded, dict) else ():
        path = Path(name)
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            continue
        settings = _task_settings(path, digest) if path.suffix in TASK_SUFFIXES else digest
        files.setdefault(path.name, []).append(ScoredFile(path, digest, settings))
    return files


def file_differences(
    first: tuple[str | Path, dict[str, list[ScoredFile]]],
    other: tuple[str | Path, dict[str, list[ScoredFile]]],
) -> list[str]:
    """How the files of the same name two runs scored on differed when each started (:func:`scored_files`).

    Files that had the same bytes are alike. A data file is otherwise other data; a task YAML is compared by its
    settings with every absolute path reduced to its file name (a zoo's task names its data by absolute path, so
    two zoos built alike differ there only) — settings known only while the file on disk is the one a run
    recorded, since ``fingerprint.json`` keeps a file's hash, not what it held.

    Raises:
        UserError: the runs' task files of one name had other bytes and one of them has changed or gone since
            its run started, so whether the runs scored with the same settings cannot be told (and no other
            difference was found).
    """
    (run, ours), (other_run, theirs) = first, other
    differences, unknown = [], []
    for name in sorted(set(ours) & set(theirs)):
        if {f.digest for f in ours[name]} == {f.digest for f in theirs[name]}:
            continue
        if not name.endswith(TASK_SUFFIXES):
            differences.append(f"{name} holds other data")
            continue
        sides = ((run, ours[name]), (other_run, theirs[name]))
        unread = [(who, f.path) for who, files in sides for f in files if f.settings is None]
        unknown += unread
        if not unread and {f.settings for f in ours[name]} != {f.settings for f in theirs[name]}:
            differences.append(f"{name} holds other settings")
    if unknown and not differences:
        who, path = unknown[0]
        state = "is gone" if not path.is_file() else "has changed"
        raise UserError(
            f"{run} and {other_run}: cannot tell whether they scored {path.name} with the same settings — {path} "
            f"{state} since {who} started, and {who}'s {FINGERPRINT_FILE} keeps only its hash, which differs from "
            "the other run's; their fronts may be on other metrics and cannot share one normalisation"
        )
    return differences


def _task_settings(path: Path, recorded: str) -> str | None:
    """A hash of a task YAML's settings, absolute paths reduced to file names; None when the file is gone, changed
    since the run recorded it, or not YAML."""
    if file_digest(path) != recorded:
        return None
    try:
        settings = _file_name(load_task_yaml(path.read_text()))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    text = json.dumps(settings, sort_keys=True, default=str)
    return "settings:" + hashlib.sha256(text.encode()).hexdigest()


def _file_name(value: Any) -> Any:
    """An absolute path's file name, inside mappings and lists too (an image data set's ``path``, a task's data
    files); any other value as it is, mapping keys as text."""
    if isinstance(value, dict):  # keys as text: a hand-written 1: and "a": in one mapping still sort
        return {str(key): _file_name(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_file_name(inner) for inner in value]
    if isinstance(value, str) and Path(value).is_absolute():
        return Path(value).name
    return value
