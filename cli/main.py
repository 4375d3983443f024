"""Entry point of the `hm3` command: a table of subcommands, each imported only when it runs.

Every subcommand lives in its own module under ``cli/`` with two functions:
``add_arguments(parser)`` (argparse only, no heavy imports) and ``run(args) -> int``, and optionally
``preflight(args)``: the checks of what the user typed that need no heavy import (the recipe file loads, the run
folder is a run), run first, so that a typo is one line in a fraction of a second rather than after seconds of
importing torch, transformers and lm-eval.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line description). Order is the order `hm3 --help` shows.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("cli.validate", "Check a recipe; one line per problem, naming the field (exit 2 if bad)."),
    "schema": ("cli.schema", "Print the JSON schema of the recipe format."),
    "pool": ("cli.pool", "Inspect the models a recipe names: family, layers, shapes, compatibility."),
    "zoo": (
        "cli.zoo",
        "Build the toy model zoo (language or vision) that the demo, tests and benchmarks use.",
    ),
    "merge": (
        "cli.merge",
        "Run the HM3 search on a recipe (--recipe, --resume), or a mergekit config (--mergekit).",
    ),
    "baseline": (
        "cli.baseline",
        "Run a baseline (uniform, grid, nsga2, cmaes, evo_path, param_only, arch_only) in HM3's run format.",
    ),
    "pareto": (
        "cli.pareto",
        "Show a run's Pareto front: a table, hypervolumes, a plot (--plot FILE.png|.svg).",
    ),
    "export": ("cli.export", "Write a front member of a run as a model folder (Hugging Face checkpoint)."),
    "select": (
        "cli.select",
        "Serve a preference after the search: the best front member for it, or a conditioned policy's rollout.",
    ),
    "eval": (
        "cli.eval",
        "Score saved models on a recipe's objectives (search, held-out or all of each task's data).",
    ),
    "himole": (
        "cli.himole",
        "Train (train) or score (eval) a hierarchical mixture of LoRA experts on a recipe's himole: section.",
    ),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors in one line (``hm3 select: argument --preference: expected one argument``),
    exit code 2, like every other error a user can cause; argparse prints its usage text first."""

    def error(self, message: str):  # type: ignore[override]
        hint = ""
        if message.startswith("argument -") and message.endswith("expected one argument"):
            option = message.removeprefix("argument ").split(":")[0].split("/")[-1]
            hint = f" (a value that starts with '-' goes after '=': {option}=VALUE)"
        self.exit(2, f"{self.prog}: {message}{hint}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; subcommand modules are imported to add their own arguments."""
    parser = OneLineParser(
        prog="hm3",
        description="hm3: multi-objective model merging (HM3 parameter + architecture search, HiMoLE).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
    return parser


def _parser_for(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser, importing only the module of the subcommand being run (keeps --help instant)."""
    parser = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in SUBCOMMANDS:
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        module = importlib.import_module(SUBCOMMANDS[command][0])
        module.add_arguments(subparsers.choices[command])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `hm3` command line; returns the process exit code."""
    from hm3.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser_for(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from hm3.interrupts import remembered_interrupts

    try:
        with remembered_interrupts():  # from the first import on: a Ctrl-C swallowed there is raised again
            module = importlib.import_module(args._module)
            preflight = getattr(module, "preflight", None)
            if preflight is not None:
                preflight(args)
            return int(module.run(args) or 0)
    except UserError as error:
        for line in error.lines():
            print(f"hm3 {args.command}: {line}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"hm3 {args.command}: interrupted; nothing half-written was kept.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:  # the system refused a path the user gave (a file where a folder goes, no space)
        print(f"hm3 {args.command}: {_os_error_line(error)}", file=sys.stderr)
        return UserError.exit_code


def _os_error_line(error: OSError) -> str:
    """``No space left on device: /data/run`` rather than a traceback."""
    if error.strerror and error.filename is not None:
        return f"{error.strerror}: {error.filename}"
    return str(error) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
