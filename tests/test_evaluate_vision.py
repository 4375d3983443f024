"""The vision backend: accuracy of a CLIP vision tower with a task head, on npz arrays and image folders."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from hm3.errors import UserError
from tests.fixtures_models import hm3_in_process, run_hm3, write_recipe

CLASSES = 3
HIDDEN = 32


def write_head(path: Path, seed: int, classes: int = CLASSES, hidden: int = HIDDEN) -> Path:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    save_file(
        {
            "weight": torch.randn(classes, hidden, generator=generator),
            "bias": torch.randn(classes, generator=generator),
        },
        str(path),
    )
    return path


@pytest.fixture(scope="module")
def vision_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vision_data")
    rng = np.random.default_rng(0)
    np.savez(
        folder / "task.npz",
        pixel_values=rng.normal(size=(40, 3, 8, 8)).astype(np.float32),
        labels=rng.integers(0, CLASSES, size=40).astype(np.int64),
    )
    write_head(folder / "head.safetensors", seed=1)
    from PIL import Image

    for label in range(CLASSES):
        (folder / "images" / f"class_{label}").mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "images" / f"class_{label}" / f"{i}.png")
    return folder


def vision_recipe(tiny_pools, folder: Path, objectives: str) -> Path:
    pool = tiny_pools["clip_vision"]
    models = "".join(f"  - {{name: ft{i}, path: {p}}}\n" for i, p in enumerate(pool.finetunes[:2]))
    return write_recipe(folder, f"base_model: {pool.base}\nmodels:\n{models}objectives:\n{objectives}")


def objectives_text(data: Path) -> str:
    return (
        f"  - {{name: arrays, model: ft0, dataset: {{format: npz, path: {data}/task.npz}},"
        f" head: {data}/head.safetensors, batch_size: 7}}\n"
        f"  - {{name: folder, model: ft1, dataset: {{format: image_folder, path: {data}/images}},"
        f" head: {data}/head.safetensors}}\n"
    )


def manual_accuracy(model, pixels, labels, head_path: Path) -> float:
    import torch
    from safetensors.torch import load_file

    head = load_file(str(head_path))
    with torch.no_grad():
        logits = model(pixel_values=pixels).pooler_output @ head["weight"].T + head["bias"]
    return float((logits.argmax(-1) == labels).float().mean())


def test_accuracy_matches_a_direct_computation(tiny_pools, vision_data, tmp_path):
    import torch
    from transformers import CLIPVisionModel

    from hm3.evaluate import Evaluator
    from hm3.evaluate.vision import CLIP_MEAN, CLIP_STD
    from hm3.recipe import load_recipe

    evaluator = Evaluator.from_recipe(
        load_recipe(vision_recipe(tiny_pools, tmp_path, objectives_text(vision_data)))
    )
    assert evaluator.is_vision and evaluator.metrics == {"arrays": "accuracy", "folder": "accuracy"}
    assert evaluator.document_count("search") == {"arrays": 28, "folder": 10}
    model = CLIPVisionModel.from_pretrained(tiny_pools["clip_vision"].finetunes[0]).eval()
    scores = evaluator.score(model, split="search")

    arrays = np.load(vision_data / "task.npz")
    index = list(evaluator.objectives[0].indices("search"))
    pixels = torch.from_numpy(arrays["pixel_values"][index])
    labels = torch.from_numpy(arrays["labels"][index])
    assert scores["arrays"] == pytest.approx(
        manual_accuracy(model, pixels, labels, vision_data / "head.safetensors")
    )

    from PIL import Image

    files = sorted((vision_data / "images").glob("*/*.png"))
    chosen = [files[i] for i in evaluator.objectives[1].indices("search")]
    mean, std = np.array(CLIP_MEAN, dtype=np.float32), np.array(CLIP_STD, dtype=np.float32)
    images = [
        (np.asarray(Image.open(f).convert("RGB").resize((8, 8)), dtype=np.float32) / 255 - mean) / std
        for f in chosen
    ]
    pixels = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())
    labels = torch.tensor([int(f.parent.name.split("_")[1]) for f in chosen])
    assert scores["folder"] == pytest.approx(
        manual_accuracy(model, pixels, labels, vision_data / "head.safetensors")
    )

    other = CLIPVisionModel.from_pretrained(tiny_pools["clip_vision"].finetunes[1]).eval()
    evaluator.score(other, split="heldout")
    assert evaluator.score(model, split="search") == scores


def test_bad_heads_and_data_are_user_errors(tiny_pools, vision_data, tmp_path):
    from hm3.evaluate import Evaluator
    from hm3.recipe import load_recipe

    wrong_width = write_head(tmp_path / "wide.safetensors", seed=2, hidden=HIDDEN + 1)
    too_few = write_head(tmp_path / "two.safetensors", seed=2, classes=2)
    cases = {
        str(wrong_width): r"must be \[classes, 32\]",
        str(too_few): "the head has 2 classes",
    }
    for head, message in cases.items():
        text = objectives_text(vision_data).replace(f"{vision_data}/head.safetensors", head, 1)
        with pytest.raises(UserError, match=message):
            Evaluator.from_recipe(load_recipe(vision_recipe(tiny_pools, tmp_path, text)))
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 3, 8, 8), dtype=np.float32))
    text = objectives_text(vision_data).replace(f"{vision_data}/task.npz", str(tmp_path / "bad.npz"))
    with pytest.raises(UserError, match="objective arrays: .*needs arrays 'pixel_values' and 'labels'"):
        Evaluator.from_recipe(load_recipe(vision_recipe(tiny_pools, tmp_path, text)))
    pixels = np.zeros((4, 3, 8, 8), dtype=np.float32)
    pixels[1, 0, 0, 0] = np.nan  # argmax over NaN logits scored silently before
    for arrays, message in [
        (
            {"pixel_values": pixels, "labels": np.zeros(4, np.int64)},
            "pixel_values hold NaN or infinite values",
        ),
        ({"pixel_values": np.zeros_like(pixels), "labels": np.full(4, 0.5)}, "labels whole numbers"),
    ]:
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(UserError, match=f"objective arrays: bad.npz: .*{message}"):
            Evaluator.from_recipe(load_recipe(vision_recipe(tiny_pools, tmp_path, text)))


def test_hm3_eval_scores_saved_vision_towers(tiny_pools, vision_data, tmp_path):
    recipe = vision_recipe(tiny_pools, tmp_path, objectives_text(vision_data))
    pool = tiny_pools["clip_vision"]
    done = run_hm3("eval", "--recipe", recipe, "--model", pool.base, "--model", pool.finetunes[0], "--json")
    assert done.returncode == 0, done.stderr
    import json

    scores = json.loads(done.stdout)["scores"]
    assert set(scores) == {str(pool.base), str(pool.finetunes[0])}
    for values in scores.values():
        assert set(values) == {"arrays", "folder"} and all(0 <= v <= 1 for v in values.values())


def npz_of_shape(path: Path, channels: int, size: int) -> Path:
    pixels = np.random.default_rng(1).normal(size=(20, channels, size, size)).astype(np.float32)
    np.savez(path, pixel_values=pixels, labels=np.arange(20) % CLASSES)
    return path


def test_data_of_another_shape_than_the_tower_takes_is_refused_on_loading(tiny_pools, vision_data, tmp_path):
    from hm3.evaluate import Evaluator
    from hm3.recipe import load_recipe
    from hm3.validation import validate_recipe_file

    pool = tiny_pools["clip_vision"]
    for channels, size in [(1, 8), (3, 16)]:  # the tower takes 3 channels of 8x8
        data = npz_of_shape(tmp_path / f"c{channels}s{size}.npz", channels, size)
        text = objectives_text(vision_data).replace(f"{vision_data}/task.npz", str(data))
        recipe = vision_recipe(tiny_pools, tmp_path, text)
        problem = re.escape(
            f"{data}: images are {channels} channel(s) of {size}x{size} pixels, the model takes 3 of 8x8 "
            f"(num_channels, image_size in {pool.base / 'config.json'})"
        )
        with pytest.raises(UserError, match=f"^objective arrays: {problem}$"):  # before any model is scored
            Evaluator.from_recipe(load_recipe(recipe))
        with pytest.raises(UserError, match=re.escape("objectives[0].dataset: ") + problem):  # from headers
            validate_recipe_file(recipe)
    run = tmp_path / "run"
    for command in (["eval", "--model", pool.base], ["merge", "--out", run, "--quiet"]):
        done = hm3_in_process(*command, "--recipe", recipe)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "images are 3 channel(s) of 16x16 pixels" in done.stderr
    assert not run.exists()  # the merge left no half-made run folder


@pytest.fixture(scope="module")
def gray_tower(tmp_path_factory) -> Path:
    """A tiny CLIP vision tower of one channel (as the vision zoo's), 8x8 images in 4x4 patches."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    shape = {"image_size": 8, "patch_size": 4, "num_channels": 1, "num_attention_heads": 4}
    config = CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, **shape)
    folder = tmp_path_factory.mktemp("gray_tower") / "base"
    CLIPVisionModel(config).save_pretrained(folder)
    return folder


