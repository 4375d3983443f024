"""`hm3 merge --mergekit CONFIG.yml --out DIR`: run a mergekit configuration with hm3's merge engine."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mergekit", metavar="CONFIG", required=True, help="mergekit YAML configuration")
    parser.add_argument(
        "--out", metavar="DIR", required=True, help="output folder (a Hugging Face checkpoint)"
    )
    parser.add_argument("--shard-size", default="5GB", help="largest safetensors shard (default: 5GB)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from hm3.merge.mergekit_run import run_mergekit_config

    out = run_mergekit_config(
        args.mergekit, args.out, shard_size=args.shard_size, force=args.force, show_progress=not args.quiet
    )
    print(f"merged model written to {out}")
    return 0
