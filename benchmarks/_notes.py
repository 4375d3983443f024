"""Hand-written analysis kept across re-runs of a benchmark that rewrites its results file."""

from __future__ import annotations

from pathlib import Path


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