def tower_recipe(tower: Path, folder: Path, data: Path, head: Path) -> Path:
    objective = f"{{name: folder, model: ft0, dataset: {{format: image_folder, path: {data}}}, head: {head}}}"
    text = f"base_model: {tower}\nmodels:\n  - {{name: ft0, path: {tower}}}\nobjectives:\n  - {objective}\n"
    return write_recipe(folder, text)


def test_image_folder_on_a_one_channel_tower_is_read_as_grayscale(gray_tower, vision_data, tmp_path):
    import torch
    from PIL import Image
    from transformers import CLIPVisionModel

    from hm3.evaluate import Evaluator
    from hm3.recipe import load_recipe

    recipe = tower_recipe(gray_tower, tmp_path, vision_data / "images", vision_data / "head.safetensors")
    evaluator = Evaluator.from_recipe(load_recipe(recipe))
    objective = evaluator.objectives[0]
    files = sorted((vision_data / "images").glob("*/*.png"))
    gray = np.stack([np.asarray(Image.open(f).convert("L").resize((8, 8)), dtype=np.float32) for f in files])
    expected = torch.from_numpy((gray / 255 - 0.5) / 0.5)[:, None]  # the vision zoo's normalisation
    assert objective.pixel_values.shape == (15, 1, 8, 8)
    assert torch.allclose(objective.pixel_values, expected)
    model = CLIPVisionModel.from_pretrained(gray_tower).eval()
    assert 0 <= evaluator.score(model, split="heldout")["folder"] <= 1


