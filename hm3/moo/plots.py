"""Pictures of a Pareto front: what a user looks at to pick a model.

* 1 objective: a strip, one row per series (the front, each reference model, the candidates scored), each
  model a mark at its score: with nothing to trade off, the picture is where the best merge stands.
* 2 objectives: a scatter of every scored candidate, the front as a step line, reference models marked.
* 3 or more: a grid of pairwise scatters (each pair of objectives), and a parallel-coordinates panel with one
  line per front member and per reference model.

Reference models (the fine-tuned specialists, uniform TA / TIES / DARE-TIES merges, baselines) are drawn with
their own markers and labelled in the legend. Several runs' fronts (``hm3 pareto A B``) share the axes, each in
its own colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from hm3.folder_swap import replace_file
from hm3.moo.pareto import non_dominated_mask

SeriesKind = Literal["front", "candidates", "finetuned", "merge", "baseline"]

_STYLE: dict[str, dict[str, object]] = {
    "candidates": {"marker": ".", "s": 12, "alpha": 0.35, "color": "0.6"},
    "front": {"marker": "o", "s": 46, "alpha": 0.95, "color": "tab:red", "edgecolors": "black", "zorder": 7},
    # references are hollow, so a front member on the same spot stays visible inside them
    "finetuned": {"marker": "s", "s": 150, "linewidths": 2.0, "facecolors": "none", "zorder": 6},
    "merge": {"marker": "^", "s": 150, "linewidths": 2.0, "facecolors": "none", "zorder": 6},
    "baseline": {"marker": "D", "s": 110, "linewidths": 1.5, "facecolors": "none", "zorder": 5},
}


@dataclass(frozen=True)
class PlotSeries:
    """A labelled set of score vectors to draw (raw metric values, one column per objective)."""

    label: str
    points: np.ndarray
    kind: SeriesKind
    color: str | None = None
    """Overrides the kind's colour (``hm3 pareto A B``: one colour per run's front and candidates)."""


def plot_pareto(series: list[PlotSeries], objective_names: list[str], out: Path, title: str) -> Path:
    """Draw the front and the reference models into ``out`` (.png or .svg); returns ``out``.

    The picture is drawn beside ``out`` and renamed into place: a link at ``out`` is replaced, never followed, and
    a failed write leaves neither a half-written plot nor a temporary file.
    """
    matplotlib.use("Agg")
    k = len(objective_names)
    colors = tuple(
        c for i, c in enumerate(plt.get_cmap("tab10").colors) if i not in (3, 7)
    )  # not red, not grey
    styled = [(s, _style_for(s, i, colors)) for i, s in enumerate(series)]
    if k == 1:
        fig = _strip(styled, objective_names[0])
    elif k == 2:
        fig, ax = plt.subplots(figsize=(7.5, 6))
        _scatter_pair(ax, styled, 0, 1, objective_names, step=True)
        ax.legend(loc="best", fontsize=8, framealpha=0.9)
    else:
        fig = _grid_and_parallel(styled, objective_names)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.03 if k > 2 else 0, 1, 0.96))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        replace_file(
            out,
            lambda handle: fig.savefig(handle, format=out.suffix[1:].lower(), dpi=130, bbox_inches="tight"),
        )
    finally:
        plt.close(fig)
    return out


def _style_for(series: PlotSeries, index: int, colors: tuple) -> dict[str, object]:
    style = dict(_STYLE[series.kind])
    if series.kind in ("finetuned", "merge", "baseline"):
        style["color"] = colors[index % len(colors)]
    if series.color is not None:
        style["color"] = series.color
    return style


def _scatter_pair(ax, styled, i: int, j: int, names: list[str], step: bool) -> None:
    for s, style in styled:
        pts = np.asarray(s.points, dtype=float).reshape(-1, len(names))
        if len(pts) == 0:
            continue
        kwargs = dict(style)
        if kwargs.get("facecolors") == "none":
            kwargs["edgecolors"] = kwargs.pop("color")
        ax.scatter(pts[:, i], pts[:, j], label=s.label, **kwargs)
        if step and s.kind == "front" and len(pts) > 1:
            plane = pts[:, [i, j]]
            plane = plane[non_dominated_mask(plane)]
            plane = plane[np.argsort(-plane[:, 0])]
            color = style.get("color", "tab:red")
            ax.step(plane[:, 0], plane[:, 1], where="post", color=color, lw=1.3, alpha=0.8)
    ax.set_xlabel(names[i])
    ax.set_ylabel(names[j])
    ax.grid(alpha=0.3)


def _strip(styled, name: str):
    """One objective: a row per series, each of its models a mark at its score (the best row on top)."""
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * len(styled)))
    rows = list(range(len(styled)))[::-1]
    for row, (s, style) in zip(rows, styled, strict=True):
        scores = np.asarray(s.points, dtype=float).reshape(-1)
        kwargs = dict(style)
        if kwargs.get("facecolors") == "none":
            kwargs["edgecolors"] = kwargs.pop("color")
        ax.scatter(scores, np.full(len(scores), row), **kwargs)
    ax.set_yticks(rows, [s.label for s, _ in styled])
    ax.set_ylim(-0.7, len(styled) - 0.3)
    ax.set_xlabel(name)
    ax.grid(alpha=0.3, axis="x")
    return fig


def _grid_and_parallel(styled, names: list[str]):
    k = len(names)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig = plt.figure(figsize=(4.2 * cols, 3.6 * rows + 4.2))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[3.6] * rows + [4.2])
    for n, (i, j) in enumerate(pairs):
        ax = fig.add_subplot(grid[n // cols, n % cols])
        _scatter_pair(ax, styled, i, j, names, step=False)
    ax = fig.add_subplot(grid[rows, :])
    _parallel_coordinates(ax, styled, names)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=min(6, len(labels)),
        fontsize=8,
        bbox_to_anchor=(0.5, 0.0),
        frameon=False,
    )
    return fig


def _parallel_coordinates(ax, styled, names: list[str]) -> None:
    every = np.vstack(
        [np.asarray(s.points, float).reshape(-1, len(names)) for s, _ in styled if len(s.points)]
    )
    lower, upper = every.min(axis=0), every.max(axis=0)
    span = np.where(upper > lower, upper - lower, 1.0)
    xs = np.arange(len(names))
    for s, style in styled:
        if s.kind == "candidates":
            continue
        pts = (np.asarray(s.points, float).reshape(-1, len(names)) - lower) / span
        for row in pts:
            ax.plot(
                xs,
                row,
                color=style.get("color", "tab:red"),
                alpha=0.9,
                lw=2.2 if s.kind == "front" else 1.4,
                ls="-" if s.kind == "front" else "--",
                zorder=3 if s.kind == "front" else 2,
                marker=style["marker"],
                ms=4,
            )
    ax.set_xticks(xs, [f"{n}\n[{lo:.2f}, {hi:.2f}]" for n, lo, hi in zip(names, lower, upper, strict=True)])
    ax.set_ylabel("score, min-max scaled per objective")
    ax.set_title("parallel coordinates (front members and reference models)", fontsize=10)
    ax.grid(alpha=0.3)
