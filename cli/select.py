"""`hm3 select RUN --preference 0.5,0.3,0.2 [--rollout] [--export DIR]`: serve a preference after the search."""

from __future__ import annotations

import argparse
import json
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hm3.search.select import Selection


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run directory of `hm3 merge`")
    parser.add_argument(
        "--preference",
        required=True,
        metavar="λ",
        help="comma-separated weights, one per objective in the recipe's order (normalised to sum to 1)",
    )
    parser.add_argument(
        "--rollout",
        action="store_true",
        help="a fresh path from the run's preference-conditioned policy (agent.mode: conditioned), scored "
        "and logged in the run, instead of the best front member",
    )
    parser.add_argument(
        "--export",
        metavar="DIR",
        help="also write the selection as a model folder (a member: as hm3 export does)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace a model folder hm3 wrote at --export (never an input)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the selection as one JSON object (preference, member, candidate, merge, path, scores, reward)",
    )


def preflight(args: argparse.Namespace) -> None:
    """The run folder is a run (no heavy import)."""
    from hm3.errors import UserError
    from hm3.store import require_run_directory

    if args.force and args.export is None:
        raise UserError(
            "--force replaces a model folder written by --export DIR; without --export it does nothing"
        )
    require_run_directory(args.run)


def run(args: argparse.Namespace) -> int:
    if args.rollout:  # loads the models and the policy, scores the rollout
        from hm3.search.rollout import roll_out

        chosen = roll_out(args.run, args.preference, export=args.export, force=args.force)
    else:  # reads three files
        from hm3.search.select import select_member

        chosen = select_member(args.run, args.preference)
        if args.export is not None:
            from hm3.search.export import export_member

            assert chosen.member_id is not None
            chosen.exported = export_member(args.run, chosen.member_id, args.export, force=args.force)
    if args.json:
        print(json.dumps(_as_json(chosen), indent=2))
        return 0
    lam = ", ".join(f"{v:.3f}" for v in chosen.preference)
    what = "rollout of the conditioned policy" if args.rollout else f"front member {chosen.member_id}"
    if chosen.below_start is not None:
        rolled, reward = chosen.below_start
        what = (
            f"the start of the rollout of the conditioned policy (its path {rolled} scored reward {reward:+.4f}, "
            "below its start)"
        )
    if args.rollout and chosen.member_id:
        what += f", front member {chosen.member_id}"
    path = chosen.candidate.path
    shape = "the merged model" if path is None else f"a path of {len(path)} layers over the merge"
    scores = ", ".join(f"{name} {value:.4g}" for name, value in chosen.scores.get("search", {}).items())
    held = chosen.scores.get("heldout")
    held_text = "" if not held else "; held out: " + ", ".join(f"{n} {v:.4g}" for n, v in held.items())
    print(
        f"λ = ({lam}): {what}, candidate {chosen.candidate.content_key()[:12]}, {shape}, reward {chosen.reward:+.4f}"
    )
    print(f"  search split: {scores}{held_text}")
    if chosen.note is not None:
        print(f"  note: {chosen.note}")
    if chosen.exported is not None:
        print(f"  written to {chosen.exported}")
    elif chosen.member_id:
        print(f"  export it: hm3 export {shlex.quote(str(args.run))} --member {chosen.member_id} --out DIR")
    return 0


def _as_json(chosen: Selection) -> dict[str, Any]:
    """What a script serving preferences needs: which candidate, what it is, how it scores."""
    candidate = chosen.candidate
    below = chosen.below_start
    return {
        "preference": chosen.preference,
        "member": chosen.member_id,
        "candidate": candidate.content_key()[:12],
        "merge": candidate.merge,
        "path": None if candidate.path is None else [list(step) for step in candidate.path],
        "alignment": candidate.alignment,
        "scores": chosen.scores,
        "reward": chosen.reward,
        "rollout_below_start": None if below is None else {"path": below[0].to_data(), "reward": below[1]},
        "note": chosen.note,
        "exported": None if chosen.exported is None else str(chosen.exported),
    }
