"""`hm3 merge`: the HM3 search of a recipe (``--recipe``), or a mergekit configuration (``--mergekit``).

* ``hm3 merge --recipe R [--out RUN] [--force]`` searches and writes a run directory (see :mod:`hm3.store`).
* ``hm3 merge --resume RUN`` finishes an interrupted run without re-scoring any logged candidate (an interrupted
  search — Ctrl-C — prints that command; a run whose model weights changed is refused with exit code 3).
* ``hm3 merge --mergekit CONFIG.yml --out DIR`` writes a Hugging Face checkpoint with hm3's merge engine.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from cli import counted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--recipe", metavar="RECIPE", help="search: run HM3 on this recipe")
    source.add_argument("--resume", metavar="RUN", help="search: finish the run in this directory")
    source.add_argument("--mergekit", metavar="CONFIG", help="run this mergekit YAML configuration")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="run directory (--recipe; default: the recipe's output.dir, else runs/<recipe name>), "
        "or the output checkpoint folder (--mergekit, required)",
    )
    parser.add_argument(
        "--shard-size",
        help="--mergekit: largest safetensors shard (default: 5GB; a search's exports take the recipe's "
        "output.shard_size)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the run (--recipe) or model folder (--mergekit) hm3 wrote at --out; never an input",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="score the upper level's batches of merges (parameter_level.batch) and search the preferences on "
        "Ray: local (a cluster on this machine), auto, or HOST:PORT (default: the recipe's "
        "distributed.ray_address; none: in this process)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="Ray workers (default: one per cluster CPU; no more than a batch or the preferences use)",
    )


def preflight(args: argparse.Namespace) -> None:
    """The recipe file loads, or the run to resume is a run of ``hm3 merge`` (no model, no heavy import)."""
    from hm3.recipe import load_recipe
    from hm3.store import require_run_directory

    if args.recipe and not args.mergekit:
        load_recipe(args.recipe)
    elif args.resume:
        _refuse_a_baseline_run(require_run_directory(args.resume))


def _refuse_a_baseline_run(run) -> None:
    """``hm3 merge --resume`` on a run ``hm3 baseline`` wrote would search it again as HM3 and overwrite the
    baseline's front and summary with a mix of both methods' candidates."""
    import json

    from cli.baseline import METHOD_NAMES
    from hm3.errors import UserError

    for name in ("baseline.json", "summary.json"):
        try:
            method = json.loads((run / name).read_text()).get("method")
        except (OSError, ValueError, AttributeError):
            continue
        if method in METHOD_NAMES:
            raise UserError(
                f"{run} is a run of hm3 baseline --method {method}; hm3 merge --resume continues only runs of "
                "hm3 merge: run the baseline again with hm3 baseline ... --force, or start HM3 in another folder"
            )


def run(args: argparse.Namespace) -> int:
    from hm3.errors import UserError

    _refuse_flags_that_would_not_apply(args)
    if args.mergekit:
        if not args.out:
            raise UserError("--mergekit needs --out DIR (the folder of the merged checkpoint)")
        from hm3.merge.mergekit_run import run_mergekit_config

        out = run_mergekit_config(
            args.mergekit,
            args.out,
            shard_size=args.shard_size or "5GB",
            force=args.force,
            show_progress=not args.quiet,
        )
        print(f"merged model written to {out}")
        return 0
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, not {args.workers}")
    return _search(args)


def _refuse_flags_that_would_not_apply(args: argparse.Namespace) -> None:
    """Each flag applies to one use of ``hm3 merge``; given with another, it would be silently ignored."""
    from hm3.errors import UserError

    if args.mergekit:
        search_only = [flag for flag in ("ray_address", "workers") if getattr(args, flag) is not None]
        if search_only:
            flags = " and ".join("--" + flag.replace("_", "-") for flag in search_only)
            verb = "apply" if len(search_only) > 1 else "applies"
            raise UserError(f"{flags} {verb} to a search (--recipe, --resume), not to --mergekit")
        return
    if args.shard_size is not None:
        raise UserError(
            "--shard-size applies to --mergekit; a search writes no checkpoint (hm3 export takes the recipe's "
            "output.shard_size)"
        )
    if args.resume and args.out:
        raise UserError("--resume RUN continues RUN in place; drop --out")
    if args.resume and args.force:
        raise UserError(
            "--resume RUN continues RUN in place and replaces nothing; drop --force (to start over: "
            "hm3 merge --recipe R --out RUN --force)"
        )


def _search(args: argparse.Namespace) -> int:
    from hm3.search.progress import SearchProgress
    from hm3.search.run import run_search, start_search
    from hm3.store import RunStore

    inputs = None
    if args.resume:
        store, recipe = RunStore.resume(args.resume)
    else:
        store, recipe, inputs = start_search(args.recipe, args.out, force=args.force)
    try:
        with store, SearchProgress(enabled=not args.quiet) as progress:
            progress.print(f"run directory: {store.directory}")
            summary = run_search(
                recipe, store, progress, ray_address=args.ray_address, workers=args.workers, inputs=inputs
            )
    except KeyboardInterrupt:  # the run exists and every scored candidate is in it: say how to go on
        print(
            f"hm3 merge: interrupted; the candidates scored so far are kept, continue the search with: "
            f"hm3 merge --resume {shlex.quote(str(store.directory))}",
            file=sys.stderr,
        )
        return 130
    _report(store.directory, summary)
    return 0


def _report(run: object, summary: dict) -> None:
    heldout = summary["heldout"]
    margins = heldout["margin_over"]
    members, candidates = (
        counted(summary["front_members"], "member"),
        counted(summary["distinct_candidates"], "candidate"),
    )
    print(f"front: {members} from {candidates} over {counted(summary['preferences'], 'preference')}")
    print(f"held-out hypervolume: front {heldout['front']:.4f}")
    for label, value in heldout["references"].items():
        print(f"  {label:<24} {value:.4f}   front {margins[label]:+.4f}")
    print(f"see the front: hm3 pareto {shlex.quote(str(run))} --plot {shlex.quote(f'{run}/front.png')}")
    for note in summary.get("notes", []):
        print(f"note: {note}")
