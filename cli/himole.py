"""`hm3 himole train|eval`: a hierarchical mixture of LoRA experts, and its baselines, on a recipe's `himole:`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hm3.errors import UserError
from hm3.output_guard import InputPath, check_no_overlap, check_output_file, recipe_inputs

if TYPE_CHECKING:
    from hm3.recipe import Recipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser(
        "train",
        help="train an adapter (two-stage HiMoLE, or a baseline) and save it in one folder",
        description="Cluster the training data, train stage 1 (one LoRA per cluster) and stage 2 (gates and "
        "experts jointly), keep the best validation checkpoint, save experts + gates + centroids.",
    )
    train.add_argument(
        "--recipe", required=True, metavar="RECIPE", help="recipe YAML file with a himole: section"
    )
    train.add_argument(
        "--out", metavar="DIR", help="adapter folder to write (default: runs/himole-<recipe>-<variant>)"
    )
    train.add_argument(
        "--variant",
        choices=("himole", "lora", "moe-lora", "hydra-lora"),
        default="himole",
        help="himole (default); lora: one LoRA with matched parameters; moe-lora: token-level gating only; "
        "hydra-lora: token-level gating over B heads that share one A (HydraLoRA-style)",
    )
    train.add_argument(
        "--no-two-stage",
        dest="two_stage",
        action="store_false",
        help="HiMoLE ablation: train experts and gates jointly from scratch (no clustering, no stage 1)",
    )
    train.add_argument("--seed", type=int, help="override the seed of the recipe")
    evaluate = actions.add_parser(
        "eval",
        help="score a saved adapter (or the base model) on the recipe's ID and OOD objectives",
        description="Score an adapter folder from `hm3 himole train` on every objective of the recipe.",
    )
    evaluate.add_argument(
        "--recipe", required=True, metavar="RECIPE", help="recipe YAML file with a himole: section"
    )
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", metavar="DIR", help="adapter folder written by `hm3 himole train`")
    source.add_argument("--base", action="store_true", help="score the base model alone (no adapter)")
    evaluate.add_argument(
        "--split",
        choices=("search", "heldout", "all"),
        default="all",
        help="test documents to score (default all)",
    )
    evaluate.add_argument("--limit", type=int, metavar="N", help="score at most N documents per objective")
    evaluate.add_argument("--json", metavar="FILE", help="also write the scores as JSON to FILE")
    tasks = actions.add_parser(
        "tasks",
        help="write a language zoo's covariate-shifted test sets (ID: common symbols, OOD: rare ones)",
        description="Write the test sets and lm-eval task YAMLs of hm3.himole.shifted into ZOO/himole_tasks: "
        "each zoo task with its symbols drawn mostly from a common half (toy_<task>_common, the ID test) or "
        "mostly from the rare half (toy_<task>_rare, the OOD test).",
    )
    tasks.add_argument(
        "--zoo", required=True, metavar="DIR", help="a language zoo folder (hm3 zoo build --kind lm)"
    )


def preflight(args: argparse.Namespace) -> None:
    """The recipe file loads, and no output lies over an input (no model, no heavy import)."""
    from hm3.recipe import is_seed, load_recipe

    if getattr(args, "recipe", None) is None:
        return
    recipe = load_recipe(args.recipe)
    inputs = _inputs(args.recipe, recipe)
    if args.action == "train" and args.seed is not None and not is_seed(args.seed):
        raise UserError(f"--seed must be an integer in [0, 2^31) like the recipe's seed, not {args.seed}")
    if args.action == "train":
        check_no_overlap(_train_out(args), inputs)  # train_himole itself checks only the base model
    elif args.action == "eval" and args.json:
        adapter = [] if args.base else [("adapter folder", args.adapter)]
        check_output_file(Path(args.json), "--json", [*inputs, *adapter], ".json")


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "eval": _evaluate, "tasks": _tasks}[args.action](args)


def _tasks(args: argparse.Namespace) -> int:
    from hm3.himole.shifted import write_shifted_tasks

    written = write_shifted_tasks(Path(args.zoo))
    print(f"wrote {len(written)} task YAMLs and their test sets to {written[0].parent}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hm3.himole.pipeline import TrainRequest, train_himole
    from hm3.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    out = _train_out(args)
    manifest = train_himole(
        recipe, TrainRequest(out, args.variant, args.two_stage, args.seed), Console(stderr=True)
    )
    print(
        f"saved {out}: {manifest['variant']}{'' if manifest['two_stage'] else ' (one stage)'}, "
        f"{manifest['trainable_parameters']} trainable parameters, "
        f"validation loss {manifest['validation_loss']:.4f}, {manifest['train_seconds']} s"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hm3.himole.evaluation import evaluate_adapter
    from hm3.recipe import load_recipe

    if args.limit is not None and args.limit <= 0:
        raise UserError(f"--limit must be a positive number of documents, not {args.limit}")
    recipe = load_recipe(args.recipe)
    adapter = None if args.base else Path(args.adapter)
    with Console(stderr=True).status(
        f"scoring {'the base model' if adapter is None else adapter} on the {args.split} split"
    ):
        report = evaluate_adapter(recipe, adapter, split=args.split, limit=args.limit)
    table = Table(
        title=f"{report.label}, {args.split} split",
        caption=f"{report.trainable_parameters} trainable parameters"
        + ("" if report.max_violation is None else f"; expert load MaxVio {report.max_violation:.3f} (ID)"),
    )
    table.add_column("objective")
    table.add_column("kind")
    table.add_column(f"score {'↑' if report.higher_is_better else '↓'}", justify="right")
    table.add_column("answer loss ↓", justify="right")
    for name, value in report.scores.items():
        table.add_row(name, "OOD" if name in report.ood else "ID", f"{value:.4f}", _cell(report.losses[name]))
    for kind, ood in (("ID mean", False), ("OOD mean", True)):
        value, loss = report.mean(ood), report.mean(ood, of="losses")
        if value is not None:
            table.add_row(
                f"[bold]{kind}[/bold]", "", f"[bold]{value:.4f}[/bold]", f"[bold]{_cell(loss)}[/bold]"
            )
    Console().print(table)
    if args.json:
        _write_json(Path(args.json), report.to_json())
    return 0


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _train_out(args: argparse.Namespace) -> Path:
    suffix = args.variant + ("" if args.two_stage else "-one-stage")
    return Path(args.out or f"runs/himole-{Path(args.recipe).stem}-{suffix}")


def _inputs(recipe_file: str, recipe: Recipe) -> list[InputPath]:
    """What a himole command reads: the recipe file and every path in it (models, tasks, training data)."""
    return [("recipe file", recipe_file), *recipe_inputs(recipe)]


def _write_json(target: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` whole (:func:`hm3.folder_swap.replace_file`: a link there is replaced, never followed;
    nothing is left behind if that fails)."""
    from hm3.folder_swap import replace_file

    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2) + "\n"
    try:
        replace_file(target, lambda handle: handle.write(text.encode("utf-8")))
    except OSError as error:
        raise UserError(f"cannot write --json {target}: {error.strerror or error}") from error