def test_image_files_for_a_tower_neither_rgb_nor_grayscale_are_refused(vision_data, tmp_path):
    from transformers import CLIPVisionConfig

    from hm3.evaluate import Evaluator
    from hm3.evaluate.tower_input import vision_data_problem
    from hm3.recipe import load_recipe

    tower = tmp_path / "two_channels"
    CLIPVisionConfig(
        hidden_size=HIDDEN, num_attention_heads=4, image_size=8, patch_size=4, num_channels=2
    ).save_pretrained(tower)
    recipe = load_recipe(
        tower_recipe(tower, tmp_path, vision_data / "images", vision_data / "head.safetensors")
    )
    message = "the model takes 2-channel images .*, and image files are read as RGB .* or grayscale"
    with pytest.raises(UserError, match=f"^objective folder: {vision_data}/images: {message}"):
        Evaluator.from_recipe(recipe)
    assert "give the data as npz pixel_values [N, 2, 8, 8]" in vision_data_problem(
        recipe.objectives[0], tower
    )


def test_hidden_entries_of_an_image_folder_are_skipped(tiny_pools, vision_data, tmp_path):
    from hm3.evaluate import Evaluator
    from hm3.recipe import load_recipe

    images = shutil.copytree(vision_data / "images", tmp_path / "images")
    (images / ".ipynb_checkpoints").mkdir()  # sorted first: it was class 0, every label one off
    shutil.copy(images / "class_0" / "0.png", images / ".ipynb_checkpoints" / "0-checkpoint.png")
    (images / "class_1" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # AppleDouble
    (images / "__pycache__").mkdir()
    shutil.copy(images / "class_0" / "0.png", images / "__pycache__" / "0.png")
    text = objectives_text(vision_data).replace(f"{vision_data}/images", str(images))
    evaluator = Evaluator.from_recipe(load_recipe(vision_recipe(tiny_pools, tmp_path, text)))
    labels = evaluator.objectives[1].labels
    assert len(labels) == 15 and sorted(labels.tolist()) == [0] * 5 + [1] * 5 + [2] * 5


def test_unreadable_images_name_the_objective_and_the_file(tiny_pools, vision_data, tmp_path):
    from hm3.evaluate import Evaluator
    from hm3.recipe import load_recipe

    images = shutil.copytree(vision_data / "images", tmp_path / "images")
    text = objectives_text(vision_data).replace(f"{vision_data}/images", str(images))
    recipe = vision_recipe(tiny_pools, tmp_path, text)
    bad = images / "class_1" / "2.png"
    whole = bad.read_bytes()
    for content, reason in [
        (whole[: len(whole) // 2], "image file is truncated"),
        (b"not a png", "not an image format PIL knows"),
    ]:
        bad.write_bytes(content)
        with pytest.raises(UserError, match=f"^objective folder: {bad} is not a readable image \\({reason}"):
            Evaluator.from_recipe(load_recipe(recipe))
    for folder in images.iterdir():
        shutil.rmtree(folder)
        folder.mkdir()
    with pytest.raises(UserError, match=f"^objective folder: {images}'s class sub-folders hold no images"):
        Evaluator.from_recipe(load_recipe(recipe))


def test_labels_past_int64_are_reported_as_stored(tiny_pools, vision_data, tmp_path):
    from hm3.evaluate import Evaluator
    from hm3.recipe import load_recipe

    labels = np.arange(20, dtype=np.uint64) % CLASSES
    labels[3] = 2**63 + 1  # read as int64, it was -9223372036854775807
    np.savez(tmp_path / "huge.npz", pixel_values=np.zeros((20, 3, 8, 8), np.float32), labels=labels)
    text = objectives_text(vision_data).replace(f"{vision_data}/task.npz", str(tmp_path / "huge.npz"))
    with pytest.raises(
        UserError, match="^objective arrays: huge.npz: labels run from 0 to 9223372036854775809"
    ):
        Evaluator.from_recipe(load_recipe(vision_recipe(tiny_pools, tmp_path, text)))
