"""`hm3 schema`: the recipe format as JSON schema."""

from __future__ import annotations

import argparse

from hm3.errors import UserError

MAX_INDENT = 16
"""Widest ``--indent``: the schema nests deeply, and a huge indent would build gigabytes of spaces."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--indent", type=int, default=2, help=f"JSON indentation, 0 to {MAX_INDENT} spaces (default 2)"
    )


def run(args: argparse.Namespace) -> int:
    import json

    from hm3.recipe import recipe_json_schema

    if not 0 <= args.indent <= MAX_INDENT:
        raise UserError(f"--indent must be 0 to {MAX_INDENT} spaces, not {args.indent}")
    print(json.dumps(recipe_json_schema(), indent=args.indent))
    return 0
