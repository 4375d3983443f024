"""``head: zeroshot``: CLIP's zero-shot head, from the base CLIPModel's text tower and the data set's class names,
gives CLIP's own predictions; recipes that cannot have one are refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from tests.fixtures_models import hm3_in_process, write_recipe

CLASS_NAMES = ("cat", "dog", "bird")


def _tokenizer_files(folder: Path) -> dict[str, int]:
    """A byte-level CLIP tokenizer without merges (every character a token): CLIP's format, tiny."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    characters = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(characters)}
    vocab.update({c + "</w>": len(characters) + i for i, c in enumerate(characters)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt")).save_pretrained(folder)
    return vocab


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A full CLIPModel base with its tokenizer, two fine-tunes of its vision tower, and labelled images."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    root = tmp_path_factory.mktemp("tiny_clip")
    base = root / "base"
    base.mkdir()
    vocab = _tokenizer_files(base)
    end = vocab["<|endoftext|>"]
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    text.update(num_attention_heads=2, max_position_embeddings=32, bos_token_id=end - 1, eos_token_id=end)
    text.update(pad_token_id=end)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    vision.update(image_size=8, patch_size=4)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    model.save_pretrained(base)
    for i in range(2):
        with torch.no_grad():
            for parameter in model.vision_model.parameters():
                parameter.add_(0.5 * torch.randn_like(parameter))
        model.save_pretrained(root / f"ft{i}")
    rng = np.random.default_rng(0)
    np.savez(
        root / "task.npz",
        pixel_values=rng.normal(size=(60, 3, 8, 8)).astype(np.float32),
        labels=rng.integers(0, len(CLASS_NAMES), size=60).astype(np.int64),
        class_names=np.array(CLASS_NAMES),
    )
    np.savez(
        root / "unnamed.npz", pixel_values=np.zeros((6, 3, 8, 8), np.float32), labels=np.zeros(6, np.int64)
    )
    return root


def _recipe(
    clip: Path, folder: Path, head: str = "head: zeroshot", data: str = "task.npz", base: Path | None = None
):
    models = "".join(f"  - {{name: ft{i}, path: {clip / f'ft{i}'}}}\n" for i in range(2))
    objective = f"  - {{name: animals, model: ft0, dataset: {{format: npz, path: {clip / data}}}, {head}}}\n"
    objective += f"  - {{name: again, model: ft1, dataset: {{format: npz, path: {clip / data}}}, {head}}}\n"
    return write_recipe(
        folder, f"base_model: {base or clip / 'base'}\nmodels:\n{models}objectives:\n{objective}"
    )


def _clip_accuracy(
    clip: Path, vision_from: Path, templates: list[str], class_names: tuple[str, ...] = CLASS_NAMES
) -> float:
    """CLIP's own zero-shot accuracy: the base CLIPModel, its vision tower taken from ``vision_from``."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(clip / "base").eval()
    model.vision_model.load_state_dict(CLIPModel.from_pretrained(vision_from).vision_model.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(clip / "base")
    arrays = np.load(clip / "task.npz")
    pixels, labels = torch.from_numpy(arrays["pixel_values"]), torch.from_numpy(arrays["labels"])
    with torch.no_grad():
        if len(templates) == 1:  # CLIP's forward pass itself
            batch = tokenizer(
                [templates[0].format(c) for c in class_names], padding=True, return_tensors="pt"
            )
            logits = model(**batch, pixel_values=pixels).logits_per_image
        else:  # task arithmetic's ensemble over templates
            rows = []
            for name in class_names:
                batch = tokenizer([t.format(name) for t in templates], padding=True, return_tensors="pt")
                rows.append(
                    F.normalize(
                        F.normalize(model.get_text_features(**batch).pooler_output, dim=-1).mean(0), dim=0
                    )
                )
            logits = (
                F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
                @ torch.stack(rows).T
            )
    return int((logits.argmax(-1) == labels).sum()) / len(labels)


@pytest.mark.parametrize("templates", [["a photo of a {}."], ["a photo of a {}.", "a {} in the wild", "{}"]])
def test_zeroshot_accuracy_is_clips_own(tiny_clip, tmp_path, templates) -> None:
    head = f"head: zeroshot, templates: {json.dumps(templates)}"
    recipe = _recipe(tiny_clip, tmp_path, head)
    assert main(["validate", str(recipe)]) == 0
    models = [tiny_clip / "base", tiny_clip / "ft0", tiny_clip / "ft1"]
    done = hm3_in_process(
        "eval", "--recipe", recipe, "--split", "all", "--json", "--model", models[0], "--models", *models[1:]
    )
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)["scores"]
    expected = {str(m): _clip_accuracy(tiny_clip, m, templates) for m in models}
    assert {m: s["animals"] for m, s in scores.items()} == expected
    assert len(set(expected.values())) > 1  # the vision towers differ, and so do their scores


def test_class_names_in_the_recipe_name_the_classes_in_place_of_the_datas(
    tiny_clip, tmp_path, capsys
) -> None:
    """``class_names`` (the names a benchmark fine-tuned against, e.g. FusionBench's for the CLIP recipes) replace
    the data set's own; unset, they are not written to a run's recipe (old runs keep their scoring key); a list of
    another length than the data's, on a head file, or with a repeated name is one line."""
    from hm3.recipe import load_recipe

    names = ("a small tabby", "a sleeping puppy", "a red sparrow")
    recipe = _recipe(tiny_clip, tmp_path, f"head: zeroshot, class_names: {json.dumps(list(names))}")
    assert main(["validate", str(recipe)]) == 0
    assert load_recipe(recipe).model_dump()["objectives"][0]["class_names"] == list(names)
    models = [tiny_clip / "base", tiny_clip / "ft0", tiny_clip / "ft1"]
    done = hm3_in_process("eval", "--recipe", recipe, "--split", "all", "--json", "--models", *models)
    assert done.returncode == 0, done.stderr
    scores = {m: s["animals"] for m, s in json.loads(done.stdout)["scores"].items()}
    expected = {str(m): _clip_accuracy(tiny_clip, m, ["a photo of a {}."], names) for m in models}
    assert scores == expected
    assert expected != {str(m): _clip_accuracy(tiny_clip, m, ["a photo of a {}."]) for m in models}
    with np.load(tiny_clip / "task.npz") as arrays:  # the same images without names of their own
        np.savez(tmp_path / "nameless.npz", pixel_values=arrays["pixel_values"], labels=arrays["labels"])
    data = f"{{format: npz, path: {tiny_clip / 'task.npz'}}}"
    recipe.write_text(recipe.read_text().replace(data, f"{{format: npz, path: {tmp_path / 'nameless.npz'}}}"))
    done = hm3_in_process("eval", "--recipe", recipe, "--split", "all", "--json", "--models", *models)
    assert done.returncode == 0, done.stderr
    assert {m: s["animals"] for m, s in json.loads(done.stdout)["scores"].items()} == expected

    (tmp_path / "plain").mkdir()
    plain = _recipe(tiny_clip, tmp_path / "plain")
    assert "class_names" not in load_recipe(plain).model_dump()["objectives"][0]
    two = _recipe(tiny_clip, tmp_path / "plain", "head: zeroshot, class_names: [cat, dog]")
    done = hm3_in_process("eval", "--recipe", two, "--model", models[1])
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "objective animals: class_names lists 2 classes and the data set names 3" in done.stderr
    for i, (head, expected_line) in enumerate(
        [
            (
                f"head: {tmp_path / 'h.safetensors'}, class_names: [a, b, c]",
                "objectives[0]: class_names: they name the classes of a 'head: zeroshot' only",
            ),
            ("head: zeroshot, class_names: [cat, dog, cat]", "class names 0 and 2 are both 'cat'"),
            ("head: zeroshot, class_names: [cat, ' ', bird]", "class name 1 is empty"),
            ("head: zeroshot, class_names: []", "objectives[0].class_names"),
        ]
    ):
        (tmp_path / f"bad{i}").mkdir()
        assert main(["validate", str(_recipe(tiny_clip, tmp_path / f"bad{i}", head))]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert any(expected_line in line for line in err) and not any("Traceback" in ln for ln in err), err


def test_recipes_that_cannot_have_a_zeroshot_head_are_one_line(
    tiny_clip, tiny_pools, tmp_path, capsys
) -> None:
    unnamed = hm3_in_process(
        "eval", "--recipe", _recipe(tiny_clip, tmp_path, data="unnamed.npz"), "--model", tiny_clip / "ft0"
    )
    assert unnamed.returncode == 2 and unnamed.stderr.count("\n") == 1, unnamed.stderr
    assert "objective animals: head: zeroshot needs the class names, and" in unnamed.stderr
    assert "an npz file's 'class_names' array" in unnamed.stderr
    vision_only = tiny_pools["clip_vision"].base  # a CLIPVisionModel: no text tower
    for i, (settings, expected) in enumerate(
        [
            ({"base": vision_only}, "objectives[0].head: zeroshot needs base_model to be a full CLIPModel"),
            (
                {"head": "head: zeroshot, templates: ['a {name}']"},
                "template 0 ('a {name}') must hold {} once",
            ),
            ({"head": "head: zeroshot, templates: ['a photo']"}, "template 0 ('a photo') must hold {} once"),
            (
                {"head": f"head: {tmp_path / 'h.safetensors'}, templates: ['a {{}}']"},
                "templates: they phrase the class names of a 'head: zeroshot' only",
            ),
        ]
    ):
        (tmp_path / f"case{i}").mkdir()
        assert main(["validate", str(_recipe(tiny_clip, tmp_path / f"case{i}", **settings))]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert any(expected in line for line in err) and not any("Traceback" in line for line in err), err
    copy = tmp_path / "copy"
    shutil.copytree(tiny_clip / "base", copy)
    (copy / "tokenizer.json").unlink()
    (copy / "vocab.json").write_text("{damaged")
    done = hm3_in_process(
        "eval", "--recipe", _recipe(tiny_clip, tmp_path, base=copy), "--model", tiny_clip / "ft0"
    )
    assert done.returncode == 2 and "head: zeroshot needs the base model's tokenizer" in done.stderr, (
        done.stderr
    )


@pytest.fixture
def own_datasets_cache(tmp_path, monkeypatch) -> None:
    """A datasets cache of the test's own: ``datasets`` finds a local image folder's prepared copy by a key
    that does not follow the folder's place, and an earlier test's copy names image files since deleted."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


@pytest.mark.usefixtures("own_datasets_cache")
def test_a_hub_style_data_set_gives_its_class_names_and_a_wrong_column_is_one_line(
    tiny_clip, tmp_path
) -> None:
    """``format: hf`` (here a local image folder, read by ``datasets``): its ClassLabel names name the classes; a
    column the data set lacks, or one of the wrong kind, was a traceback from ``datasets``."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for name in CLASS_NAMES:
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    recipe = _recipe(tiny_clip, tmp_path)
    data = f"{{format: npz, path: {tiny_clip / 'task.npz'}}}"
    for keys, expected in [
        ("", None),
        (", image_key: img", "has no column 'img' (its columns: image, label); set dataset.image_key"),
        (", label_key: image", "column 'image' does not hold class ids (whole numbers)"),
    ]:
        hf = f"{{format: hf, path: {tmp_path / 'images'}, split: train{keys}}}"
        recipe.write_text(recipe.read_text().replace(data, hf))
        data = hf
        done = hm3_in_process(
            "eval", "--recipe", recipe, "--model", tiny_clip / "ft0", "--split", "all", "--json"
        )
        if expected is None:
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["scores"][str(tiny_clip / "ft0")]["animals"] >= 0
        else:
            assert done.returncode == 2 and done.stderr.count("\n") == 1 and expected in done.stderr, (
                done.stderr
            )


@pytest.mark.usefixtures("own_datasets_cache")
def test_a_hub_data_set_with_several_configurations_is_read_in_the_one_the_recipe_names(
    tiny_clip, tmp_path, capsys
) -> None:
    """``dataset.config`` (``datasets.load_dataset``'s ``name``: SVHN's ``cropped_digits`` in the CLIP recipes) picks
    the configuration; none where the data set has several, or one it lacks, is one line naming the field and
    what the data set has (``datasets`` says it over several lines)."""
    from PIL import Image

    rng = np.random.default_rng(2)
    layouts = {"first": CLASS_NAMES, "second": (*CLASS_NAMES, "fish")}
    for config, classes in layouts.items():
        for name in classes:
            (tmp_path / "hub" / config / name).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "hub" / config / name / f"{i}.png")
    configs = "".join(f"- config_name: {c}\n  data_dir: {c}\n" for c in layouts)
    (tmp_path / "hub" / "README.md").write_text(f"---\nconfigs:\n{configs}---\n")
    recipe = _recipe(tiny_clip, tmp_path, "head: zeroshot, class_names: [cat, dog, bird]")
    data = f"{{format: npz, path: {tiny_clip / 'task.npz'}}}"
    for config, expected in [
        ("first", None),  # 3 classes: the recipe's 3 names fit
        ("second", "class_names lists 3 classes and the data set names 4"),  # its 4 classes: read from it
        (None, "has several configurations: set dataset.config to one of ['first', 'second']"),
        ("third", "dataset.config 'third' is not a configuration of"),
    ]:
        setting = "" if config is None else f", config: {config}"
        hf = f"{{format: hf, path: {tmp_path / 'hub'}, split: train{setting}}}"
        recipe.write_text(recipe.read_text().replace(data, hf))
        data = hf
        done = hm3_in_process("eval", "--recipe", recipe, "--model", tiny_clip / "ft0", "--split", "all")
        if expected is None:
            assert done.returncode == 0, done.stderr
        else:  # one line, after the progress `datasets` shows while it reads a configuration the first time
            error = [line for line in done.stderr.splitlines() if line.startswith("hm3 eval:")]
            assert done.returncode == 2 and len(error) == 1 and expected in error[0], done.stderr
            assert done.stderr.endswith(error[0] + "\n") and "Traceback" not in done.stderr
    npz = f"{{format: npz, path: {tiny_clip / 'task.npz'}, config: first}}"
    recipe.write_text(recipe.read_text().replace(data, npz))
    assert main(["validate", str(recipe)]) == 2
    assert "config: applies to format: hf only" in capsys.readouterr().err


def test_vision_tower_fine_tunes_saved_either_way_merge_with_a_full_clip_base(tiny_clip, tmp_path) -> None:
    """The paper's CLIP setting: a full ``CLIPModel`` base (``vision_model.encoder...``) and fine-tunes saved as
    ``CLIPVisionModel`` — by transformers 4, as the published encoders were (``vision_model.`` kept), or by
    transformers 5, as a user on this stack saves one (``encoder...``, no prefix: refused as "lacks
    vision_model..." before). Both score as the same weights inside full CLIPModels do."""
    from safetensors.torch import load_file, save_file
    from transformers import CLIPModel, CLIPVisionModel

    towers = {}
    for i in range(2):
        full = CLIPModel.from_pretrained(tiny_clip / f"ft{i}")
        tower = CLIPVisionModel(full.config.vision_config)
        tower.load_state_dict(full.vision_model.state_dict())
        for layout in ("transformers5", "transformers4"):
            folder = tmp_path / layout / f"ft{i}"
            tower.save_pretrained(folder)
            weights = load_file(folder / "model.safetensors")
            assert not any(n.startswith("vision_model.") for n in weights)  # how transformers 5 saves it
            if layout == "transformers4":
                save_file({f"vision_model.{n}": t for n, t in weights.items()}, folder / "model.safetensors")
            towers[layout, i] = folder
    expected, fronts = None, []
    for layout in ("full", "transformers5", "transformers4"):
        folder = tmp_path / f"run-{layout}"
        folder.mkdir()
        recipe = _recipe(tiny_clip, folder)
        if layout != "full":
            text = recipe.read_text()
            for i in range(2):
                text = text.replace(f"path: {tiny_clip / f'ft{i}'}}}", f"path: {towers[layout, i]}}}")
            recipe.write_text(text)
        models = (
            [tiny_clip / "ft0", tiny_clip / "ft1"]
            if layout == "full"
            else [towers[layout, 0], towers[layout, 1]]
        )
        done = hm3_in_process("eval", "--recipe", recipe, "--split", "all", "--json", "--models", *models)
        assert done.returncode == 0, done.stderr
        scores = list(json.loads(done.stdout)["scores"].values())
        expected = expected or scores
        assert scores == expected, layout
        search = (
            "parameter_level: {method: task_arithmetic, budget: 3}\narchitecture_level: {enabled: false}\n"
        )
        recipe.write_text(recipe.read_text() + search + "preferences: {count: 1}\n")
        merged = hm3_in_process("merge", "--recipe", recipe, "--out", folder / "run", "--quiet")
        assert merged.returncode == 0, merged.stderr
        fronts.append(json.loads((folder / "run" / "front.json").read_text())["members"])
    assert fronts[1] == fronts[2] and [m["scores"] for m in fronts[0]] == [m["scores"] for m in fronts[1]]
