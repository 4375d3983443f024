"""`hm3 baseline --recipe R --method M [--budget B] [--out RUN]`: a baseline search in HM3's run format;
`hm3 baseline --resume RUN` continues one that was killed or interrupted, scoring no logged candidate again."""

from __future__ import annotations

import argparse
import shlex
import sys

from cli import counted

METHOD_NAMES = ("uniform", "grid", "nsga2", "cmaes", "evo_path", "param_only", "arch_only")
NEW_RUN_FLAGS = ("method", "budget", "out")
"""Flags of a new run (and ``--force``): ``--resume`` takes the run's own method, budget and folder."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--recipe", metavar="RECIPE", help="the recipe (tasks, models, split)")
    source.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the baseline run in this directory with its method and budget (logged candidates are "
        "not scored again)",
    )
    parser.add_argument("--method", choices=METHOD_NAMES, help="which baseline (required with --recipe)")
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="full scorings of the search split the method may spend, one per distinct candidate (default: "
        "what HM3 spends on the recipe)",
    )
    parser.add_argument("--out", metavar="RUN", help="run directory (default: runs/<recipe name>-<method>)")
    parser.add_argument(
        "--force", action="store_true", help="replace the run hm3 wrote at --out (never an input)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def preflight(args: argparse.Namespace) -> None:
    """The flags fit together, and the recipe file loads or the run to resume is a run (no model, no heavy
    import)."""
    from hm3.errors import UserError
    from hm3.recipe import load_recipe
    from hm3.store import require_run_directory

    if args.resume:
        given = [f"--{flag}" for flag in NEW_RUN_FLAGS if getattr(args, flag) is not None]
        given += ["--force"] if args.force else []
        if given:
            raise UserError(
                f"--resume RUN continues RUN with its own method, budget and folder; drop {' and '.join(given)}"
            )
        require_run_directory(args.resume)
        return
    if args.method is None:
        raise UserError(f"--recipe needs --method (one of {', '.join(METHOD_NAMES)})")
    load_recipe(args.recipe)


def run(args: argparse.Namespace) -> int:
    from hm3.baselines import open_baseline_run, reopen_baseline_run, run_baseline
    from hm3.search.progress import SearchProgress

    inputs = None
    if args.resume:
        store, recipe, method, budget = reopen_baseline_run(args.resume)
    else:
        method, budget = args.method, args.budget
        store, recipe, inputs = open_baseline_run(args.recipe, method, budget, args.out, args.force)
    folder = store.directory
    try:
        with store, SearchProgress(enabled=not args.quiet) as progress:
            progress.print(f"run directory: {folder}")
            summary = run_baseline(recipe, store, method, budget, progress, inputs)
    except KeyboardInterrupt:  # the run exists and every scored candidate is in it: say how to go on
        print(
            "hm3 baseline: interrupted; the candidates scored so far are kept, continue the run with: "
            f"hm3 baseline --resume {shlex.quote(str(folder))}",
            file=sys.stderr,
        )
        return 130
    heldout = summary["heldout"]
    print(
        f"{method}: {summary['budget_used']:g} of {summary['budget']} evaluations (full scorings of the search "
        f"split), {counted(summary['front_members'], 'front member')}; held-out hypervolume {heldout['front']:.4f}"
    )
    plot = shlex.quote(f"{folder}/front.png")
    print(f"see the front: hm3 pareto {shlex.quote(str(folder))} --plot {plot}")
    return 0
