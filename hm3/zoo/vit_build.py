"""The vision zoo's build steps: domain test sets, the base pretrained on original digits, domain specialists."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from rich.console import Console

from hm3.zoo.config import VIT_PRESETS, ZooConfig
from hm3.zoo.fingerprint import zoo_fingerprint
from hm3.zoo.progress import training_bar
from hm3.zoo.scores import VIT_EVALUATION, vit_scores, write_scores
from hm3.zoo.vision import (
    DOMAINS,
    digits_split,
    domain_transform,
    new_classifier,
    save_classifier,
    to_pixel_values,
    train_classifier,
    vit_config,
    write_npz,
)

BATCH_SIZE = 64


def _steps(epochs: int, count: int) -> int:
    return epochs * -(-count // BATCH_SIZE)


def train_vit_base(zoo: ZooConfig, console: Console) -> tuple[Any, Any]:
    """The base tower and its head, initialized from ``zoo.seed`` and trained on the original digits."""
    preset = VIT_PRESETS[zoo.size]
    x_train, _, y_train, _ = digits_split(zoo.seed)
    encoder, head = new_classifier(vit_config(preset.hidden, preset.layers, preset.heads), zoo.seed)
    with training_bar(
        console, "pretraining base on original digits", _steps(preset.pretrain_epochs, len(x_train))
    ) as on_step:
        train_classifier(
            encoder,
            head,
            to_pixel_values(x_train),
            y_train,
            epochs=preset.pretrain_epochs,
            lr=preset.pretrain_lr,
            seed=zoo.seed,
            batch_size=BATCH_SIZE,
            on_step=on_step,
        )
    return encoder, head


def train_vit_specialist(
    zoo: ZooConfig, encoder: Any, head: Any, domain: str, console: Console
) -> tuple[Any, Any]:
    """Copies of the base tower and head, fine-tuned together on one domain's training images."""
    preset = VIT_PRESETS[zoo.size]
    x_train, _, y_train, _ = digits_split(zoo.seed)
    specialist, specialist_head = copy.deepcopy(encoder), copy.deepcopy(head)
    pixels = to_pixel_values(domain_transform(domain, zoo.seed)(x_train))
    with training_bar(
        console, f"fine-tuning {domain}", _steps(preset.finetune_epochs, len(x_train))
    ) as on_step:
        train_classifier(
            specialist,
            specialist_head,
            pixels,
            y_train,
            epochs=preset.finetune_epochs,
            lr=preset.finetune_lr,
            seed=zoo.seed * 1000 + DOMAINS.index(domain) + 1,
            batch_size=BATCH_SIZE,
            on_step=on_step,
        )
    return specialist, specialist_head


def build_vit_zoo(zoo: ZooConfig, staging: Path, console: Console) -> dict[str, Any]:
    """Build a vision zoo into ``staging``.

    Returns:
        The ``models`` and ``tasks`` entries of the manifest.
    """
    _, x_test, _, y_test = digits_split(zoo.seed)
    tasks: dict[str, Any] = {}
    for domain in DOMAINS:
        data = Path("data") / f"{domain}_test.npz"
        write_npz(staging / data, to_pixel_values(domain_transform(domain, zoo.seed)(x_test)), y_test)
        tasks[domain] = {
            "metric": "accuracy",
            "ood": False,
            "data": str(data),
            "head": f"{domain}/head.safetensors",
        }
    encoder, head = train_vit_base(zoo, console)
    save_classifier(encoder, head, staging / "base", "original")
    models: list[dict[str, Any]] = [{"name": "base", "path": "base", "task": None}]
    for domain in DOMAINS:
        save_classifier(*train_vit_specialist(zoo, encoder, head, domain, console), staging / domain, domain)
        models.append({"name": domain, "path": domain, "task": domain})
    scores = vit_scores(staging, [m["name"] for m in models], tasks)
    fingerprint = zoo_fingerprint(staging)
    header = {"kind": zoo.kind, "family": zoo.family, "size": zoo.size, "seed": zoo.seed}
    write_scores(staging, {**header, "fingerprint": fingerprint}, tasks, scores, VIT_EVALUATION)
    return {
        "fingerprint": fingerprint,
        "models": models,
        "tasks": [{"name": n, **info} for n, info in tasks.items()],
    }
