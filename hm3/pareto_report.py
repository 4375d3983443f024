"""``hm3 pareto RUN [RUN ...]``: the fronts of finished runs as one table, their hypervolumes, and one plot.

**One normalisation for all runs.** With several runs (an HM3 run and a baseline run of the same recipe, say),
each objective is min-max normalised over the union of every run's front members and references on the split
shown, and the reference point is −0.1 on every normalised axis (:mod:`hm3.moo.hypervolume`). The
hypervolumes in one report are therefore comparable, and a run's value in ``hm3 pareto A B`` differs from
``hm3 pareto A`` only through those shared bounds. One run alone is normalised over its own members and
references, as in its ``summary.json``. Runs must have the same objectives, in the same order, with the same
directions, scored the same way (:func:`scoring_protocol`): the same split of each task's data and the same
task settings, and task files of the same name holding the same data and settings (:func:`scored_file_contents`)
— otherwise their scores are on other documents or another metric, and one table of them would mix results
that cannot be compared.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hm3.errors import UserError
from hm3.front import ParetoFront, Reference, Split
from hm3.moo.hypervolume import Normalization
from hm3.moo.plots import PlotSeries, plot_pareto
from hm3.output_guard import InputPath, check_output_file, recipe_inputs
from hm3.recipe import recipe_from_dict
from hm3.run_fingerprint import FINGERPRINT_FILE, data_differences, file_digest, load_task_yaml
from hm3.store import FRONT_FILE, RECIPE_FILE, RunStore, require_run_directory

UNSCORED_OBJECTIVE_FIELDS = ("weight", "batch_size", "model", "include_path")
"""Objective settings that do not decide which documents a score is on or how it is computed."""
TASK_SUFFIXES = (".yaml", ".yml")
"""Task files, compared by their settings rather than their bytes (:func:`scored_file_contents`)."""
FRONT_COLORS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink")
"""Colour of each run's front in a plot, in the order the runs are given (the first is HM3's usual red)."""


@dataclass
class RunFront:
    """One run of a report: its label, folder, front, and hypervolumes on the report's normalisation."""

    label: str
    directory: Path
    front: ParetoFront
    hypervolumes: dict[str, object]


@dataclass
class ParetoReport:
    """What ``hm3 pareto`` shows: the runs, the split, the shared normalisation, the references, the plot."""

    runs: list[RunFront]
    split: Split
    normalization: Normalization
    references: list[tuple[str, Reference]]
    """Every run's references on ``split`` (one entry for a reference equal in several runs), display label first."""
    reference_hypervolumes: dict[str, float]
    plot: Path | None

    @property
    def objectives(self) -> list[str]:
        return self.runs[0].front.objectives


def load_front(run: str | Path) -> ParetoFront:
    """The front of a run directory (UserError if the run has none yet)."""
    if not Path(run).is_dir():
        require_run_directory(run)  # missing, or a file: the one line every command says
    store = RunStore(Path(run))
    return ParetoFront.from_json(store.read_json(FRONT_FILE), source=str(store.directory / FRONT_FILE))


def pareto_report(
    runs: str | Path | Sequence[str | Path], split: Split = "heldout", plot: str | Path | None = None
) -> ParetoReport:
    """Read each run's front, compute hypervolumes on ``split`` with one normalisation for all of them, and
    draw them into one plot if ``plot`` names a file.

    Raises:
        UserError: a run has no front or an empty one; the runs' objectives differ, or are scored on another
            split or with other task settings (:func:`scoring_protocol`); ``plot`` cannot be written
            (:func:`check_plot_target`).
    """
    paths = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if plot is not None:
        check_plot_target(Path(plot), paths)
    fronts = [load_front(run) for run in paths]
    for run, front in zip(paths, fronts, strict=True):
        if not front.members:
            raise UserError(f"{run}: the front is empty")
    first = fronts[0]
    for run, front in zip(paths[1:], fronts[1:], strict=True):
        if (front.objectives, front.higher_is_better) != (first.objectives, first.higher_is_better):
            raise UserError(
                f"{run} has objectives {_objectives(front)}, {paths[0]} has {_objectives(first)}: only runs "
                "of the same objectives (names, order, directions) share one normalisation"
            )
    check_scored_alike(paths)
    normalization = Normalization.fit(*(front.compared_points(split) for front in fronts))
    labels = _labels(paths)
    report_runs = [
        RunFront(label, Path(run), front, front.hypervolumes(split, normalization))
        for label, run, front in zip(labels, paths, fronts, strict=True)
    ]
    references = _references(report_runs, split)
    directions = first.higher_is_better
    reference_hypervolumes = {
        label: normalization.hypervolume(reference.vector(first.objectives, split, directions)[None, :])
        for label, reference in references
    }
    written = None
    if plot is not None:
        title = " vs ".join(labels) + f": Pareto front{'s' if len(labels) > 1 else ''} ({split} split)"
        written = plot_pareto(_series(report_runs, references, split), first.objectives, Path(plot), title)
    return ParetoReport(report_runs, split, normalization, references, reference_hypervolumes, written)


def check_plot_target(plot: Path, runs: Sequence[str | Path]) -> None:
    """Refuse, before anything is read or drawn, a plot file hm3 may not or cannot write.

    Raises:
        UserError: ``plot`` does not end in .png/.svg; is a symbolic link (writing would overwrite what it points
            to) or a folder; is or lies inside a path a run's recipe reads (a model, a data set of images); or
            its nearest existing folder is a file or read-only.
    """
    if plot.suffix.lower() not in (".png", ".svg"):
        raise UserError(f"--plot {plot}: the file must end in .png or .svg")
    check_output_file(
        plot, "--plot", [path for run in runs for path in _run_inputs(Path(run))], ".png or .svg"
    )


