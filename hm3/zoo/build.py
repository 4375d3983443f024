"""Build a zoo: train the base and the specialists, write data, tasks, scores, then the manifest, atomically.

The build runs in a hidden sibling folder (``.<name>.building-<pid>``) and is renamed into place only once
``zoo.json`` is written, so an interrupted build never leaves a folder that looks finished. The training runs
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
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from hm3.errors import UserError
from hm3.folder_swap import process_alive
from hm3.zoo.config import MANIFEST, ZooConfig, build_identity, is_current, manifest_matches, read_manifest
from hm3.zoo.fingerprint import short
from hm3.zoo.lm_build import build_lm_zoo
from hm3.zoo.numerics import current_numerics, portable_environment
from hm3.zoo.progress import quiet_libraries
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


BUILD_ENTRIES = frozenset({MANIFEST, "scores.md", "scores.json", "tasks", "data"})
"""What a build writes into a zoo folder besides its models' folders (named in the manifest)."""


def _check_replaceable(target: Path, manifest: dict | None) -> None:
    """Refuse, before any training, a ``target`` whose contents hm3 did not write: a build replaces only an
    empty folder or a zoo of its own (``--force`` or not), never a user's folder or files put into a zoo.

    Raises:
        UserError: ``target`` is a file, a non-empty folder without a zoo manifest, or a zoo holding entries
            the build did not write.
    """
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise UserError(f"{target} exists and is not a folder; pass --out elsewhere")
    entries = {entry.name for entry in target.iterdir()}
    if not entries:
        return
    if manifest is None:
        raise UserError(
            f"{target} is not empty and holds no zoo hm3 built (no {MANIFEST}); hm3 never replaces it, "
            "--force or not: pass --out elsewhere"
        )
    written = BUILD_ENTRIES | {str(model.get("path")) for model in manifest.get("models", [])}
    foreign = sorted(entries - written)
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
        UserError: Bad kind/family/size, an unwritable target, or a finished zoo of another kind, family, size or seed at ``out``.
    """
    if kind == "vit" and family == "llama":
        family = None
    zoo = ZooConfig.checked(kind, family, size, seed)
    target = Path(out) if out is not None else zoo.default_dir()
    console = console or Console(stderr=True)
    _remove_dead_builds(target)
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
        console.print(f"zoo {zoo.name} (seed {seed}) already built at {target}")
        return target
    _check_replaceable(target, manifest)
    _writable_parent(target)
    staging = target.parent / f".{target.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    started = time.perf_counter()
    try:
        if in_process:
            build_into(zoo, staging, target, console)
        else:
            _build_in_child(zoo, staging, target, quiet=console.quiet)
        _move_into_place(staging, target, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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


def _build_in_child(zoo: ZooConfig, staging: Path, target: Path, quiet: bool) -> None:
    """Run :func:`build_into` in a child process started with the portable numerics' environment.

    The child shares this terminal, so its progress bars show; Ctrl-C reaches both, and the caller removes the
    staging folder. A user error in the child comes back through :data:`CHILD_ERROR` and is raised here.
    """
    command = [
        sys.executable, "-m", "hm3.zoo.child", zoo.kind, zoo.family, zoo.size, str(zoo.seed),
        str(staging), str(target),
    ]  # fmt: skip
    if quiet:
        command.append("--quiet")
    code = subprocess.run(command, env=portable_environment(), check=False).returncode
    if code == 0:
        return
    if code < 0 or code == 130:
        raise KeyboardInterrupt
    if (staging / CHILD_ERROR).is_file():
        raise UserError((staging / CHILD_ERROR).read_text().strip())
    raise RuntimeError(f"the build process of zoo {zoo.name} failed (exit {code}; its traceback is above)")


def ensure_zoo(
    kind: str, family: str | None = "llama", size: str = "small", out: str | Path | None = None, seed: int = 0
) -> Path:
    """The folder of a finished zoo, building it first if it is missing or stale (never rebuilds a current one)."""
    return build_zoo(kind, family=family, size=size, out=out, seed=seed, force=False)


def _remove_dead_builds(target: Path) -> None:
    """Delete the staging folders of builds whose process is gone (killed before its cleanup could run)."""
    for staging in target.parent.glob(f".{target.name}.building-*"):
        pid = staging.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _write_manifest(staging: Path, zoo: ZooConfig, contents: dict[str, Any], seconds: float) -> None:
    manifest = {
        "format": 1,
        "kind": zoo.kind,
        "family": zoo.family,
        "size": zoo.size,
        "seed": zoo.seed,
        **contents,
        "build": build_identity(zoo),
        "build_seconds": round(seconds, 1),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _move_into_place(staging: Path, target: Path, force: bool) -> None:
    """Rename the finished build onto ``target``, replacing an empty folder or (``force``) a zoo that
    :func:`_check_replaceable` lets the build replace — checked again: the folder may have changed meanwhile.
    A zoo another build finished meanwhile is kept."""
    if target.exists() and (force or read_manifest(target) is None):
        _check_replaceable(target, read_manifest(target))
        shutil.rmtree(target)
    try:
        staging.rename(target)
    except OSError:
        if read_manifest(target) is None:  # not a concurrent build that finished first
            raise
