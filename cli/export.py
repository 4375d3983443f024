"""`hm3 export RUN --member ID --out DIR`: write a front member as a loadable model folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a finished run directory (hm3 merge or hm3 baseline)")
    parser.add_argument(
        "--member", required=True, metavar="ID", help="the member's id (a unique prefix will do)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--force", action="store_true", help="replace a model folder hm3 wrote at --out (never an input)"
    )


def preflight(args: argparse.Namespace) -> None:
    """The run folder is a run (no heavy import)."""
    from hm3.store import require_run_directory

    require_run_directory(args.run)


def run(args: argparse.Namespace) -> int:
    from hm3.front import ParetoFront
    from hm3.search.export import export_member, find_member
    from hm3.store import FRONT_FILE

    out = export_member(args.run, args.member, args.out, force=args.force)
    front = ParetoFront.from_json(json.loads((Path(args.run) / FRONT_FILE).read_text()))
    print(
        f"front member {find_member(front, args.member).id} written to {out}"
    )  # its whole id, not the prefix
    return 0
