"""The routing pool: the K fine-tuned models plus the parameter-merged model, as K+1 in-memory state dicts.

Model ``i < K`` is fine-tuned model ``i`` of the :class:`~hm3.pool.ModelPool` (its cached
:meth:`~hm3.pool.ModelPool.state_dict`), model ``K`` is the merged model (a ``dict[str, Tensor]`` from the
parameter level). Nothing is copied: routed models are built from these very tensors.

**Shared tensors.** Tensors outside the layers (embeddings, final norm, ``lm_head``; CLIP's patch/position
embeddings and pre/post layer norms) come from one model, :attr:`RoutingPool.shared_source`, the merged model
by default: it is the pool member that is a compromise between all skills, and a path mostly of one
fine-tuned model still reads and writes the merged vocabulary. A builder call may override it (the identity
path of model ``i`` with ``shared_source=i`` is model ``i`` exactly).

**Offload.** With a :class:`~hm3.routing.residency.DeviceLayerCache` (``cache``), the state dicts are host
tensors and a routed model gets device copies of the groups its path uses (:meth:`RoutingPool.device_groups`);
``members`` names each model for the cache, so that two pools of one search (the merge's and the
architecture-only one) share the fine-tuned models' cached layers.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hm3.arch import Backbone
from hm3.errors import UserError

if TYPE_CHECKING:
    import torch

    from hm3.pool import ModelPool
    from hm3.routing.residency import DeviceLayerCache

SHARED = "shared"
"""The cache key's second part for a model's shared (non-layer) tensors."""


@dataclass(eq=False)
class RoutingPool:
    """K fine-tuned state dicts plus the merged one, with the facts a routed model needs.

    Attributes:
        backbone: The backbone family.
        config: The base model's ``config.json`` contents.
        state_dicts: K + 1 state dicts; index K is the merged model.
        names: A name per model (the merged one is ``merged``).
        folders: Each model's folder on disk, or None (an in-memory merged model); mergekit exports need them.
        tokenizer_folder: Where the tokenizer of saved models comes from.
        shared_source: The model whose non-layer tensors routed models use (default: K, the merged model).
        cache: The device cache of an offloaded search (None: the state dicts are on the device already).
        casts: With ``cache``, the dtype each model's floating tensors take on the device (None: as held); the
            fine-tuned models and the base are held as stored, the merged model as merged.
        members: Each model's name in ``cache`` (default: ``names``; from a model pool: the fine-tuned models'
            indices and ``merged_member``).
    """

    backbone: Backbone
    config: dict[str, Any]
    state_dicts: list[dict[str, torch.Tensor]]
    names: list[str]
    folders: list[Path | None]
    tokenizer_folder: Path | None = None
    shared_source: int = -1
    cache: DeviceLayerCache | None = None
    casts: list[torch.dtype | None] = field(default_factory=list)
    members: list[Hashable] = field(default_factory=list)
    _layer_names: dict[int, list[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.state_dicts) < 2:
            raise UserError("a routing pool needs at least one fine-tuned model and the merged model")
        if self.shared_source < 0:
            self.shared_source = self.merged_index
        if not self.members:
            self.members = list(self.names)
        if not self.casts:
            self.casts = [None] * len(self.state_dicts)
        reference = self.state_dicts[0]
        for index, state in enumerate(self.state_dicts[1:], start=1):
            if set(state) != set(reference):
                missing = sorted(set(reference) ^ set(state))[:3]
                raise UserError(f"routing pool: model {self.names[index]} has different tensors ({missing})")

    @classmethod
    def from_model_pool(
        cls,
        pool: ModelPool,
        merged: dict[str, torch.Tensor],
        merged_folder: str | Path | None = None,
        cache: DeviceLayerCache | None = None,
        merged_member: Hashable = "merged",
        stored_slot: bool = False,
    ) -> RoutingPool:
        """The routing pool of a model pool and its parameter-merged state dict.

        Args:
            pool: The base and K fine-tuned models.
            merged: The merged model's tensors (same names as the pool's).
            merged_folder: Where the merged model is saved, if it is (for mergekit exports).
            cache: The search's device cache when the pool is offloaded (host tensors as stored, cast to the
                pool's compute dtype on the move; ``merged`` as it is).
            merged_member: The merged slot's name in ``cache``.
            stored_slot: Slot K holds a checkpoint as stored (the base model of the architecture-only pool):
                cast like the fine-tuned models on the move.
        """
        states = [pool.state_dict(i) for i in range(len(pool.models))]
        missing = sorted(set(states[0]) - set(merged))
        if missing:
            raise UserError(f"merged model lacks {missing[:3]}")
        merged = {name: merged[name] for name in states[0]}
        return cls(
            backbone=pool.backbone,
            config=pool.base.config,
            state_dicts=[*states, merged],
            names=[*pool.model_names, "merged"],
            folders=[*(m.folder for m in pool.models), Path(merged_folder) if merged_folder else None],
            tokenizer_folder=pool.base.folder,
            cache=cache,
            casts=[
                *(pool.compute_dtype for _ in pool.models),
                pool.compute_dtype if stored_slot else None,
            ],
            members=[*range(len(pool.models)), merged_member],
        )

    @property
    def merged_index(self) -> int:
        """K, the index of the merged model."""
        return len(self.state_dicts) - 1

    @property
    def num_models(self) -> int:
        """K + 1."""
        return len(self.state_dicts)

    @cached_property
    def num_layers(self) -> int:
        """L, the layers of each model."""
        return self.backbone.num_layers(self.config)

    @cached_property
    def shared_tensor_names(self) -> list[str]:
        """Tensors outside the layers."""
        return [n for n in self.state_dicts[0] if self.backbone.layer_of(n) is None]

    def layer_tensor_names(self, layer: int) -> list[str]:
        """Tensor names of layer ``layer`` (identical in every model)."""
        if not self._layer_names:
            for name in self.state_dicts[0]:
                index = self.backbone.layer_of(name)
                if index is not None:
                    self._layer_names.setdefault(index, []).append(name)
        return self._layer_names[layer]

    def layer_tensors(self, model: int, layer: int) -> list[torch.Tensor]:
        """The tensors of one layer of one model, in :meth:`layer_tensor_names` order, with the values a
        candidate runs on (an offloaded pool's host tensors cast to the run's dtype: copies)."""
        cast = self.casts[model]
        return [
            t.to(cast) if cast is not None and t.is_floating_point() else t
            for t in self._held_layer(model, layer)
        ]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype candidates run in (the fine-tuned models' tensors as candidates get them)."""
        return self.casts[0] or next(iter(self.state_dicts[0].values())).dtype

    def _held_layer(self, model: int, layer: int) -> list[torch.Tensor]:
        state = self.state_dicts[model]
        return [state[name] for name in self.layer_tensor_names(layer)]

    def device_groups(
        self, source: int, steps: Iterable[tuple[int, int]]
    ) -> tuple[dict[str, torch.Tensor], dict[tuple[int, int], list[torch.Tensor]]]:
        """The tensors a routed model of ``steps`` runs on: ``source``'s shared tensors by name, and each distinct
        ``(model, layer)``'s tensors in :meth:`layer_tensor_names` order — the state dicts' own tensors, or their
        device copies through ``cache`` (moved now where missing)."""
        distinct = list(dict.fromkeys(steps))
        if self.cache is None:
            shared = {n: self.state_dicts[source][n] for n in self.shared_tensor_names}
            return shared, {step: self._held_layer(*step) for step in distinct}
        shared_host = [self.state_dicts[source][n] for n in self.shared_tensor_names]
        groups = [((self.members[source], SHARED), shared_host, self.casts[source])]
        groups += [
            ((self.members[m], layer), self._held_layer(m, layer), self.casts[m]) for m, layer in distinct
        ]
        fetched = list(self.cache.fetch(groups).values())
        shared = dict(zip(self.shared_tensor_names, fetched[0], strict=True))
        return shared, dict(zip(distinct, fetched[1:], strict=True))

    def default_max_length(self) -> int:
        """T_max when the recipe leaves it unset: :func:`default_max_length` of L."""
        return default_max_length(self.num_layers)


def default_max_length(num_layers: int) -> int:
    """T_max when the recipe leaves it unset: 1.5 × L (rounded down, at least L)."""
    return max(num_layers, (3 * num_layers) // 2)
