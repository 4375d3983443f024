"""`hm3 baseline --recipe R --method M [--budget B] [--out RUN]`: a baseline search in HM3's run format."""

from __future__ import annotations

import argparse
import shlex

from cli import counted

METHOD_NAMES = ("uniform", "grid", "nsga2", "cmaes", "evo_path", "param_only", "arch_only")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", metavar="RECIPE", required=True, help="the recipe (tasks, models, split)")
    parser.add_argument("--method", required=True, choices=METHOD_NAMES, help="which baseline")
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="distinct candidates scored on the search split (default: what HM3 spends on the recipe)",
    )
    parser.add_argument("--out", metavar="RUN", help="run directory (default: runs/<recipe name>-<method>)")
    parser.add_argument(
        "--force", action="store_true", help="replace the run hm3 wrote at --out (never an input)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def preflight(args: argparse.Namespace) -> None:
    """The recipe file loads (no model, no heavy import)."""
    from hm3.recipe import load_recipe

    load_recipe(args.recipe)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hm3.baselines import run_baseline
    from hm3.errors import UserError
    from hm3.search.progress import SearchProgress
    from hm3.search.run import start_search

    if args.budget is not None and args.budget < 1:
        raise UserError(f"--budget must be at least 1, not {args.budget}")
    default = Path("runs") / f"{Path(args.recipe).stem}-{args.method}"
    store, recipe, inputs = start_search(args.recipe, args.out, force=args.force, default_folder=default)
    store.write_json("baseline.json", {"method": args.method, "budget": args.budget})
    with store, SearchProgress(enabled=not args.quiet) as progress:
        progress.print(f"run directory: {store.directory}")
        summary = run_baseline(recipe, store, args.method, args.budget, progress, inputs)
    heldout = summary["heldout"]
    print(
        f"{args.method}: {summary['evaluations_used']} of {summary['budget']} evaluations, "
        f"{counted(summary['front_members'], 'front member')}; held-out hypervolume {heldout['front']:.4f}"
    )
    run = store.directory
    print(f"see the front: hm3 pareto {shlex.quote(str(run))} --plot {shlex.quote(f'{run}/front.png')}")
    return 0
