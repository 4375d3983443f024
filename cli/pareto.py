"""`hm3 pareto RUN [--plot FILE] [--split heldout|search]`: the front of a run, its hypervolume, a plot."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory written by `hm3 merge` or `hm3 baseline`")
    parser.add_argument("--plot", metavar="FILE", help="write the plot to FILE (.png or .svg)")
    parser.add_argument(
        "--split",
        choices=["heldout", "search"],
        default="heldout",
        help="which scores to show (default: heldout, the data the search never saw)",
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hm3.pareto_report import pareto_report

    report = pareto_report(args.run, split=args.split, plot=args.plot)
    front = report.front
    table = Table(title=f"Pareto front of {args.run} ({report.split} split)")
    table.add_column("member", no_wrap=True)
    table.add_column("preference λ", no_wrap=True)
    table.add_column("model", no_wrap=True)
    for name in front.objectives:
        table.add_column(name, justify="right")
    for member in front.members:
        merge = member.merge["method"] if member.merge else "no merge"
        kind = f"{merge} + path of {len(member.path)} layers" if member.path else f"{merge} merge"
        table.add_row(
            member.id[:10],
            " ".join(f"{p:.2f}" for p in member.preference),
            kind,
            *(f"{member.scores[report.split][o]:.3f}" for o in front.objectives),
        )
    for reference in front.references:
        if report.split in reference.scores:
            table.add_row(
                reference.label,
                "",
                reference.kind,
                *(f"{reference.scores[report.split][o]:.3f}" for o in front.objectives),
                style="dim",
            )
    import sys

    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    hv = report.hypervolumes
    console.print(f"hypervolume ({report.split}): front {hv['front']:.4f}")
    for label, value in hv["references"].items():  # type: ignore[union-attr]
        console.print(f"  {label}: {value:.4f}")
    console.print(f"normalisation: {hv['normalization']['method']}")  # type: ignore[index]
    if report.plot:
        console.print(f"plot: {report.plot}")
    return 0
