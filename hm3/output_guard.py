"""Where hm3 may write: never over, around or inside an input, and ``--force`` replaces only what hm3 wrote.

Every command that writes a folder (``hm3 merge --recipe/--mergekit``, ``hm3 baseline``, ``hm3 export``) asks
two questions before any work starts::

    check_no_overlap(out, [("input model", zoo / "base"), ("task file", zoo / "tasks" / "t.yaml")])
    replaced = check_replaceable(out, kind="run", force=True)   # None, or what --force will replace

* **Overlap.** The output may not be an input, contain one, or lie inside one, with or without ``--force``
  (paths compared after resolving symbolic links).
* **Replacing.** A non-empty output needs ``--force``, and even then only a folder hm3 itself wrote, of the
  same kind, is replaced: a run folder by a run, a model folder by a model. hm3 marks every folder it writes
  with :data:`MARKER`; a run folder from before the marker is recognised by its ``recipe.yaml`` and
  ``candidates.jsonl``, an exported routed model by its ``hm3_routing.json``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hm3.checkpoint import TOKENIZER_FILES
from hm3.errors import UserError
from hm3.folder_swap import TEMPORARY_FILE

if TYPE_CHECKING:
    from hm3.recipe import Recipe

MARKER = ".hm3-output.json"
"""The file hm3 writes into every folder it creates: ``{"written_by": "hm3", "kind": "run" | "model"}``."""

RUN_ENTRIES = frozenset(
    {
        MARKER,
        ".hm3.lock",  # hm3.run_lock.LOCK_FILE
        "recipe.yaml",  # hm3.store: RECIPE_FILE, CANDIDATES_FILE, FRONT_FILE, SUMMARY_FILE, LOG_FILE
        "candidates.jsonl",
        "front.json",
        "summary.json",
        "log.txt",
        "fingerprint.json",  # hm3.run_fingerprint.FINGERPRINT_FILE
        "preferences",  # hm3.search.run.PREFERENCES_DIR
        "policy",  # hm3.search.preference.POLICY_DIR
        "mergekit",  # hm3.search.finish: the front's mergekit configurations, MERGED_MODELS_DIR
        "merged",
        "baseline.json",  # hm3 baseline
    }
)
"""What hm3 writes at the top of a run folder (``tests/test_hostile_runs.py`` checks the list against the
modules' names); below these, everything is hm3's. Plots (``.png``, ``.svg``) at the top are taken as
``hm3 pareto RUN --plot``'s, as hm3 suggests writing them there, and files hm3 is writing whole
(:data:`hm3.folder_swap.TEMPORARY_FILE`) as its own."""
PLOT_SUFFIXES = (".png", ".svg")

Kind = Literal["run", "model"]
InputPath = tuple[str, "str | Path"]
"""``(what it is, path)``, e.g. ``("input model", "zoo/base")``: the label appears in the refusal."""


def check_no_overlap(out: str | Path, inputs: Iterable[InputPath]) -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs``.

    Raises:
        UserError: the first overlapping input, named, in one line.
    """
    out = Path(out)
    if out.is_symlink():
        raise UserError(f"output {out} is a symbolic link; give the folder it points to, or another path")
    target = _real(out)
    for label, path in inputs:
        source = _real(Path(path))
        if target == source:
            relation = "is"
        elif target in source.parents:
            relation = "contains"
        elif source in target.parents:
            relation = "lies inside"
        else:
            continue
        raise UserError(
            f"output {out} {relation} the {label} {path}; hm3 never writes over its inputs: choose another path"
        )


def check_output_file(path: str | Path, option: str, inputs: Iterable[InputPath], suffixes: str) -> None:
    """Refuse, before any work, an output file (``--json``, ``--plot``) hm3 may not or cannot write.

    Args:
        path: The file.
        option: The option that named it, for the message (``--json``).
        inputs: What the command reads (:func:`check_no_overlap`).
        suffixes: What the file should be, for the message (``.json``, ``.png or .svg``).

    Raises:
        UserError: it is a symbolic link (writing would overwrite what it points to), a folder, an input or
            inside one, or its nearest existing folder is a file or read-only.
    """
    path = Path(path)
    if path.is_symlink():
        raise UserError(f"{option} {path} is a symbolic link; name the file itself, or another path")
    check_no_overlap(path, inputs)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; name a {suffixes} file")
    folder = path.absolute().parent
    while not folder.exists() and not folder.is_symlink():
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{option} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: folder {folder} is not writable")


def check_replaceable(out: str | Path, kind: Kind, force: bool, resume_hint: str = "") -> str | None:
    """Whether ``out`` may receive a new ``kind`` folder; returns what ``--force`` will replace (or None).

    Args:
        out: The output folder.
        kind: What will be written there.
        force: The user passed ``--force``.
        resume_hint: Added to the refusal of an existing non-empty folder without ``--force``.

    Raises:
        UserError: ``out`` is a file, or a non-empty folder without ``force``, or (with ``force``) a folder
            hm3 did not write or one of the other kind.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    found = written_kind(out)
    if not force:
        if found == kind == "run" and resume_hint:
            raise UserError(f"run directory {out} exists; {resume_hint}")
        if found == kind:
            raise UserError(f"output folder {out} is not empty; pass --force to replace it")
        raise UserError(
            f"output folder {out} is not empty, and --force replaces only a {kind} folder hm3 wrote; "
            "choose another output folder"
        )
    if found is None:
        raise UserError(
            f"--force replaces only folders hm3 wrote, and {out} is not one (no {MARKER}); "
            "remove it yourself or choose another output folder"
        )
    if found != kind:
        raise UserError(
            f"{out} is a {found} folder hm3 wrote, not a {kind} folder; --force replaces a {kind} only "
            f"with a {kind}: choose another output folder"
        )
    added = foreign_files(out) if kind == "model" else foreign_run_entries(out)
    if added:
        shown = ", ".join(added[:3]) + (f" (and {len(added) - 3} more)" if len(added) > 3 else "")
        raise UserError(
            f"{out} is a {kind} folder hm3 wrote, but it now also holds {shown}; --force replaces only what hm3 "
            "wrote: move them out, or choose another output folder"
        )
    return f"the {kind} folder {out} (written by hm3)"


def announce_replacement(description: str | None) -> None:
    """Tell the user (on stderr) what ``--force`` is replacing."""
    if description:
        print(f"hm3: --force: replacing {description}", file=sys.stderr)


def mark(folder: Path, kind: Kind) -> None:
    """Write :data:`MARKER` into ``folder`` (a folder hm3 is writing). A model folder is marked once it is
    complete, and its marker lists its files: ``--force`` later replaces the folder only while it holds nothing
    else (:func:`foreign_files`); a run folder grows after it is marked."""
    folder = Path(folder)
    data: dict[str, object] = {"written_by": "hm3", "kind": kind}
    if kind == "model":
        data["files"] = files_under(folder)
    (folder / MARKER).write_text(json.dumps(data) + "\n")


EXPORT_FILE = re.compile(
    r"config\.json|generation_config\.json|README\.md|mergekit_config\.yml|hm3_(routing\.json|alignment\.safetensors)"
    r"|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|"
    + "|".join(map(re.escape, TOKENIZER_FILES))
)
"""The files a model folder of hm3's holds (``hm3.export``, ``hm3.routing.save``): what ``--force`` may replace
in one whose marker lists no files (written before the lists, or before the marker)."""


def foreign_files(folder: Path) -> list[str]:
    """Files under a model folder hm3 wrote that its marker does not list; for a folder whose marker lists
    none (an export from before the lists or the marker), every file that is not one an export writes
    (:data:`EXPORT_FILE`) at its top."""
    folder = Path(folder)
    try:
        listed = json.loads((folder / MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    present = set(files_under(folder)) - {MARKER}
    if isinstance(listed, list):
        return sorted(present - set(map(str, listed)))
    return sorted(name for name in present if not EXPORT_FILE.fullmatch(name))


_AGENT_FILES = r"(policy\.safetensors|agent\.json|summaries\.npy|ledger\.json|policy\.zip)"
RUN_SUBFOLDER_FILES: dict[str, re.Pattern[str]] = {
    "preferences": re.compile(r"p\d{3,}\.json"),  # hm3.search.run: one record per preference
    "policy": re.compile(rf"(p\d{{3,}}|conditioned|\.conditioned\.tmp)/{_AGENT_FILES}"),  # hm3.routing.ppo
    "mergekit": re.compile(r"[0-9a-f]+(\.merge)?\.yml"),  # hm3.search.finish: one or two per member
}
"""The files hm3 writes below a run's sub-folders, as paths relative to each (every other sub-folder of
:data:`RUN_ENTRIES` — ``merged/``, where a user writes models from ``mergekit/``'s configurations — holds
nothing of hm3's)."""


def foreign_run_entries(folder: Path) -> list[str]:
    """What a run folder holds that hm3 does not write there, sorted: at its top, names outside
    :data:`RUN_ENTRIES` (and plots); below, files outside :data:`RUN_SUBFOLDER_FILES` — a model or notes a user
    put in ``policy/``, a model written into ``merged/``. A run grows after it is marked, so its marker cannot
    list its files."""
    folder = Path(folder)
    found = [
        entry.name + ("/" if entry.is_dir() else "")
        for entry in folder.iterdir()
        if entry.name not in RUN_ENTRIES
        and not TEMPORARY_FILE.match(entry.name)
        and not (entry.suffix.lower() in PLOT_SUFFIXES and entry.is_file() and not entry.is_symlink())
    ]
    for name in sorted(RUN_ENTRIES):
        sub = folder / name
        if not sub.is_dir() or sub.is_symlink():
            found += [f"{name}/"] if sub.is_symlink() else []
            continue
        ours = RUN_SUBFOLDER_FILES.get(name)
        for path in sorted(sub.rglob("*")):
            relative = path.relative_to(sub).as_posix()
            if path.is_dir() and not path.is_symlink():
                continue
            if (
                ours is None
                or path.is_symlink()
                or not (ours.fullmatch(relative) or TEMPORARY_FILE.match(path.name))
            ):
                found.append(f"{name}/{relative}")
    return sorted(found)


def files_under(folder: Path) -> list[str]:
    """Every file under ``folder``, as sorted paths relative to it (what a marker or a zoo manifest lists)."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if not path.is_dir())


def written_kind(folder: Path) -> Kind | None:
    """``run`` or ``model`` when hm3 wrote ``folder``, else None."""
    folder = Path(folder)
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and data.get("written_by") == "hm3" and data.get("kind") in ("run", "model"):
        return data["kind"]
    if (folder / "recipe.yaml").is_file() and (folder / "candidates.jsonl").is_file():
        return "run"  # a run from before the marker
    if (folder / "hm3_routing.json").is_file():
        return "model"  # an export from before the marker
    return None


def recipe_inputs(recipe: Recipe) -> list[InputPath]:
    """Every local path a recipe reads: model folders, task files and their folders of YAMLs, the files a task
    YAML reads (its includes, ``!function`` code, local data: :func:`hm3.run_fingerprint.input_files`), data
    sets, heads."""
    from hm3.run_fingerprint import input_files

    found: list[InputPath] = []
    for ref in [recipe.base_model, *recipe.models]:
        if not ref.is_hub:
            found.append(("input model", ref.path))
    for objective in recipe.objectives:
        if objective.task_is_file:
            found.append(("task file", objective.task))  # type: ignore[arg-type]
        if objective.include_path:
            found.append(("task folder", objective.include_path))
        if objective.dataset is not None and objective.dataset.format != "hf":
            found.append(("data set", objective.dataset.path))
        if objective.head not in (None, "zeroshot"):
            found.append(("classification head", objective.head))  # type: ignore[arg-type]
    if recipe.himole is not None:
        for source in recipe.himole.train_data:
            for attribute in ("path", "zoo"):
                value = getattr(source, attribute, None)
                if isinstance(value, str):
                    found.append(("training data", value))
    return found + [("file a task reads", str(path)) for path in input_files(recipe)]


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))
