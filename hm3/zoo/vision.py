"""The vision zoo: a tiny CLIP vision tower on scikit-learn's 8x8 digits, and domain specialists.

The base is pretrained to classify the original digits. Each specialist fine-tunes the whole tower plus its
own head on one domain of the same digits, as in CLIP task arithmetic where only the encoder is merged:

* ``rotated``: images turned 90 degrees counter-clockwise;
* ``inverted``: ink and paper swapped (``1 - x``);
* ``permuted``: pixels shuffled by one fixed random permutation (seeded by the zoo seed).

Images are scaled to [0, 1], transformed, then normalized as ``(x - 0.5) / 0.5`` to one channel, which is
what the ``.npz`` files hold (``pixel_values`` float32 [N, 1, 8, 8], ``labels`` int64 [N]). A head is a
linear layer on ``CLIPVisionModel(...).pooler_output`` stored as ``head.safetensors`` (``weight``
[10, hidden], ``bias`` [10]) beside the model, described by ``head.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from transformers import CLIPVisionConfig, CLIPVisionModel

DOMAINS: tuple[str, ...] = ("rotated", "inverted", "permuted")
"""The vision tasks, one specialist each."""

NUM_CLASSES = 10
TEST_FRACTION = 0.3


def digits_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test images in [0, 1] ([N, 8, 8] float32) and labels, split once, stratified, by ``seed``."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, random_state=seed, stratify=labels
    )
    return x_train, x_test, y_train, y_test


def domain_transform(domain: str, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """The image transformation of a domain (``original`` is the identity), on [N, 8, 8] arrays in [0, 1]."""
    if domain == "original":
        return lambda x: x
    if domain == "rotated":
        return lambda x: np.ascontiguousarray(np.rot90(x, k=1, axes=(1, 2)))
    if domain == "inverted":
        return lambda x: 1.0 - x
    if domain == "permuted":
        order = np.random.default_rng(seed + 7919).permutation(64)
        return lambda x: x.reshape(len(x), 64)[:, order].reshape(len(x), 8, 8)
    raise ValueError(f"unknown domain {domain!r}")


def to_pixel_values(images: np.ndarray) -> np.ndarray:
    """[N, 8, 8] in [0, 1] -> normalized float32 [N, 1, 8, 8], what the model takes."""
    return ((images - 0.5) / 0.5).astype("float32")[:, None, :, :]


def vit_config(hidden: int, layers: int, heads: int) -> Any:
    """A ``CLIPVisionConfig`` for 8x8 one-channel images in 2x2 patches (16 patches plus the class token)."""
    return CLIPVisionConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        projection_dim=hidden,
    )


def new_classifier(config: Any, seed: int) -> tuple[Any, torch.nn.Linear]:
    """A freshly initialized ``CLIPVisionModel`` and linear head, their weights a function of ``seed``."""
    torch.manual_seed(seed)
    encoder = CLIPVisionModel(config)
    head = torch.nn.Linear(config.hidden_size, NUM_CLASSES)
    return encoder, head


def train_classifier(
    encoder: Any,
    head: torch.nn.Linear,
    pixel_values: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
    on_step: Callable[[int, float], None] | None = None,
) -> float:
    """Train encoder and head together with AdamW and cosine decay; returns the last epoch's mean loss."""
    x = torch.from_numpy(pixel_values)
    y = torch.from_numpy(labels)
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=lr * 0.1)
    generator = torch.Generator().manual_seed(seed)
    encoder.train()
    step, epoch_loss = 0, 0.0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            logits = head(encoder(pixel_values=x[index]).pooler_output)
            loss = torch.nn.functional.cross_entropy(logits, y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            total += loss.item() * len(index)
            if on_step is not None:
                on_step(step, loss.item())
        epoch_loss = total / len(x)
    encoder.eval()
    return epoch_loss


def accuracy(encoder: Any, head: torch.nn.Linear, pixel_values: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``head(encoder(x).pooler_output)``."""
    with torch.no_grad():
        logits = head(encoder(pixel_values=torch.from_numpy(pixel_values)).pooler_output)
    return float((logits.argmax(-1).numpy() == labels).mean())


def save_classifier(encoder: Any, head: torch.nn.Linear, folder: Path, domain: str) -> None:
    """Save the tower (safetensors) and its head (``head.safetensors`` + ``head.json``)."""
    encoder.save_pretrained(folder, safe_serialization=True)
    save_file(
        {"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()},
        str(folder / "head.safetensors"),
    )
    (folder / "head.json").write_text(
        json.dumps(
            {
                "applies_to": "CLIPVisionModel(pixel_values).pooler_output",
                "weight": [NUM_CLASSES, encoder.config.hidden_size],
                "bias": [NUM_CLASSES],
                "num_classes": NUM_CLASSES,
                "labels": list(range(NUM_CLASSES)),
                "trained_on": domain,
            },
            indent=2,
        )
        + "\n"
    )


def load_classifier(folder: Path) -> tuple[Any, torch.nn.Linear]:
    """Load a tower and its head back from a zoo folder."""
    encoder = CLIPVisionModel.from_pretrained(folder).eval()
    tensors = load_file(str(folder / "head.safetensors"))
    head = torch.nn.Linear(tensors["weight"].shape[1], tensors["weight"].shape[0])
    head.load_state_dict(tensors)
    return encoder, head


def write_npz(path: Path, pixel_values: np.ndarray, labels: np.ndarray) -> None:
    """Write an evaluation set: ``pixel_values`` float32 [N, 1, 8, 8] and ``labels`` int64 [N]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez(handle, pixel_values=pixel_values.astype(np.float32), labels=labels.astype(np.int64))
