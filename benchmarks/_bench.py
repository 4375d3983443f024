"""What the benchmark scripts share: the repository on the import path, offline settings, kept notes."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCORING_SPEED = ("<!-- scoring speed: start -->", "<!-- scoring speed: end -->")
"""The markers of ``scoring_speed.py``'s section of ``eval_overhead.md`` (``eval_overhead.py`` writes the one
before it)."""


def offline() -> None:
    """Import hm3 from this checkout; no hub access, no tokenizer thread pools (as in the tests and the demo);
    the toy zoos in this checkout's ``zoo/``, where the recipes look, whatever folder a script is run from
    (``hm3 zoo build`` otherwise builds under the current folder), unless ``HM3_ZOO_DIR`` says otherwise."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    for name, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("HF_DATASETS_OFFLINE", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("HM3_ZOO_DIR", str(REPO / "zoo")),
    ):
        os.environ.setdefault(name, value)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows of it."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def kept_notes(results: Path, heading: str = "## Analysis") -> list[str]:
    """Lines of the section starting at ``heading`` (to the end) of an earlier ``results`` file, if any.

    The benchmarks regenerate their tables on every run; the notes a person wrote under ``heading`` about
    what the numbers mean are appended again instead of being lost.
    """
    if not results.is_file():
        return []
    text = results.read_text()
    marker = text.find("\n" + heading)
    return ["", *text[marker + 1 :].rstrip().splitlines()] if marker >= 0 else []


def marked_sections(results: Path, label: str) -> dict[str, list[str]]:
    """The sections of an earlier ``results`` file between ``<!-- {label} KEY: start -->`` and
    ``<!-- {label} KEY: end -->`` markers (markers included), by KEY, in file order."""
    if not results.is_file():
        return {}
    pattern = rf"<!-- {re.escape(label)} ([^:]+): start -->.*?<!-- {re.escape(label)} \1: end -->"
    return {m.group(1): m.group(0).splitlines() for m in re.finditer(pattern, results.read_text(), re.S)}


def zoo_build(zoo: Path) -> str:
    """The first 16 hex digits of the fingerprint of a zoo's weights (its manifest's): on another CPU vendor
    the same seed builds other weights (README), so the benchmarks keep one section per build."""
    from hm3.zoo.config import read_manifest

    manifest = read_manifest(zoo) or {}
    return str(manifest.get("fingerprint", "unknown")).removeprefix("sha256:")[:16]


def zoo_digest(recipe, *extra: Path) -> str:
    """Digest of the manifest of the zoo a recipe's base model lives in (and of ``extra`` files): a benchmark
    run made on another build of the zoo, or with another recipe, is not reused."""
    import hashlib

    digest = hashlib.sha256((Path(recipe.base_model.path).parent / "zoo.json").read_bytes())
    for file in extra:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def write_results(out: Path, lines: list[str]) -> None:
    """Write a results file (the lines, then a newline), print it and where it went."""
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


def exit_with(main, script: str) -> None:
    """Exit with ``main()``'s code; a user error (no GPU asked for, a bad setting) is one line and exit 2."""
    from hm3.errors import UserError

    try:
        sys.exit(main())
    except UserError as error:
        print(f"{script}: {error}")
        sys.exit(2)
