"""Candidates as runnable models: the merged state dicts and routing pools a search needs, built on demand.

A candidate is data (:class:`hm3.search.candidate.Candidate`) and becomes a model only in memory
(:meth:`CandidateModels.build`), sharing the pool's tensors. The K fine-tuned
models are the identity paths of models 0..K−1 over a pool whose shared tensors come from each model itself.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from hm3.merge.engine import merge_state_dict
from hm3.pool import BASE, ModelPool
from hm3.routing.agent import path_scorer_from_recipe
from hm3.routing.builder import build_routed_model
from hm3.routing.path import InferencePath
from hm3.routing.pool import RoutingPool
from hm3.routing.residency import DeviceLayerCache
from hm3.routing.scoring import PathEvaluation, PathScorer
from hm3.search.candidate import Candidate

if TYPE_CHECKING:
    import torch

    from hm3.merge.spec import MergeSpec
    from hm3.recipe import Recipe


MERGED = "merged"
"""The merged slot's name in the device cache, with its merge's key (its layers are dropped with the merge)."""
BASE_MEMBER = "base"
"""The base model's name in the device cache (slot K of the architecture-only pool)."""


class CandidateModels:
    """Builds merged models and routed candidates over one model pool, keeping the last merge in memory (the
    last :attr:`kept_merges`: a conditioned agent's training routes over several merges at once).

    Args:
        pool: The base and the K fine-tuned models.
        recipe: Supplies the alignment mode.
        calibration: The ``stats`` alignment batch (None for alignment ``none``).
    """

    def __init__(self, pool: ModelPool, recipe: Recipe, calibration: dict[str, Any] | None) -> None:
        self.pool = pool
        self.recipe = recipe
        self.calibration = calibration
        self._merges: OrderedDict[str, RoutingPool] = OrderedDict()
        self.kept_merges = 1
        """How many merges' routing pools stay in memory, least recently used out (each holds its merged model)."""
        self._finetuned: RoutingPool | None = None
        self.cache = (
            DeviceLayerCache(pool.compute_device, pool.device_memory)
            if pool.device_memory is not None
            else None
        )
        """The device cache of an offloaded pool (one per search: both routing pools share it)."""

    @staticmethod
    def merge_key(spec: MergeSpec) -> str:
        return json.dumps(spec.model_dump(mode="json"), sort_keys=True)

    def routing_pool(self, spec: MergeSpec | None) -> RoutingPool:
        """The K fine-tuned models plus ``spec``'s merge (merged in memory; the last :attr:`kept_merges` are
        kept), or — for ``spec`` None — plus the base model (the architecture-only pool, with the base's shared
        tensors)."""
        if spec is None:
            return self.base_pool()
        key = self.merge_key(spec)
        routing = self._merges.get(key)
        if routing is not None:
            self._merges.move_to_end(key)
            return routing
        while self._merges and len(self._merges) >= self.kept_merges:
            dropped, _ = self._merges.popitem(last=False)  # free the oldest merge first
            if self.cache is not None:
                self.cache.forget((MERGED, dropped))
        merged = merge_state_dict(self.pool, spec, cached=True)
        routing = RoutingPool.from_model_pool(
            self.pool, merged, cache=self.cache, merged_member=(MERGED, key)
        )
        self._merges[key] = routing
        return routing

    def path_scorer(self, routing: RoutingPool, evaluate: PathEvaluation | None = None) -> PathScorer:
        """A :class:`PathScorer` with the recipe's alignment over ``routing`` (``evaluate``: how a new path
        is scored — a search's budgeted evaluation)."""
        return path_scorer_from_recipe(routing, None, self.recipe, self.calibration, evaluate=evaluate)

    def base_pool(self) -> RoutingPool:
        """The K fine-tuned models plus the base model in slot K (tensors shared with the model pool)."""
        if self._finetuned is None:
            self._finetuned = RoutingPool.from_model_pool(
                self.pool,
                self.pool.state_dict(BASE),
                cache=self.cache,
                merged_member=BASE_MEMBER,
                stored_slot=True,
            )
        return self._finetuned

    def build(self, candidate: Candidate) -> torch.nn.Module:
        """The model of ``candidate``: a fine-tuned model exactly, or its path over its merge's pool (aligned
        with the recipe's mode when ``candidate.alignment`` is ``stats``)."""
        if candidate.finetuned is not None:
            return self.finetuned(self.pool.model_names.index(candidate.finetuned))
        routing = self.routing_pool(candidate.merge_spec())
        path = candidate.inference_path(routing)
        if candidate.alignment == "none" or candidate.is_plain:
            return build_routed_model(routing, path)
        return self.path_scorer(routing).build(path)

    def finetuned(self, index: int) -> torch.nn.Module:
        """Fine-tuned model ``index`` exactly (its own layers, embeddings, norm and head, and its own config:
        a code model's rope base is not the base's; tensors shared)."""
        routing = self.base_pool()
        path = InferencePath.identity(index, routing.num_layers)
        return build_routed_model(routing, path, shared_source=index, own_config=self.pool.own_config(index))
