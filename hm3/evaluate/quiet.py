"""Silence the libraries' own progress bars and chatter while hm3 shows its own progress."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

_LOGGERS = ("lm_eval", "datasets", "transformers", "accelerate")


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[None]:
    """Within the block, lm-eval's, datasets' and transformers' logs below ERROR and their tqdm bars are hidden.

    Args:
        enabled: False leaves everything as it is (useful when debugging a task).
    """
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
