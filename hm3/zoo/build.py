"""Build a zoo: train the base and the specialists, write data, tasks, scores, then the manifest, atomically.

The build runs in a hidden sibling folder (``.<name>.building-<pid>``) and is swapped into place
(:func:`hm3.folder_swap.swap_into_place`) only once ``zoo.json`` is written, so an interrupted build never leaves a
folder that looks finished, and a crash during the swap leaves the old zoo or the new one. ``zoo.json`` lists every
file the build wrote (``files``) and its checksum (``checksums``): a zoo is reused only while its files are
those (:mod:`hm3.zoo.integrity`), and a rebuild replaces only those (and what other hm3 commands derive from the zoo:
:data:`DERIVED_FOLDERS`), never a file a user put into the zoo. The training runs
in a child process with pinned CPU numerics (:mod:`hm3.zoo.numerics`), so a seed gives bit-identical
weights on every Intel CPU with AVX2 (AMD CPUs build others); ``zoo.json`` and ``scores.md`` carry their fingerprint
(:mod:`hm3.zoo.fingerprint`).

Example::

    from hm3.zoo import ensure_zoo
    zoo = ensure_zoo("lm", family="qwen2", size="micro")   # builds once, then returns the folder
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from rich.console import Console

from hm3.errors import UserError
from hm3.folder_swap import clear_leftovers, swap_into_place
from hm3.output_guard import files_under
from hm3.zoo.config import MANIFEST, ZooConfig, build_identity, is_current, manifest_matches, read_manifest
from hm3.zoo.fingerprint import short
from hm3.zoo.integrity import file_checksums, first_difference
from hm3.zoo.lm_build import build_lm_zoo
from hm3.zoo.lm_tasks import TASKS
from hm3.zoo.numerics import current_numerics, portable_environment
from hm3.zoo.progress import quiet_libraries
from hm3.zoo.staging import Staging, locked_staging_folder, remove_dead_builds
from hm3.zoo.vit_build import build_vit_zoo

CHILD_ERROR = ".build-error"
"""File in the staging folder where the build's child process leaves a user error for its parent."""

THREADS = 1
"""Torch threads during a build: one is fastest for models this small, and two threads on a busy 2-core
machine are up to 40x slower (OpenMP spin-waiting); results are bit-identical for a given thread count."""


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch, force deterministic algorithms and a fixed thread count; restore after."""
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


TOP_FILES = frozenset({MANIFEST, "scores.md", "scores.json"})
"""The files a build writes at the top of a zoo; its tasks' files and its models' folders are in the manifest."""
CHECKPOINT_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "head.safetensors",
        "head.json",
    }
)
"""The files a build saves into a model's folder (a transformers checkpoint, a vision head): how a zoo built
before the manifest listed its ``files`` tells them from a user's."""


@dataclass(frozen=True)
class DerivedFolder:
    """A folder another hm3 command writes into a zoo from the zoo's own settings and folder."""

    name: str
    files: re.Pattern[str]
    command: str


_SHIFTED = rf"toy_(?:{'|'.join(TASKS)})_(?:common|rare)\.(?:jsonl|yaml)"
DERIVED_FOLDERS = (
    # hm3.himole.shifted.write_shifted_tasks (which imports hm3.zoo, so its names are repeated here; a test
    # holds them equal): test sets drawn from the zoo's seed and size, YAMLs naming the zoo's folder
    DerivedFolder("himole_tasks", re.compile(rf"{_SHIFTED}|\.{_SHIFTED}\.tmp"), "hm3 himole tasks --zoo"),
)
"""What a rebuild replaces besides the build's own files: derived from the replaced zoo (its seed, size, folder),
it is removed with it, and the command writes it again for the new one."""


def foreign_files(target: Path, manifest: dict[str, Any]) -> list[str]:
    """The files and folders under the zoo ``target`` that neither its build nor a :data:`DERIVED_FOLDERS`
    command wrote (a folder is named with a trailing ``/``, its contents not listed).

    What the build wrote is the manifest's ``files``; a zoo built before the manifest listed them holds
    :data:`TOP_FILES`, its tasks' files (the manifest names them) and, in its models' folders,
    :data:`CHECKPOINT_FILES`.
    """
    listed = manifest.get("files")
    models = {str(model.get("path")) for model in manifest.get("models", [])}
    if listed is not None:
        files = {MANIFEST, *map(str, listed)}
    else:
        tasks = manifest.get("tasks", [])
        files = set(TOP_FILES) | {
            str(task[key]) for task in tasks for key in ("yaml", "data", "head") if key in task
        }
    derived = {folder.name: folder for folder in DERIVED_FOLDERS}
    folders = {str(parent) for file in files for parent in PurePosixPath(file).parents} | set(derived)
    if listed is None:
        folders |= models | {"tasks", "data"}

    def written(path: PurePosixPath) -> bool:
        if len(path.parts) == 2 and path.parts[0] in derived:
            return bool(derived[path.parts[0]].files.fullmatch(path.name))
        if listed is None and str(path.parent) in models and path.name in CHECKPOINT_FILES:
            return True
        return str(path) in files

    foreign = []
    for root, subfolders, names in os.walk(target):
        here = PurePosixPath(Path(root).relative_to(target).as_posix())
        for name in sorted(subfolders):
            if str(here / name) not in folders:
                foreign.append(f"{here / name}/")
                subfolders.remove(name)  # named as a whole: nothing in it was written by hm3
        foreign += [str(here / name) for name in sorted(names) if not written(here / name)]
    return sorted(foreign)


