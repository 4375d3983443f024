"""`hm3 eval --recipe R --model DIR [--model DIR ...]`: score saved models on a recipe's objectives."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, metavar="RECIPE", help="recipe YAML file (its objectives)")
    parser.add_argument(
        "--model", action="append", default=[], metavar="DIR", help="saved model folder (repeatable)"
    )
    parser.add_argument("--models", nargs="+", default=[], metavar="DIR", help="more saved model folders")
    parser.add_argument(
        "--split",
        choices=("search", "heldout", "all"),
        default="heldout",
        help="documents to score: the search 70%%, the held-out 30%% (default) or all",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def preflight(args: argparse.Namespace) -> None:
    """The recipe file loads (no model, no heavy import)."""
    from hm3.recipe import load_recipe

    load_recipe(args.recipe)


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from hm3.errors import UserError
    from hm3.evaluate import score_saved_models
    from hm3.evaluate.saved import folder_labels

    folders = [*args.model, *args.models]
    if not folders:
        raise UserError("give at least one --model DIR")
    console = Console(stderr=True)
    with console.status(f"scoring {len(folders)} model(s) on the {args.split} split"):
        result = score_saved_models(args.recipe, folders, split=args.split)
    if args.json:
        print(
            json.dumps({"split": result.split, "metrics": result.metrics, "scores": result.scores}, indent=2)
        )
        return 0
    table = Table(title=f"scores on the {result.split} split")
    table.add_column("objective")
    table.add_column("metric")
    table.add_column("docs", justify="right")
    for label in folder_labels(list(result.scores)).values():
        table.add_column(label, justify="right")
    for name, metric in result.metrics.items():
        arrow = "↑" if result.higher_is_better[name] else "↓"
        cells = [f"{scores[name]:.4f}" for scores in result.scores.values()]
        table.add_row(name, f"{metric} {arrow}", str(result.documents[name]), *cells)
    Console().print(table)
    return 0
