"""`hm3 pareto RUN [RUN ...] [--plot FILE] [--split heldout|search]`: the fronts of runs, their hypervolumes on
one normalisation, one plot."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run directory written by `hm3 merge` or `hm3 baseline`; several runs (e.g. HM3 and a baseline of "
        "the same recipe) are shown in one table and one plot, their hypervolumes on one normalisation",
    )
    parser.add_argument("--plot", metavar="FILE", help="write the plot to FILE (.png or .svg)")
    parser.add_argument(
        "--split",
        choices=["heldout", "search"],
        default="heldout",
        help="which scores to show (default: heldout, the data the search never saw)",
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console
    from rich.table import Table

    from hm3.pareto_report import pareto_report

    report = pareto_report(args.runs, split=args.split, plot=args.plot)
    split, several = report.split, len(report.runs) > 1
    title = ", ".join(r.label for r in report.runs) if several else str(args.runs[0])
    table = Table(title=f"Pareto front{'s' if several else ''} of {title} ({split} split)")
    if several:
        table.add_column("run", no_wrap=True)
    table.add_column("member", no_wrap=True)
    # members the optimised upper level found belong to no one preference: the column only where one does
    with_preference = any(m.preference for entry in report.runs for m in entry.front.members)
    if with_preference:
        table.add_column("preference λ", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("merge weights", no_wrap=True)
    directions = report.runs[0].front.higher_is_better  # every run compared has the same ones
    for name, up in zip(report.objectives, directions, strict=True):
        table.add_column(name if up else f"{name} ↓", justify="right")  # ↓: lower is better
    for entry in report.runs:
        for member in entry.front.members:
            kind = member_model(member.merge, member.path)
            table.add_row(
                *([entry.label] if several else []),
                member.id[:10],
                *([" ".join(f"{p:.2f}" for p in member.preference)] if with_preference else []),
                kind,
                merge_weights(member.merge),
                *(f"{member.scores[split][o]:.3f}" for o in report.objectives),
            )
    for label, reference in report.references:
        table.add_row(
            *([""] if several else []),
            label,
            *([""] if with_preference else []),
            reference.kind,
            "",
            *(f"{reference.scores[split][o]:.3f}" for o in report.objectives),
            style="dim",
        )
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    references = report.reference_hypervolumes
    if several:
        console.print(f"hypervolume ({split}), one normalisation for all {len(report.runs)} runs:")
        width = max(len(f"front of {r.label}") for r in report.runs) + 2
        width = max([width, *(len(label) + 2 for label in references)])
        for entry in report.runs:
            console.print(f"  {f'front of {entry.label}':<{width}} {entry.hypervolumes['front']:.4f}")
    else:
        console.print(f"hypervolume ({split}): front {report.runs[0].hypervolumes['front']:.4f}")
        width = 0
    for label, value in references.items():
        console.print(f"  {label:<{width}}{' ' if width else ': '}{value:.4f}")
    if several:
        norm = report.normalization
        bounds = ", ".join(
            f"{name} [{lo:.3f}, {hi:.3f}]"
            for name, lo, hi in zip(report.objectives, norm.lower, norm.upper, strict=True)
        )
        console.print(
            f"normalisation: min-max over the fronts and references of all {len(report.runs)} runs; "
            f"reference point at {norm.reference} on each normalised axis"
        )
        console.print(f"  bounds (oriented, higher is better): {bounds}")
    else:
        console.print(f"normalisation: {report.normalization.to_dict()['method']}")
    if report.plot:
        console.print(f"plot: {report.plot}")
    return 0


def member_model(merge: dict | None, path: list | None) -> str:
    """What a member runs: its merge, or a path over it; with no merge (an architecture-only run) the base model."""
    if not merge:
        return f"path of {len(path)} layers over the base" if path else "base model"
    return f"{merge['method']} + path of {len(path)} layers" if path else f"{merge['method']} merge"


def merge_weights(merge: dict | None) -> str:
    """A member's merge in a few characters: its coefficient per model (in the recipe's order of models), the
    density where it sparsifies and it is not 1, or how many blocks per model a ``block:N`` merge weighs."""
    if not merge or not merge.get("weights"):
        return ""
    weights = merge["weights"]  # numbers, or lists of numbers per block (ParetoFront.from_json checked)
    if any(isinstance(w, list) for w in weights):
        if len({len(w) if isinstance(w, list) else None for w in weights}) == 1:
            return f"{len(weights[0])} blocks per model"
        return " ".join(f"{len(w)} blocks" if isinstance(w, list) else f"{w:.2f}" for w in weights)
    shown = " ".join(f"{w:.2f}" for w in weights)
    density = merge.get("density")
    densities = density if isinstance(density, list) else [density] if density is not None else []
    if densities and not all(isinstance(d, int | float) and d == 1 for d in densities):
        if len(set(map(str, densities))) == 1 and isinstance(densities[0], int | float):
            shown += f", density {densities[0]:.2f}"
        else:
            shown += ", density " + " ".join(
                f"{d:.2f}" if isinstance(d, int | float) else "…" for d in densities
            )
    return shown
