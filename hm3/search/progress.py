"""The live display of a search: preference i of N, its candidates, the best scalarized score, time left."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class SearchProgress:
    """Two rich progress bars (preferences; candidates of the current preference), or nothing when quiet.

    Use as a context manager; every method is a no-op when ``enabled`` is False.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._preferences: Any = None
        self._candidates: Any = None
        self._label = ""
        self.best: float | None = None

    def __enter__(self) -> SearchProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def stage(self, description: str, total: int) -> None:
        """Start a stage with its own bar (fine-tuned scores, held-out scoring)."""
        if self._progress is None:
            return
        if self._candidates is not None:
            self._progress.remove_task(self._candidates)
        self._candidates = self._progress.add_task(description, total=total)

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None and self._candidates is not None:
            self._progress.advance(self._candidates, steps)

    def stage_count(self, count: int) -> None:
        """Show how many candidates are logged so far (distributed runs, where workers score them)."""
        if self._progress is None:
            return
        if getattr(self, "_counter", None) is None:
            self._counter = self._progress.add_task("candidates logged (all workers)", total=None)
        self._progress.update(self._counter, completed=count)

    def start_preferences(self, total: int, done: int) -> None:
        if self._progress is not None:
            self._preferences = self._progress.add_task("preferences", total=total, completed=done)

    def start_preference(self, index: int, total: int, preference: Sequence[float], iterations: int) -> None:
        """A new preference: reset the candidate bar (``iterations`` new candidates expected)."""
        self.best = None
        self._label = f"λ {index + 1}/{total} = (" + ", ".join(f"{v:.2f}" for v in preference) + ")"
        self.stage(f"{self._label} candidates", iterations)

    def candidate(self, reward: float | None, cost: float = 1.0) -> None:
        """One new candidate scored with scalarized reward ``reward`` (None: a screen, whose reward is on other
        documents than the best's), charged ``cost`` full scorings."""
        if reward is not None:
            self.best = reward if self.best is None else max(self.best, reward)
        if self._progress is not None and self._candidates is not None:
            best = "" if self.best is None else f" best R {self.best:+.4f}"  # a screen first: no best yet
            self._progress.update(self._candidates, advance=cost, description=f"{self._label}{best}")

    def finish_preference(self) -> None:
        if self._progress is not None and self._preferences is not None:
            self._progress.advance(self._preferences, 1)

    def print(self, message: str) -> None:
        """A line above the bars (or on stdout when quiet)."""
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            print(message)
