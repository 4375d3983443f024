"""`hm3 validate RECIPE`: check a recipe without loading any model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe YAML file(s)")


def preflight(args: argparse.Namespace) -> None:
    """The recipe file loads (no model, no heavy import)."""
    from hm3.recipe import load_recipe

    for path in args.recipes:
        load_recipe(path)


def run(args: argparse.Namespace) -> int:
    from hm3.validation import validate_recipe_file

    for path in args.recipes:
        report = validate_recipe_file(path)
        recipe = report.recipe
        shape = (
            f"{report.family}, {report.num_layers} layers" if report.family else "architecture not checked"
        )
        if recipe.himole is not None and not recipe.models:
            section = recipe.himole
            method = f"himole ({section.clusters} clusters x {section.experts_per_group} experts)"
            print(f"ok: {path}: base model ({shape}), {len(recipe.objectives)} objectives, {method}")
        else:
            print(
                f"ok: {path}: {len(recipe.models)} models ({shape}), {len(recipe.objectives)} objectives, "
                f"{recipe.parameter_level.method} + "
                f"{'path search' if recipe.architecture_level.enabled else 'no path search'}"
            )
        for line in report.not_checked:
            print(f"  not checked: {line}")
        for line in report.notes:
            print(f"  note: {line}")
        for line in report.runs_code:  # allowed by allow_task_code: true (else validation failed)
            print(f"  runs code: {line}")
    return 0
