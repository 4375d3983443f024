"""The inference path: which layer of which model runs at each step of a routed model.

A pool for routing holds K fine-tuned models and the parameter-merged model, numbered 0..K-1 (the fine-tuned
ones, in recipe order) and K (the merged one). A path is a sequence of ``(model, layer)`` steps of length
1..T_max; repeats and any order are allowed (the paper forbids neither)::

    InferencePath(((3, 0), (3, 1), (0, 1), (0, 2), (3, 3)))   # merged 0-1, model 0's layers 1-2, merged 3

Paths are frozen and hashable (score caches key on them) and round-trip through JSON (:meth:`to_json`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hm3.errors import UserError


@dataclass(frozen=True)
class InferencePath:
    """A sequence of ``(model index, layer index)`` steps.

    Attributes:
        steps: The steps, in execution order; model ``K`` is the parameter-merged model.
    """

    steps: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        steps = tuple((int(m), int(layer)) for m, layer in self.steps)
        if not steps:
            raise UserError("an inference path needs at least one layer")
        if any(m < 0 or layer < 0 for m, layer in steps):
            raise UserError(f"inference path has a negative index: {steps}")
        object.__setattr__(self, "steps", steps)

    @classmethod
    def identity(cls, model: int, num_layers: int) -> InferencePath:
        """Every layer of one model, in order: the model itself."""
        return cls(tuple((model, layer) for layer in range(num_layers)))

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self):
        return iter(self.steps)

    @property
    def models(self) -> tuple[int, ...]:
        """The model index of each step."""
        return tuple(m for m, _ in self.steps)

    @property
    def layers(self) -> tuple[int, ...]:
        """The layer index of each step."""
        return tuple(layer for _, layer in self.steps)

    def check(self, num_models: int, num_layers: int, max_length: int | None = None) -> None:
        """Raise UserError unless every step exists in a pool of ``num_models`` models of ``num_layers`` layers.

        Args:
            num_models: K + 1 (the fine-tuned models and the merged one).
            num_layers: L, the layers of each model.
            max_length: T_max, if the path length is bounded.
        """
        bad = [(m, layer) for m, layer in self.steps if m >= num_models or layer >= num_layers]
        if bad:
            raise UserError(
                f"inference path step(s) {bad} outside the pool ({num_models} models of {num_layers} layers)"
            )
        if max_length is not None and len(self) > max_length:
            raise UserError(f"inference path has {len(self)} layers, more than T_max = {max_length}")

    def runs(self) -> list[tuple[int, int, int]]:
        """Maximal runs of consecutive layers of one model: ``(model, first_layer, end_layer)`` (end exclusive).

        A run is what one mergekit ``passthrough`` slice can express.
        """
        out: list[tuple[int, int, int]] = []
        for m, layer in self.steps:
            if out and out[-1][0] == m and out[-1][2] == layer:
                out[-1] = (m, out[-1][1], layer + 1)
            else:
                out.append((m, layer, layer + 1))
        return out

    def is_native_input(self, step: int, shared_source: int) -> bool:
        """Whether the hidden state entering ``step`` is what its layer saw in its own model.

        True when the previous step is the same model's previous layer, or for the first step when it is layer
        0 of the model the embeddings come from (``shared_source``).
        """
        m, layer = self.steps[step]
        if step == 0:
            return layer == 0 and m == shared_source
        return self.steps[step - 1] == (m, layer - 1)

    def edit_distance(self, other: InferencePath) -> int:
        """The fewest step replacements, insertions and deletions that turn this path into ``other``."""
        row = list(range(len(other) + 1))
        for i, step in enumerate(self.steps, 1):
            diagonal, row[0] = row[0], i
            for j, target in enumerate(other.steps, 1):
                diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (step != target))
        return row[-1]

    def to_json(self) -> str:
        """A compact JSON form: ``[[m, l], ...]``."""
        return json.dumps([list(s) for s in self.steps])

    def to_data(self) -> list[list[int]]:
        """The steps as nested lists (for JSON records)."""
        return [list(s) for s in self.steps]

    @classmethod
    def from_data(cls, data: Any) -> InferencePath:
        """A path from :meth:`to_data` / :meth:`to_json` output (a JSON string or nested lists)."""
        if isinstance(data, str):
            data = json.loads(data)
        try:
            return cls(tuple((int(m), int(layer)) for m, layer in data))
        except (TypeError, ValueError) as error:
            raise UserError(f"not an inference path: {data!r} ({error})") from None

    def __str__(self) -> str:
        return " ".join(f"{m}:{layer}" for m, layer in self.steps)
