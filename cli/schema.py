"""`hm3 schema`: the recipe format as JSON schema."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--indent", type=int, default=2, help="JSON indentation (default 2)")


def run(args: argparse.Namespace) -> int:
    import json

    from hm3.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=args.indent))
    return 0
