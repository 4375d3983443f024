"""The vision backend: classification accuracy of a CLIP vision tower with a task's linear head.

Data sets (``objective.dataset``), loaded and preprocessed once:

* ``npz``: arrays ``pixel_values`` float32 [N, C, H, W] (already preprocessed) and ``labels`` int64 [N], and
  optionally ``class_names`` (strings, one per class id);
* ``image_folder``: one sub-folder per class (sorted names are the class ids and the class names; entries whose
  names start with ``.`` or ``__``, such as ``.ipynb_checkpoints``, are skipped, as Hugging Face's
  ``imagefolder`` skips them); images are read as RGB, or as grayscale (PIL's ``L``) for a tower of one channel,
  and preprocessed with the model folder's image processor (``preprocessor_config.json``) if it has one, else
  resized to the config's ``image_size`` and normalised with CLIP's mean and std (RGB) or as ``(x - 0.5) / 0.5``
  (grayscale: the vision zoo's normalisation; CLIP's statistics are per RGB channel);
* ``hf``: a Hugging Face dataset (only with a network or a local cache), preprocessed the same way.

Whatever the format, the images must be what the tower takes, ``num_channels`` x ``image_size`` x ``image_size``
(its ``config.json``): other data is refused when it is loaded, before any model is scored.

The head file (``head.safetensors``) holds ``weight`` [C, hidden] and ``bias`` [C]; logits are
``pooler_output @ weight.T + bias``. ``head: zeroshot`` builds that head from the base ``CLIPModel``'s text
tower and the data set's class names (:mod:`hm3.evaluate.zeroshot`). Images are split like documents, by a hash
of their content (pixel bytes and label), so the split does not depend on file order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file

from hm3.errors import UserError
from hm3.evaluate.split import DocumentSplit, split_documents
from hm3.evaluate.tower_input import TowerInput, image_file_problem
from hm3.evaluate.zeroshot import ZeroShotHeads
from hm3.recipe import ZEROSHOT_HEAD

if TYPE_CHECKING:
    from hm3.recipe import ImageDataset, Objective, SplitConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
GRAYSCALE_MEAN, GRAYSCALE_STD = (0.5,), (0.5,)  # the vision zoo's normalisation of its one-channel digits
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_IMAGE_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # PIL's, for a bad file


@dataclass
class VisionObjective:
    """One classification objective, prepared: images as a tensor, labels, head, split.

    Attributes:
        objective: The recipe's objective.
        pixel_values: Preprocessed images [N, C, H, W], float32, on the CPU.
        labels: Class ids [N].
        weight: Head weight [classes, hidden].
        bias: Head bias [classes].
        split: Positions of the images on each side.
    """

    objective: Objective
    pixel_values: torch.Tensor
    labels: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    split: DocumentSplit
    metric_key: str = "accuracy"

    @property
    def higher_is_better(self) -> bool:
        """Accuracy's direction: higher, unless the recipe says otherwise."""
        return self.objective.higher_is_better is not False

    @property
    def name(self) -> str:
        return self.objective.name

    def indices(self, split: str) -> list[int]:
        """Positions scored on ``split``, cut to the objective's ``limit``."""
        return self.split.limited(split, self.objective.limit)

    def score(self, model: Any, split: str) -> float:
        """Accuracy of ``model`` (anything returning ``pooler_output``) with this task's head on ``split``."""
        index = torch.tensor(self.indices(split), dtype=torch.long)
        parameter = next(model.parameters())
        weight = self.weight.to(parameter.device, parameter.dtype)
        bias = self.bias.to(parameter.device, parameter.dtype)
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(index), self.objective.batch_size):
                chosen = index[start : start + self.objective.batch_size]
                pixels = self.pixel_values[chosen].to(parameter.device, parameter.dtype)
                pooled = model(pixel_values=pixels).pooler_output
                predicted = (pooled @ weight.T + bias).argmax(dim=-1).cpu()
                correct += int((predicted == self.labels[chosen]).sum())
        return correct / len(index)