def _check_replaceable(target: Path, manifest: dict | None) -> None:
    """Refuse, before any training, a ``target`` whose contents hm3 did not write: a build replaces only an
    empty folder or a zoo of its own (``--force`` or not), never a user's folder or files put into a zoo
    (:func:`foreign_files`: every file below the zoo is checked).

    Raises:
        UserError: ``target`` is a file, a non-empty folder without a zoo manifest, or a zoo holding files
            the build did not write.
    """
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise UserError(f"{target} exists and is not a folder; pass --out elsewhere")
    if not any(target.iterdir()):
        return
    if manifest is None:
        raise UserError(
            f"{target} is not empty and holds no zoo hm3 built (no {MANIFEST}); hm3 never replaces it, "
            "--force or not: pass --out elsewhere"
        )
    foreign = foreign_files(target, manifest)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" (and {len(foreign) - 3} more)" if len(foreign) > 3 else "")
        raise UserError(
            f"{target} holds what the zoo build did not write ({shown}); hm3 will not replace it: move them "
            "out, or pass --out elsewhere"
        )


def _writable_parent(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the zoo folder {out.parent}: {error.strerror or error}") from error
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"the zoo folder {out.parent} is not writable; pass --out or set HM3_ZOO_DIR")


def build_zoo(
    kind: str,
    family: str | None = "llama",
    size: str = "small",
    out: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
    console: Console | None = None,
    in_process: bool = False,
) -> Path:
    """Build a zoo (or find it built) and return its folder.

    Args:
        kind: ``lm`` or ``vit``.
        family: ``llama`` or ``qwen2`` for ``lm`` (``None``: llama). A vision zoo is always ``clip``; the
            default ``llama`` (or ``None``) is read as ``clip`` there, anything else is an error.
        size: ``micro``, ``small`` or ``deep`` (language only).
        out: Target folder; default ``$HM3_ZOO_DIR/<kind>-<family>-<size>`` or ``./zoo/...``.
        seed: Seed of the whole build.
        force: Rebuild even when a finished zoo is already there.
        console: Where progress goes (default: a rich console on stderr).
        in_process: Train in this process instead of a child with portable numerics: the weights then follow
            this process's CPU kernels (for tests of the build's bookkeeping, and the child itself).

    Raises:
        UserError: Bad kind/family/size, an unwritable target, a finished zoo of another kind, family, size or
            seed at ``out``, or one whose files are not those its build wrote (edited, deleted).
    """
    if kind == "vit" and family == "llama":
        family = None
    zoo = ZooConfig.checked(kind, family, size, seed)
    target = Path(out) if out is not None else zoo.default_dir()
    console = console or Console(stderr=True)
    clear_leftovers(target)  # a zoo whose swap was killed half-way comes back
    remove_dead_builds(target)
    manifest = read_manifest(target)
    if (
        manifest is not None
        and not force
        and manifest_matches(manifest, zoo)
        and not is_current(manifest, zoo)
    ):
        console.print(
            f"zoo {zoo.name} at {target} was built by another builder version or preset; rebuilding it"
        )
        force = True
    if manifest is not None and not force:
        if not manifest_matches(manifest, zoo):
            raise UserError(
                f"{target} holds a zoo built as {manifest.get('kind')}-{manifest.get('family')}-"
                f"{manifest.get('size')} seed {manifest.get('seed')}; pass --force to replace it or --out elsewhere"
            )
        _check_unchanged(target, manifest, zoo)
        console.print(f"zoo {zoo.name} (seed {seed}) already built at {target}")
        return target
    _check_replaceable(target, manifest)
    _writable_parent(target)
    started = time.perf_counter()
    with locked_staging_folder(target) as staging:
        if in_process:
            build_into(zoo, staging.folder, target, console)
        else:
            _build_in_child(zoo, staging, target, quiet=console.quiet)
        removed = _move_into_place(staging.folder, target, force)
    for folder in removed:
        console.print(
            f"removed {target / folder.name} with the zoo it was derived from; `{folder.command} {target}` "
            "writes it for the new one",
            soft_wrap=True,
        )
    fingerprint = short(read_manifest(target)["fingerprint"])
    console.print(
        f"zoo {zoo.name} built at {target} in {time.perf_counter() - started:.0f} s (weights {fingerprint})"
    )
    return target


