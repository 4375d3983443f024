"""``hm3 zoo build``: build the toy model zoo (language or vision) that the demo, tests and benchmarks use."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``build`` action and its flags (argparse only; nothing heavy is imported here)."""
    actions = parser.add_subparsers(dest="zoo_action", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="Train a base model and conflicting specialists, write their tasks and scores.",
        description="Train a base model and conflicting specialists, write their tasks and scores. "
        "Output: ./zoo/<kind>-<family>-<size> (parent folder overridable with HM3_ZOO_DIR). "
        "A finished zoo is not rebuilt unless --force.",
    )
    build.add_argument(
        "--kind", choices=["lm", "vit"], required=True, help="language models or CLIP vision towers"
    )
    build.add_argument(
        "--family",
        choices=["llama", "qwen2", "clip"],
        default=None,
        help="architecture: llama or qwen2 for lm (default llama), clip for vit (the default)",
    )
    build.add_argument(
        "--size",
        choices=["micro", "small", "deep"],
        default="small",
        help="micro: tests; small: demo; deep (lm only): the small zoo 12 layers deep, for the path level",
    )
    build.add_argument("--out", default=None, help="target folder (default zoo/<kind>-<family>-<size>)")
    build.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    build.add_argument("--force", action="store_true", help="rebuild even if a finished zoo is there")


def run(args: argparse.Namespace) -> int:
    """Build (or find) the zoo and print where it is and its scores table."""
    from pathlib import Path

    from hm3.zoo import build_zoo

    folder = build_zoo(
        args.kind, family=args.family, size=args.size, out=args.out, seed=args.seed, force=args.force
    )
    print(Path(folder / "scores.md").read_text(), end="")
    print(f"zoo: {folder}")
    return 0