def check_scored_alike(runs: Sequence[str | Path]) -> None:
    """Refuse runs that score their candidates differently (:func:`scoring_protocol`) or on task files of the same
    name that held other data or settings (:func:`scored_file_contents`); one run is compared with nothing.

    Raises:
        UserError: one line naming the runs and the first differences.
    """
    if len(runs) < 2:
        return
    protocol = scoring_protocol(Path(runs[0]))
    contents = scored_file_contents(Path(runs[0]))
    for run in runs[1:]:
        differences = data_differences(protocol, scoring_protocol(Path(run)))
        if not differences:
            other = scored_file_contents(Path(run))
            differences = [
                f"{name} holds other {'settings' if name.endswith(TASK_SUFFIXES) else 'data'}"
                for name in sorted(set(contents) & set(other))
                if contents[name] != other[name]
            ]
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
    other folders; what the files hold is compared by :func:`scored_file_contents`.

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
        pass  # a recipe the format no longer takes: its settings as stored
    split = stored.get("split") or {}
    objectives = [
        {key: _file_name(value) for key, value in objective.items() if key not in UNSCORED_OBJECTIVE_FIELDS}
        for objective in stored.get("objectives") or []
        if isinstance(objective, dict)
    ]
    return {"split": {key: split.get(key) for key in ("search_fraction", "seed")}, "objectives": objectives}


def scored_file_contents(run: Path) -> dict[str, set[str]]:
    """What the task and data files a run scored on held, by file name, from the content hashes its
    ``fingerprint.json`` recorded when it started (:mod:`hm3.run_fingerprint`).

    A task YAML is compared by its settings with every absolute path reduced to its file name (a zoo's task names
    its data by absolute path, so two zoos built alike differ there only), and only while the file on disk is the
    one the run recorded; a file recorded by size and time (large, or a folder of images) cannot be compared and
    is left out, as is everything of a run without a fingerprint.
    """
    try:
        recorded = json.loads((run / FINGERPRINT_FILE).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    contents: dict[str, set[str]] = {}
    for name, digest in recorded.items() if isinstance(recorded, dict) else ():
        path = Path(name)
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            continue
        if path.suffix in TASK_SUFFIXES:
            settings = _task_settings(path, digest)
            if settings is None:
                continue
            digest = settings
        contents.setdefault(path.name, set()).add(digest)
    return contents


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
    files); any other value as it is."""
    if isinstance(value, dict):
        return {key: _file_name(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_file_name(inner) for inner in value]
    if isinstance(value, str) and Path(value).is_absolute():
        return Path(value).name
    return value


def _run_inputs(run: Path) -> list[InputPath]:
    """The paths a run's stored recipe reads; none when the run has no readable recipe (then
    :func:`load_front` names what is wrong with the run)."""
    try:
        return recipe_inputs(recipe_from_dict(yaml.safe_load((run / RECIPE_FILE).read_text())))
    except (OSError, ValueError, TypeError, yaml.YAMLError, UserError):
        return []


def _objectives(front: ParetoFront) -> str:
    pairs = zip(front.objectives, front.higher_is_better, strict=True)
    return "(" + ", ".join(f"{name} {'↑' if up else '↓'}" for name, up in pairs) + ")"


def _labels(paths: list[str | Path]) -> list[str]:
    """Each run's folder name; the path as given where names repeat; a number where paths repeat too."""
    names = [Path(p).name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return [name if names.count(name) == 1 else f"{name} #{i + 1}" for i, name in enumerate(names)]


def _references(runs: list[RunFront], split: Split) -> list[tuple[str, Reference]]:
    """The runs' references scored on ``split``: one entry for a reference several runs share (same label, same
    scores); a label whose scores differ between runs is shown once per run, as ``label (run)``."""
    by_label: dict[str, list[tuple[str, Reference]]] = {}
    for run in runs:
        for reference in run.front.references:
            if split not in reference.scores:
                continue
            entries = by_label.setdefault(reference.label, [])
            if not any(r.scores[split] == reference.scores[split] for _, r in entries):
                entries.append((run.label, reference))
    out: list[tuple[str, Reference]] = []
    for label, entries in by_label.items():
        if len(entries) == 1:
            out.append((label, entries[0][1]))
        else:
            out += [(f"{label} ({run})", reference) for run, reference in entries]
    return out


def _series(runs: list[RunFront], references: list[tuple[str, Reference]], split: Split) -> list[PlotSeries]:
    """Raw (not oriented) scores for the plot: axes show the metric values the user knows."""
    names = runs[0].front.objectives
    several = len(runs) > 1
    series: list[PlotSeries] = []
    for i, run in enumerate(runs):
        color = FRONT_COLORS[i % len(FRONT_COLORS)] if several else None
        if split == "search":
            scored = [
                c["scores"]
                for c in RunStore(run.directory).candidates()
                if isinstance(c, dict)
                and isinstance(c.get("scores"), dict)
                and set(names) <= set(c["scores"])
            ]
            if scored:
                label = f"{run.label}: all candidates" if several else "all candidates"
                points = np.array([[s[o] for o in names] for s in scored])
                series.append(PlotSeries(label, points, "candidates", color))
        members = run.front.members
        label = f"{run.label} front ({len(members)})" if several else f"HM3 front ({len(members)})"
        points = np.array([[m.scores[split][o] for o in names] for m in members])
        series.append(PlotSeries(label, points, "front", color))
    for label, reference in references:
        point = np.array([[reference.scores[split][o] for o in names]])
        kind = reference.kind if reference.kind in ("finetuned", "merge", "baseline") else "baseline"
        series.append(PlotSeries(label, point, kind))  # type: ignore[arg-type]
    return series
