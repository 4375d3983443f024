"""What a vision tower takes as input (``num_channels`` x ``image_size``², from its ``config.json``), and the
checks ``hm3 validate`` makes of a data set against it without loading the data (:mod:`hm3.evaluate.vision`
makes the same when it loads it)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hm3.recipe import Objective

# CLIPVisionConfig's defaults, which a saved config.json may leave out
_CLIP_VISION_DEFAULTS = {"num_channels": 3, "image_size": 224}


@dataclass(frozen=True)
class TowerInput:
    """The images a vision tower takes: ``channels`` x ``size`` x ``size`` pixel values.

    Attributes:
        channels: The config's ``num_channels``.
        size: The config's ``image_size``.
        config_file: The ``config.json`` they were read from (for messages).
    """

    channels: int
    size: int
    config_file: Path

    @classmethod
    def of(cls, model_folder: Path) -> TowerInput:
        """Read from a model folder's ``config.json`` (a ``CLIPModel``'s ``vision_config``, or the tower's own)."""
        config_file = model_folder / "config.json"
        config = json.loads(config_file.read_text())
        vision = {**_CLIP_VISION_DEFAULTS, **config.get("vision_config", config)}
        return cls(int(vision["num_channels"]), int(vision["image_size"]), config_file)

    @property
    def image_mode(self) -> str:
        """The PIL mode images are read in: grayscale for one channel, RGB otherwise."""
        return "L" if self.channels == 1 else "RGB"

    def mismatch(self, shape: Sequence[int]) -> str | None:
        """Why images of ``shape`` [C, H, W] do not fit the tower, or None."""
        channels, height, width = shape
        if (channels, height, width) == (self.channels, self.size, self.size):
            return None
        return (
            f"images are {channels} channel(s) of {height}x{width} pixels, the model takes {self.channels} "
            f"of {self.size}x{self.size} (num_channels, image_size in {self.config_file})"
        )


def vision_data_problem(objective: Objective, model_folder: Path) -> str | None:
    """Why an objective's local data cannot fit the tower, told without loading it (for ``hm3 validate``): an
    npz file's ``pixel_values`` of another shape (read from the array's header), or image files for a tower
    that is neither RGB nor grayscale and has no image processor. None when it fits, or when it cannot be told
    cheaply (a hub data set, a file that does not open: loading it reports those).
    """
    dataset = objective.dataset
    if dataset is None or not (model_folder / "config.json").is_file():
        return None
    try:
        tower = TowerInput.of(model_folder)
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # the model checks name an unreadable configuration
    if dataset.format != "npz":
        return image_file_problem(tower, model_folder)
    shape = _npz_array_shape(Path(dataset.path), "pixel_values")
    problem = tower.mismatch(shape[1:]) if shape is not None and len(shape) == 4 else None
    return None if problem is None else f"{dataset.path}: {problem}"


def _npz_array_shape(path: Path, key: str) -> tuple[int, ...] | None:
    """The shape of one array of an npz file, from its header (the array is not read); None if unreadable."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                return np.lib.format.read_array_header_1_0(member)[0]
            if version == (2, 0):
                return np.lib.format.read_array_header_2_0(member)[0]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return None


def image_file_problem(tower: TowerInput, model_folder: Path) -> str | None:
    """Why image files (an image folder's, a hub data set's) cannot be made into what the tower takes, or None:
    without an image processor they are read as RGB or grayscale only."""
    if tower.channels in (1, 3) or (model_folder / "preprocessor_config.json").is_file():
        return None
    return (
        f"the model takes {tower.channels}-channel images ({tower.config_file}), and image files are read as RGB "
        f"(3 channels) or grayscale (1): give the data as npz pixel_values [N, {tower.channels}, {tower.size}, "
        f"{tower.size}]"
    )
