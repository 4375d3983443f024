"""`hm3 pool RECIPE`: what the pool of a recipe holds, read from headers only."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE", help="recipe YAML file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from hm3.pool import ModelPool
    from hm3.recipe import load_recipe

    pool = ModelPool.from_recipe(load_recipe(args.recipe))
    facts = pool.describe()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    table = Table(
        title=f"{facts['family']} pool: {facts['layers']} layers, {facts['tensors']} tensors per model"
    )
    table.add_column("model")
    table.add_column("folder")
    for name, folder in facts["models"].items():  # type: ignore[union-attr]
        table.add_row(name, folder)
    console = Console()
    console.print(table)
    console.print(
        f"{facts['layer_tensors']} tensors per layer, {facts['shared_tensors']} shared; "
        f"{int(facts['bytes_per_model']) / 1e6:.1f} MB per model; vocabulary: {facts['vocab_size']}"
    )
    for name, rows in facts["vocab_mismatches"].items():  # type: ignore[union-attr]
        console.print(f"note: {name} has {rows} vocabulary rows; merged models keep {facts['vocab_size']}")
    return 0