def build_into(zoo: ZooConfig, staging: Path, target: Path, console: Console) -> None:
    """Train and score every model of ``zoo`` into ``staging`` and write its manifest, in this process."""
    started = time.perf_counter()
    with deterministic(zoo.seed), quiet_libraries():
        numerics = current_numerics()
        if zoo.kind == "lm":
            contents = build_lm_zoo(zoo, staging, target, console)
        else:
            contents = build_vit_zoo(zoo, staging, console)
    _write_manifest(staging, zoo, {**contents, "numerics": numerics}, time.perf_counter() - started)


def _build_in_child(zoo: ZooConfig, staging: Staging, target: Path, quiet: bool) -> None:
    """Run :func:`build_into` in a child process started with the portable numerics' environment.

    The child shares this terminal, so its progress bars show; Ctrl-C reaches both, and the caller removes the
    staging folder. The child holds the staging folder's lock with this process and dies with it
    (:mod:`hm3.zoo.staging`). A user error in the child comes back through :data:`CHILD_ERROR` and is raised
    here.
    """
    command = [
        sys.executable, "-m", "hm3.zoo.child", zoo.kind, zoo.family, zoo.size, str(zoo.seed),
        str(staging.folder), str(target), str(os.getpid()),
    ]  # fmt: skip
    if quiet:
        command.append("--quiet")
    code = subprocess.run(
        command, env=portable_environment(), pass_fds=(staging.lock,), check=False
    ).returncode
    if code == 0:
        return
    if code < 0 or code == 130:
        raise KeyboardInterrupt
    if (staging.folder / CHILD_ERROR).is_file():
        raise UserError((staging.folder / CHILD_ERROR).read_text().strip())
    raise RuntimeError(f"the build process of zoo {zoo.name} failed (exit {code}; its traceback is above)")


def ensure_zoo(
    kind: str, family: str | None = "llama", size: str = "small", out: str | Path | None = None, seed: int = 0
) -> Path:
    """The folder of a finished zoo, building it first if it is missing or stale (never rebuilds a current one)."""
    return build_zoo(kind, family=family, size=size, out=out, seed=seed, force=False)


def _check_unchanged(target: Path, manifest: dict[str, Any], zoo: ZooConfig) -> None:
    """Refuse to reuse a finished zoo whose files are not those its build wrote (:mod:`hm3.zoo.integrity`);
    nor is it rebuilt unasked: it may hold a user's edits.

    Raises:
        UserError: naming the zoo folder and its first file that differs, and the command that rebuilds it.
    """
    difference = first_difference(target, manifest)
    if difference is not None:
        raise UserError(
            f"zoo {target} is not as its build left it: {difference}; hm3 will not use it, nor rebuild over it "
            f"unasked: `{_rebuild_command(zoo, target)}` rebuilds it"
        )


def _rebuild_command(zoo: ZooConfig, target: Path) -> str:
    """The ``hm3 zoo build ... --force`` command line that rebuilds ``zoo`` at ``target``."""
    words = ["hm3", "zoo", "build", "--kind", zoo.kind]
    if zoo.family not in ("llama", "clip"):
        words += ["--family", zoo.family]
    words += ["--size", zoo.size]
    if zoo.seed != 0:
        words += ["--seed", str(zoo.seed)]
    return shlex.join([*words, "--out", str(target), "--force"])


def _write_manifest(staging: Path, zoo: ZooConfig, contents: dict[str, Any], seconds: float) -> None:
    files = files_under(staging)
    manifest = {
        "format": 1,
        "kind": zoo.kind,
        "family": zoo.family,
        "size": zoo.size,
        "seed": zoo.seed,
        **contents,
        "files": files,
        "checksums": file_checksums(staging, files),
        "build": build_identity(zoo),
        "build_seconds": round(seconds, 1),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _move_into_place(staging: Path, target: Path, force: bool) -> list[DerivedFolder]:
    """Swap the finished build in for ``target``, replacing an empty folder or (``force``) a zoo that
    :func:`_check_replaceable` lets the build replace — checked again: the folder may have changed meanwhile.
    A zoo another build finished meanwhile is kept.

    Returns:
        The derived folders the replaced zoo held (removed with it).
    """
    removed: list[DerivedFolder] = []
    if target.exists() or target.is_symlink():
        manifest = read_manifest(target)
        if manifest is not None and not force:
            return removed
        _check_replaceable(target, manifest)
        removed = [folder for folder in DERIVED_FOLDERS if (target / folder.name).is_dir()]
    try:
        swap_into_place(staging, target)
    except OSError:
        if read_manifest(target) is None:  # not a concurrent build that finished first
            raise
        return []
    return removed
