"""``hm3 pareto RUN [RUN ...]``: the fronts of finished runs as one table, their hypervolumes, and one plot.

**One normalisation for all runs.** With several runs (an HM3 run and a baseline run of the same recipe, say),
each objective is min-max normalised over the union of every run's front members and references on the split
shown, and the reference point is −0.1 on every normalised axis (:mod:`hm3.moo.hypervolume`). The
hypervolumes in one report are therefore comparable, and a run's value in ``hm3 pareto A B`` differs from
``hm3 pareto A`` only through those shared bounds. One run alone is normalised over its own members and
references, as in its ``summary.json``. Runs must have the same objectives, in the same order, with the same
directions, scored the same way (:func:`hm3.scored_alike.scoring_protocol`): the same split of each task's data and the same
task settings, and task files of the same name holding the same data and settings when each run started
(:func:`hm3.scored_alike.file_differences`) — otherwise their scores are on other documents or another metric, and one table of
them would mix results that cannot be compared.

**A front is what its run logged.** ``front.json`` is derived from the run's ``candidates.jsonl``: each member's
and reference's scores must be ones the log recorded for that model (:func:`check_front_against_log`), so an
edited number is refused rather than drawn into the hypervolumes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hm3.errors import UserError
from hm3.front import ParetoFront, Reference, Split, is_finite_number
from hm3.moo.hypervolume import Normalization
from hm3.moo.plots import PlotSeries, plot_pareto
from hm3.output_guard import InputPath, check_output_file, recipe_inputs
from hm3.recipe import recipe_from_dict
from hm3.run_fingerprint import FINGERPRINT_FILE, FORMAT
from hm3.scored_alike import check_scored_alike
from hm3.search.candidate import SEARCHED_LEVELS, Candidate, member_candidate
from hm3.store import CANDIDATES_FILE, FRONT_FILE, RECIPE_FILE, RunStore, require_run_directory

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
    source = str(store.directory / FRONT_FILE)
    front = ParetoFront.from_json(store.read_json(FRONT_FILE), source=source)
    check_front_against_log(store, front, source)
    return front


def check_front_against_log(store: RunStore, front: ParetoFront, source: str) -> None:
    """Refuse a front whose numbers are not the ones its run logged: every member's and reference's scores on
    each split must be those of a ``candidates.jsonl`` record of the same model (:class:`Candidate`) on that
    split. A run without a log, or whose log an older hm3 wrote in another format, is not checked.

    Raises:
        UserError: naming the member or reference whose scores the log does not hold (an edited ``front.json``).
    """
    logged = _logged_scores(store)
    if logged is None:
        return
    entries = [(f"member {m.id}", member_candidate(m), m.scores) for m in front.members]
    entries += [(f"reference {r.label!r}", _reference_candidate(r), r.scores) for r in front.references]
    for name, candidate, scores in entries:
        key = "" if candidate is None else candidate.content_key()
        for split, values in scores.items():
            found = logged.get((key, split), [])
            if not any(all(record.get(o) == values[o] for o in front.objectives) for record in found):
                raise UserError(
                    f"{source}: {name} has {split} scores that the run's {CANDIDATES_FILE} does not record for "
                    "that model; the front (or the log) was edited, and its numbers are not the run's"
                )


def _logged_scores(store: RunStore) -> dict[tuple[str, str], list[dict[str, Any]]] | None:
    """The scores of every record of the run's log by (candidate content hash, split); None for a run without
    a log or with one an older hm3 wrote (``fingerprint.json``'s format)."""
    if not store.candidates_path.is_file():
        return None
    try:
        written = json.loads((store.directory / FINGERPRINT_FILE).read_text()).get("format", FORMAT)
    except (OSError, ValueError, AttributeError):
        written = FORMAT
    if written != FORMAT:
        return None
    logged: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in store.candidates():
        if not isinstance(record, dict) or not isinstance(record.get("scores"), dict):
            continue
        try:
            key = Candidate.from_record(record).content_key()
        except (TypeError, ValueError):  # a record of another shape vouches for nothing
            continue
        logged.setdefault((key, str(record.get("split"))), []).append(record["scores"])
    return logged


def _reference_candidate(reference: Reference) -> Candidate | None:
    """The model a reference is: a fine-tuned model by its label, a uniform merge by its spec (None: neither)."""
    if reference.kind == "finetuned":
        return Candidate.finetuned_model(reference.label)
    return Candidate.of_merge(reference.merge) if reference.merge is not None else None


def pareto_report(
    runs: str | Path | Sequence[str | Path], split: Split = "heldout", plot: str | Path | None = None
) -> ParetoReport:
    """Read each run's front, compute hypervolumes on ``split`` with one normalisation for all of them, and
    draw them into one plot if ``plot`` names a file.

    Raises:
        UserError: a run has no front or an empty one; the runs' objectives differ, or are scored on another
            split or with other task settings (:func:`hm3.scored_alike.scoring_protocol`); ``plot`` cannot be written
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
            points = _searched_points(run.directory, names)
            if len(points):
                label = f"{run.label}: all candidates" if several else "all candidates"
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


def _searched_points(run: Path, names: list[str]) -> np.ndarray:
    """The search-split scores of every merge and path the run's log holds, [candidates, objectives] (a record
    of the held-out split, a fine-tuned model or reference, or without a finite score of each objective: not a
    searched candidate)."""
    rows = [
        [record["scores"][o] for o in names]
        for record in RunStore(run).candidates()
        if isinstance(record, dict)
        and record.get("split") == "search"
        and record.get("level") in SEARCHED_LEVELS
        and isinstance(record.get("scores"), dict)
        and all(is_finite_number(record["scores"].get(o)) for o in names)
    ]
    return np.array(rows, dtype=float).reshape(-1, len(names))
