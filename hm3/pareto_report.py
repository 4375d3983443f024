"""``hm3 pareto RUN``: the front of a finished run as a table, its hypervolume, and a plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hm3.errors import UserError
from hm3.front import ParetoFront, Split
from hm3.moo.plots import PlotSeries, plot_pareto
from hm3.store import FRONT_FILE, RunStore


@dataclass
class ParetoReport:
    """What ``hm3 pareto`` shows: the front, the split it is read on, hypervolumes, the plot written."""

    front: ParetoFront
    split: Split
    hypervolumes: dict[str, object]
    plot: Path | None


def load_front(run: str | Path) -> ParetoFront:
    """The front of a run directory (UserError if the run has none yet)."""
    store = RunStore(Path(run))
    if store.directory.exists() and not store.directory.is_dir():
        raise UserError(f"{run} is a file, not a run directory")
    if not store.directory.is_dir():
        raise UserError(f"run directory not found: {run}")
    return ParetoFront.from_json(store.read_json(FRONT_FILE), source=str(store.directory / FRONT_FILE))


def pareto_report(run: str | Path, split: Split = "heldout", plot: str | Path | None = None) -> ParetoReport:
    """Read a run's front, compute hypervolumes on ``split``, and draw it if ``plot`` names a file."""
    if plot is not None and Path(plot).suffix.lower() not in (".png", ".svg"):
        raise UserError(f"--plot {plot}: the file must end in .png or .svg")
    front = load_front(run)
    if not front.members:
        raise UserError(f"{run}: the front is empty")
    hypervolumes = front.hypervolumes(split)
    written = None
    if plot is not None:
        written = plot_pareto(
            _series(front, Path(run), split),
            front.objectives,
            Path(plot),
            f"{Path(run).name}: Pareto front ({split} split)",
        )
    return ParetoReport(front, split, hypervolumes, written)


def _series(front: ParetoFront, run: Path, split: Split) -> list[PlotSeries]:
    """Raw (not oriented) scores for the plot: axes show the metric values the user knows."""
    names = front.objectives
    series: list[PlotSeries] = []
    if split == "search":
        scored = [
            c["scores"]
            for c in RunStore(run).candidates()
            if isinstance(c, dict) and isinstance(c.get("scores"), dict) and set(names) <= set(c["scores"])
        ]
        if scored:
            series.append(
                PlotSeries("all candidates", np.array([[s[o] for o in names] for s in scored]), "candidates")
            )
    members = np.array([[m.scores[split][o] for o in names] for m in front.members])
    series.append(PlotSeries(f"HM3 front ({len(front.members)})", members, "front"))
    for reference in front.references:
        if split in reference.scores:
            point = np.array([[reference.scores[split][o] for o in names]])
            kind = reference.kind if reference.kind in ("finetuned", "merge", "baseline") else "baseline"
            series.append(PlotSeries(reference.label, point, kind))  # type: ignore[arg-type]
    return series
