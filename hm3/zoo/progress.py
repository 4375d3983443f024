"""Rich progress for zoo training: one bar per model, showing the step and the current loss."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import datasets
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers.utils import logging as hf_logging


@contextlib.contextmanager
def training_bar(console: Console, label: str, total: int) -> Iterator[Callable[[int, float], None]]:
    """A progress bar for one training run; yields the ``(step, loss)`` callback that advances it."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(label, total=total, loss=float("nan"))

        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step, loss=loss)

        yield on_step


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence the progress bars of transformers and datasets (loading, saving, dataset preparation)."""
    transformers_bars = hf_logging.is_progress_bar_enabled()
    datasets_bars = not datasets.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if transformers_bars:
            hf_logging.enable_progress_bar()
        if datasets_bars:
            datasets.enable_progress_bars()