def prepare_vision_objectives(
    objectives: Sequence[Objective], split: SplitConfig, model_folder: str | Path, hidden_size: int
) -> list[VisionObjective]:
    """Load, preprocess and split every vision objective's data, and load its head (no model is needed).

    Args:
        objectives: The recipe's vision objectives.
        split: The recipe's split.
        model_folder: A model folder of the pool (its image processor, ``num_channels`` and ``image_size``
            preprocess images and are the shape every data set's images must have).
        hidden_size: Width of the tower's pooled output (the head's input).

    Raises:
        UserError: naming the objective, for missing or malformed data (an unreadable image file, images of
            another shape than the tower takes), a head of the wrong shape, labels the head has no class
            for, or a split with no images.
    """
    folder = Path(model_folder)
    tower = TowerInput.of(folder)
    zeroshot = next((o.name for o in objectives if o.head == ZEROSHOT_HEAD), None)
    heads = None if zeroshot is None else ZeroShotHeads(folder, zeroshot)  # the text tower, loaded once
    return [_prepare(o, split, folder, tower, hidden_size, heads) for o in objectives]


def _prepare(
    objective: Objective,
    split: SplitConfig,
    folder: Path,
    tower: TowerInput,
    hidden_size: int,
    heads: ZeroShotHeads | None,
) -> VisionObjective:
    name = objective.name
    pixels, labels, class_names = _load_dataset(objective, folder, tower)
    if heads is not None and objective.head == ZEROSHOT_HEAD:
        class_names = _recipe_class_names(objective, class_names)
        if not class_names:
            data = objective.dataset.path  # type: ignore[union-attr]
            raise UserError(
                f"objective {name}: head: zeroshot needs the class names, and {data} has none: give the "
                "objective's class_names (or an npz file's 'class_names' array, an image folder's sub-folders, a "
                "data set's ClassLabel names)"
            )
        weight, bias = heads.head(class_names, objective.templates)
    else:
        weight, bias = _load_head(objective, hidden_size)
    if len(labels) and (int(labels.max()) >= weight.shape[0] or int(labels.min()) < 0):
        raise UserError(
            f"objective {name}: labels run from {int(labels.min())} to {int(labels.max())}, "
            f"the head has {weight.shape[0]} classes"
        )
    keys = (
        pixels[i].numpy().tobytes() + int(labels[i]).to_bytes(8, "little", signed=True)
        for i in range(len(labels))
    )
    document_split = split_documents(keys, split.search_fraction, split.seed, split.screen_fraction)
    for side in ("search", "heldout"):
        if not document_split.indices(side):
            raise UserError(f"objective {name}: {len(labels)} image(s), none left for the {side} split")
    return VisionObjective(objective, pixels, labels.to(torch.long), weight, bias, document_split)


def _recipe_class_names(objective: Objective, data_names: list[str] | None) -> list[str] | None:
    """The recipe's ``class_names`` where it gives them (the data's otherwise); refused where the data names
    another number of classes — the names would be matched to the wrong label ids."""
    names = objective.class_names
    if names is None:
        return data_names
    if data_names and len(data_names) != len(names):
        raise UserError(
            f"objective {objective.name}: class_names lists {len(names)} classes and the data set names "
            f"{len(data_names)}: give one name per label id, in label order"
        )
    return list(names)


def _load_dataset(
    objective: Objective, folder: Path, tower: TowerInput
) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """Pixel values of the tower's shape, labels, and the class names where the data set has them (for a
    zero-shot head)."""
    dataset = objective.dataset
    assert dataset is not None
    if dataset.format == "npz":
        pixels, labels, names = _load_npz(objective.name, Path(dataset.path))
    else:
        if problem := image_file_problem(tower, folder):
            raise UserError(f"objective {objective.name}: {dataset.path}: {problem}")
        if dataset.format == "image_folder":
            images, label_list, names = _read_image_folder(
                objective.name, Path(dataset.path), tower.image_mode
            )
        else:
            images, label_list, names = _read_hf_dataset(objective, tower.image_mode)
        pixels, labels = _preprocess(images, folder, tower), torch.tensor(label_list, dtype=torch.long)
    if problem := tower.mismatch(pixels.shape[1:]):
        raise UserError(f"objective {objective.name}: {dataset.path}: {problem}")
    return pixels, labels, names


