"""The vision backend: accuracy of a CLIP vision tower with a task head, on npz arrays and image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hm3.errors import UserError
from tests.fixtures_models import run_hm3, write_recipe

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