def _load_npz(name: str, path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    if not path.is_file():
        raise UserError(f"objective {name}: data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            pixels, labels = arrays["pixel_values"], arrays["labels"]
            names = arrays["class_names"] if "class_names" in arrays.files else None
    except (KeyError, ValueError, OSError) as error:
        raise UserError(
            f"objective {name}: {path} needs arrays 'pixel_values' and 'labels' ({error})"
        ) from None
    if pixels.ndim != 4 or labels.ndim != 1 or len(pixels) != len(labels):
        raise UserError(
            f"objective {name}: pixel_values {list(pixels.shape)} and labels {list(labels.shape)} "
            "must be [N, C, H, W] and [N]"
        )
    if pixels.dtype.kind not in "fiu" or labels.dtype.kind not in "iu":
        raise UserError(
            f"objective {name}: {path.name}: pixel_values must be numbers and labels whole numbers"
        )
    if len(labels) and int(labels.max()) > np.iinfo(np.int64).max:  # uint64 values no int64 label holds
        raise UserError(
            f"objective {name}: {path.name}: labels run from {int(labels.min())} to {int(labels.max())}, "
            "past any head's classes"
        )
    if not np.isfinite(pixels).all():
        raise UserError(f"objective {name}: {path.name}: pixel_values hold NaN or infinite values")
    if names is not None and (names.ndim != 1 or names.dtype.kind != "U"):
        raise UserError(
            f"objective {name}: {path.name}'s class_names must be a list of strings, one per class"
        )
    class_names = None if names is None else [str(n) for n in names]
    return torch.from_numpy(pixels.astype(np.float32)), torch.from_numpy(labels.astype(np.int64)), class_names


def _read_image_folder(name: str, root: Path, mode: str) -> tuple[list[Any], list[int], list[str]]:
    """Images in PIL ``mode``, labels (the class folder's position), class names (the folders' names)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p)) if root.is_dir() else []
    if not classes:
        raise UserError(f"objective {name}: {root} has no class sub-folders")
    images, labels = [], []
    for label, class_dir in enumerate(classes):
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in _IMAGE_SUFFIXES and not _is_hidden(file):
                images.append(_read_image(name, file, mode))
                labels.append(label)
    if not images:
        raise UserError(
            f"objective {name}: {root}'s class sub-folders hold no images ({', '.join(_IMAGE_SUFFIXES)})"
        )
    return images, labels, [class_dir.name for class_dir in classes]


def _is_hidden(path: Path) -> bool:
    """Skipped as Hugging Face's ``imagefolder`` skips them: hidden (``.ipynb_checkpoints``, macOS's ``._x.png``)
    and special (``__pycache__``) entries."""
    return path.name.startswith((".", "__"))


def _read_image(name: str, file: Path, mode: str) -> Any:
    """One image file, decoded now and converted to ``mode``; a file PIL cannot decode is refused by name."""
    try:
        with Image.open(file) as image:
            return image.convert(mode)
    except _IMAGE_READ_ERRORS as error:
        reason = "not an image format PIL knows" if isinstance(error, UnidentifiedImageError) else error
        raise UserError(f"objective {name}: {file} is not a readable image ({reason})") from None


def _read_hf_dataset(objective: Objective, mode: str) -> tuple[list[Any], list[int], list[str] | None]:
    dataset = objective.dataset
    assert dataset is not None
    try:
        data = datasets.load_dataset(dataset.path, dataset.config, split=dataset.split)
    except Exception as error:  # no network and no cache, or a wrong name: both mean "not available"
        raise UserError(f"objective {objective.name}: {_hub_data_problem(dataset, error)}") from None
    for setting, column in (("image_key", dataset.image_key), ("label_key", dataset.label_key)):
        if column not in data.column_names:
            raise UserError(
                f"objective {objective.name}: data set {dataset.path!r} ({dataset.split}) has no column {column!r} "
                f"(its columns: {', '.join(data.column_names)}); set dataset.{setting}"
            )
    images, labels = data[dataset.image_key], data[dataset.label_key]
    if not all(hasattr(image, "convert") for image in images[:1]):
        raise UserError(f"objective {objective.name}: column {dataset.image_key!r} does not hold images")
    if not all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
        raise UserError(
            f"objective {objective.name}: column {dataset.label_key!r} does not hold class ids (whole numbers)"
        )
    names = getattr(data.features.get(dataset.label_key), "names", None)  # a ClassLabel's
    return [image.convert(mode) for image in images], list(labels), names


def _hub_data_problem(dataset: ImageDataset, error: Exception) -> str:
    """Why ``datasets`` could not load a hub data set, in one line; a configuration missing or unknown names
    ``dataset.config`` and the ones the data set has."""
    text = " ".join(str(error).split())
    available = re.search(r"(\[[^\]]*\])", text)
    if "Config name is missing" in text and available:
        return (
            f"data set {dataset.path!r} has several configurations: set dataset.config to one of "
            f"{available.group(1)}"
        )
    if dataset.config is not None and f"BuilderConfig '{dataset.config}' not found" in text and available:
        return (
            f"dataset.config {dataset.config!r} is not a configuration of {dataset.path!r} (it has "
            f"{available.group(1)})"
        )
    return f"dataset {dataset.path!r} not available: {text}"


def _preprocess(images: list[Any], folder: Path, tower: TowerInput) -> torch.Tensor:
    """Images (in ``tower.image_mode``) as pixel values: the folder's image processor if it has one, else
    resized to the tower's size and normalised with CLIP's statistics (RGB) or the zoo's (grayscale)."""
    if (folder / "preprocessor_config.json").is_file():
        # here, not at the top: importing it costs ~1.5 s of CPU, which every command that scores text would pay
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(folder)
        return processor(images=images, return_tensors="pt")["pixel_values"].to(torch.float32)
    grayscale = tower.image_mode == "L"
    mean = np.array(GRAYSCALE_MEAN if grayscale else CLIP_MEAN, dtype=np.float32)
    std = np.array(GRAYSCALE_STD if grayscale else CLIP_STD, dtype=np.float32)
    arrays = [(_resized_array(image, tower.size) / 255.0 - mean) / std for image in images]
    return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())


def _resized_array(image: Any, size: int) -> np.ndarray:
    """An image resized to ``size`` x ``size`` as float32 [H, W, C] (a grayscale image's one channel made
    explicit)."""
    array = np.asarray(image.resize((size, size)), dtype=np.float32)
    return array[:, :, None] if array.ndim == 2 else array


def _load_head(objective: Objective, hidden_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    path = Path(objective.head)  # type: ignore[arg-type]
    if not path.is_file():
        raise UserError(f"objective {objective.name}: head file not found: {path}")
    tensors = load_file(str(path))
    if "weight" not in tensors or "bias" not in tensors:
        raise UserError(f"objective {objective.name}: {path.name} needs tensors 'weight' and 'bias'")
    weight, bias = tensors["weight"].float(), tensors["bias"].float()
    if weight.ndim != 2 or weight.shape[1] != hidden_size or bias.shape != (weight.shape[0],):
        raise UserError(
            f"objective {objective.name}: head weight {list(weight.shape)} / bias {list(bias.shape)} "
            f"must be [classes, {hidden_size}] / [classes]"
        )
    return weight, bias
