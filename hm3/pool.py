"""The model pool: a base model and K fine-tuned models of it, checked compatible before any heavy work.

What the pool guarantees once built:

* every model is of the base's backbone family (llama, qwen2, mistral, clip_vision), with the same number of
  layers and the same tensors, of the same shapes;
* no model needs ``trust_remote_code`` unless the recipe allows it, and pickle weights only with ``allow_pickle``;
* every tensor :meth:`ModelPool.tensor` returns has the base's shape, under the **vocabulary rule**:

  The merged vocabulary is that of ``tokenizer_source`` (``base`` by default, or one model's name) with
  V rows. For a model with V_m rows, rows ``< min(V, V_m)`` are its own; rows it lacks (``V_m < V``) are taken
  from the ``tokenizer_source`` model; rows beyond V are dropped. So Llama-2-chat (32000) and CodeLlama (32016)
  merge on the base's 32000 rows, the 16 extra CodeLlama rows dropped; with ``tokenizer_source: codellama``
  they merge on 32016 rows and the chat model borrows CodeLlama's 16 extra rows.

Nothing is loaded to validate: names, shapes and dtypes come from the safetensors headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from hm3.arch import Backbone, detect_family
from hm3.checkpoint import Checkpoint, resolve_model_folder
from hm3.errors import ModelError, UserError
from hm3.tokenizer_vocab import conflicting_ids, token_of_id

if TYPE_CHECKING:
    from hm3.recipe import Recipe

BASE = -1
"""Index that :meth:`ModelPool.tensor` and friends accept for the base model."""


@dataclass(frozen=True)
class UncheckedModel:
    """A hub model that could not be inspected (no network and not in the local cache)."""

    name: str
    reference: str
    reason: str


class ModelPool:
    """The base and the K fine-tuned models, with one backbone backbone and per-tensor access.

    Args:
        base: The base checkpoint (task vectors are differences from it).
        models: The K fine-tuned checkpoints, in recipe order.
        tokenizer_source: ``base`` or the name of one model: whose vocabulary the merged model keeps.
        trust_remote_code: Accept models whose config asks for custom code (``auto_map``).
    """

    def __init__(
        self,
        base: Checkpoint,
        models: list[Checkpoint],
        tokenizer_source: str = "base",
        trust_remote_code: bool = False,
    ) -> None:
        if not models:
            raise UserError("the pool needs at least one fine-tuned model")
        self.base = base
        self.models = models
        self.backbone: Backbone = detect_family(base.config, where=f"base model {base.name}")
        self.tokenizer_source = tokenizer_source
        for model in models:
            self._name_like_the_base(model)
        self._check(trust_remote_code)

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> ModelPool:
        """Resolve and check every model a recipe names (hub ids only where a network or cache has them)."""
        base = Checkpoint(resolve_model_folder(recipe.base_model), "base", recipe.allow_pickle)
        models = [
            Checkpoint(resolve_model_folder(ref), ref.name, recipe.allow_pickle) for ref in recipe.models
        ]
        return cls(base, models, recipe.tokenizer_source, recipe.trust_remote_code)

    def _name_like_the_base(self, model: Checkpoint) -> None:
        """Index a fine-tuned model's backbone tensors as the base names them where the two differ only by the
        family's optional prefix: a ``CLIPVisionModel`` saved by transformers 5 (``encoder.layers.0...``) against
        a full ``CLIPModel`` base (``vision_model.encoder.layers.0...``), or the other way round — the same
        tensors, which a user fine-tuning the base's vision tower on this stack gets."""
        prefix = self.backbone.optional_prefix
        if not prefix:
            return

        def prefixed(checkpoint: Checkpoint) -> bool | None:
            names = [n for n in checkpoint.tensors if self.backbone.belongs(n)]
            if names and all(n.startswith(prefix) for n in names):
                return True
            return False if names and not any(n.startswith(prefix) for n in names) else None

        base, own = prefixed(self.base), prefixed(model)
        if base is None or own is None or base == own:
            return
        model.rename_tensors(
            (lambda n: prefix + n if self.backbone.belongs(n) else n)
            if base
            else (lambda n: n.removeprefix(prefix))
        )

    # -- checks -------------------------------------------------------------------------------------------

    def _check(self, trust_remote_code: bool) -> None:
        for checkpoint in (self.base, *self.models):
            if "auto_map" in checkpoint.config and not trust_remote_code:
                raise ModelError(
                    checkpoint.name,
                    "its config asks for custom code (auto_map); "
                    "set 'trust_remote_code: true' in the recipe if you trust it",
                )
        base_layers = self.backbone.num_layers(self.base.config)
        names = set(self.tensor_names)
        for model in self.models:
            family = detect_family(model.config, where=f"model {model.name}")
            if family.family != self.backbone.family:
                raise ModelError(
                    model.name, f"architecture {family.family} differs from the base's {self.backbone.family}"
                )
            layers = self.backbone.num_layers(model.config)
            if layers != base_layers:
                raise ModelError(model.name, f"{layers} layers, the base has {base_layers}")
            self._check_head_tying(model)
            own = self._backbone_tensors(model)
            missing, extra = sorted(names - own), sorted(own - names)
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"lacks {_first(missing)}")
                if extra:
                    parts.append(f"has tensors the base lacks: {_first(extra)}")
                raise ModelError(model.name, f"{'; '.join(parts)}")
            mismatched = [
                f"{n} {list(self._shape(model, n))} vs base {list(self._shape(self.base, n))}"
                for n in self.tensor_names
                if not self._shapes_compatible(n, self._shape(model, n), self._shape(self.base, n))
            ]
            if mismatched:
                raise ModelError(model.name, f"tensor shapes differ from the base: {_first(mismatched)}")
            computes = [
                f"{key} {own!r} vs base {theirs!r}"
                for key, own, theirs in self.config_differences(model)
                if key in LAYER_CONFIG_KEYS
            ]
            if computes:
                raise ModelError(
                    model.name,
                    f"its config differs from the base's where its layers' computation is set ({_first(computes)}): "
                    "under the base's config, which every merge and path is built with, they compute another "
                    "function",
                )
        if self.tokenizer_source != "base" and self.tokenizer_source not in self.model_names:
            raise UserError(f"tokenizer_source {self.tokenizer_source!r} is neither 'base' nor a model name")
        for checkpoint in (self.base, *self.models):
            self._check_declared_vocabulary(checkpoint)
        self._check_token_ids()

    def _check_declared_vocabulary(self, checkpoint: Checkpoint) -> None:
        """The config's ``vocab_size`` is the embeddings' row count (transformers refuses to load it otherwise,
        so such a model would be scored here as no one can run it)."""
        embeddings = next((n for n in self.backbone.vocab_tensors if n in checkpoint.tensors), None)
        declared = self.backbone.backbone_config(checkpoint.config).get("vocab_size")
        if embeddings is None or declared is None:
            return
        rows = checkpoint.tensors[embeddings].shape[0]
        if declared != rows:
            raise ModelError(
                checkpoint.name,
                f"its config.json says vocab_size {declared} but its {embeddings} has {rows} rows "
                "(transformers refuses to load it; fix the config)",
            )

    def _check_token_ids(self) -> None:
        """Every model with a ``tokenizer.json`` gives the merged vocabulary's ids to the tokens the
        ``tokenizer_source`` gives them to: rows are merged, and references scored, by id."""
        reference = token_of_id(self._source.folder) if self.vocab_size is not None else None
        if reference is None:
            return
        assert self.vocab_size is not None
        for checkpoint in (self.base, *self.models):
            own = None if checkpoint is self._source else token_of_id(checkpoint.folder)
            conflicts = [] if own is None else conflicting_ids(own, reference, self.vocab_size)
            if conflicts:
                first = conflicts[0]
                raise ModelError(
                    checkpoint.name,
                    f"its tokenizer gives {len(conflicts)} of the merged vocabulary's ids to other tokens than "
                    f"the tokenizer_source ({self._source.name}) does (id {first}: {own[first]!r} vs "
                    f"{reference[first]!r}): embedding and head rows are merged, and every model scored, by "
                    "id, so these rows would mix different tokens; merge models that share one vocabulary",
                )

    def _check_head_tying(self, model: Checkpoint) -> None:
        """A base that ties its head to its embeddings builds every merge tied: a model with a head of its own
        cannot be merged into it (the other way round is fine: a tied model's head is its embeddings)."""
        if self.backbone.ties_head(self.base.config) and not self.backbone.ties_head(model.config):
            raise ModelError(
                model.name,
                "its config has an output head of its own (tie_word_embeddings false) while the base's ties the "
                "head to the embeddings: every merge and path is built with the base's config, which has no "
                "head to merge it into",
            )

    def stored_name(self, checkpoint: Checkpoint, name: str) -> str:
        """The tensor of ``checkpoint`` that runs as backbone tensor ``name``: the input embeddings for the
        output head of a model whose config ties them, else ``name`` itself. A head stored beside tied
        embeddings is ignored, as lm-eval ignores it (its ``HFLM`` calls ``tie_weights()`` after loading; a bare
        ``from_pretrained`` keeps a stored head that differs, with a warning to fix the config)."""
        tied = self.backbone.tied_head
        if tied is not None and name == tied[0] and self.backbone.ties_head(checkpoint.config):
            return tied[1]
        return name

    def _backbone_tensors(self, checkpoint: Checkpoint) -> set[str]:
        """The backbone tensors a model runs: a tied model's head counts as present (its embeddings) in a pool
        whose base has one, and as absent in a tied pool, whatever the file stores."""
        names = {n for n in checkpoint.tensors if self.backbone.belongs(n)}
        if self.backbone.ties_head(checkpoint.config):
            assert self.backbone.tied_head is not None
            head = self.backbone.tied_head[0]
            names.discard(head)
            if not self.backbone.ties_head(self.base.config):
                names.add(head)
        return names

    def _shape(self, checkpoint: Checkpoint, name: str) -> tuple[int, ...]:
        return tuple(checkpoint.tensors[self.stored_name(checkpoint, name)].shape)

    def _shapes_compatible(self, name: str, shape: tuple[int, ...], base_shape: tuple[int, ...]) -> bool:
        if name in self.backbone.vocab_tensors:
            return shape[1:] == base_shape[1:]
        return shape == base_shape

    # -- facts --------------------------------------------------------------------------------------------

    @property
    def model_names(self) -> list[str]:
        """Names of the K fine-tuned models."""
        return [m.name for m in self.models]

    @property
    def num_layers(self) -> int:
        """L, the number of layers of every model in the pool."""
        return self.backbone.num_layers(self.base.config)

    @cached_property
    def tensor_names(self) -> list[str]:
        """The backbone's tensors, in the base checkpoint's order (without a head the base's config ties to its
        embeddings: merges and paths are built tied, as transformers loads them)."""
        names = self._backbone_tensors(self.base)
        return [n for n in self.base.tensors if n in names]

    def layer_tensor_names(self, layer: int) -> list[str]:
        """Tensors of one layer."""
        return [n for n in self.tensor_names if self.backbone.layer_of(n) == layer]

    def shared_tensor_names(self) -> list[str]:
        """Tensors outside the layers: embeddings, final norm, output head."""
        return [n for n in self.tensor_names if self.backbone.layer_of(n) is None]

    def checkpoint(self, index: int) -> Checkpoint:
        """Model ``index`` (0..K-1), or the base for :data:`BASE`."""
        return self.base if index == BASE else self.models[index]

    @cached_property
    def vocab_size(self) -> int | None:
        """Rows of the merged vocabulary (the ``tokenizer_source`` model's), or None for vision backbones."""
        vocab = [n for n in self.backbone.vocab_tensors if n in self.base.tensors]
        if not vocab:
            return None
        return self._source.tensors[vocab[0]].shape[0]

    @property
    def _source(self) -> Checkpoint:
        if self.tokenizer_source == "base":
            return self.base
        return self.models[self.model_names.index(self.tokenizer_source)]

    def config_differences(self, model: Checkpoint) -> list[tuple[str, object, object]]:
        """``(key, model's value, base's value)`` where a fine-tuned model's backbone config differs from the
        base's, bookkeeping aside (:data:`IGNORED_CONFIG_KEYS`; the vocabulary has its own rule)."""
        own, base = (
            self.backbone.backbone_config(model.config),
            self.backbone.backbone_config(self.base.config),
        )
        keys = sorted((set(own) | set(base)) - IGNORED_CONFIG_KEYS - {self.backbone.num_layers_key})
        return [(key, own.get(key), base.get(key)) for key in keys if own.get(key) != base.get(key)]

    @property
    def config_notes(self) -> dict[str, list[str]]:
        """Per fine-tuned model, the settings its own config gives otherwise than the base's (a rope base, a
        context length, a norm epsilon...): it is scored as itself, with its own config, while merges and paths
        are built with the base's (as mergekit writes them)."""
        notes = {}
        for model in self.models:
            found = [
                f"{key} {own!r} vs base {theirs!r}" for key, own, theirs in self.config_differences(model)
            ]
            if found:
                notes[model.name] = found
        return notes

    def own_config(self, index: int) -> dict[str, Any]:
        """Fine-tuned model ``index``'s config, with the pool's vocabulary size (its vocabulary tensors are fitted
        to it): what scores the model as itself."""
        config = dict(self.models[index].config)
        if self.vocab_size is not None and "vocab_size" in config:
            config["vocab_size"] = self.vocab_size
        return config

    @property
    def vocab_mismatches(self) -> dict[str, int]:
        """Models whose vocabulary differs from the merged one: name -> their row count."""
        if self.vocab_size is None:
            return {}
        name = next(n for n in self.backbone.vocab_tensors if n in self.base.tensors)
        rows = {c.name: c.tensors[name].shape[0] for c in (self.base, *self.models)}
        return {model: count for model, count in rows.items() if count != self.vocab_size}

    # -- tensors ------------------------------------------------------------------------------------------

    def tensor(self, index: int, name: str, mapped: bool = False) -> torch.Tensor:
        """Tensor ``name`` of model ``index`` (or :data:`BASE`), with the vocabulary rule applied (``mapped``:
        backed by a private memory map of its bytes in the file, :class:`hm3.merge.tensor_reader.TensorReader`,
        where the rule leaves it as stored: pages the kernel may drop again)."""
        stored = self.stored_name(self.checkpoint(index), name)
        value = self._mapped_reader(index).load(stored) if mapped else self.checkpoint(index).load(stored)
        if (
            name in self.backbone.vocab_tensors
            and self.vocab_size is not None
            and value.shape[0] != self.vocab_size
        ):
            value = self._fit_vocab(value, name)
        return value

    def _mapped_reader(self, index: int):
        from hm3.merge.tensor_reader import TensorReader  # hm3.merge imports this module

        readers = self.__dict__.setdefault("_readers", {})
        if index not in readers:
            readers[index] = TensorReader(self.checkpoint(index))
        return readers[index]

    def state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Every backbone tensor of model ``index`` (or :data:`BASE`), vocabulary rule applied; loaded once
        and kept, so repeated calls (the search builds many candidates from the same pool) cost nothing."""
        cache: dict[int, dict[str, torch.Tensor]] = self.__dict__.setdefault("_state_dicts", {})
        if index not in cache:
            placement = self.__dict__.get("_placement")
            if placement is None:
                cache[index] = {name: self.tensor(index, name) for name in self.tensor_names}
            elif self.offloaded:  # host memory, as stored: memory-mapped (the move to the device casts)
                cache[index] = {name: self.tensor(index, name, mapped=True) for name in self.tensor_names}
            else:
                device, dtype = placement
                cache[index] = {
                    name: self.tensor(index, name).to(device=device, dtype=dtype)
                    for name in self.tensor_names
                }
        return cache[index]

    def place(self, device: str, dtype: torch.dtype | None, device_memory: int | None = None) -> None:
        """Keep the tensors :meth:`state_dict` returns on ``device`` in ``dtype`` (None: the stored dtype) — or,
        with ``device_memory`` (bytes), in host memory as stored (memory-mapped from safetensors files), for a
        :class:`~hm3.routing.residency.DeviceLayerCache` of that bound to move to ``device`` in ``dtype`` as
        candidates need them (and merges to read one tensor at a time). Call before the first
        :meth:`state_dict`."""
        self.__dict__.pop("_state_dicts", None)
        self._placement = (device, dtype)
        self._device_memory = device_memory

    @property
    def device_memory(self) -> int | None:
        """The device cache's bound when the pool is offloaded (:meth:`place`), else None."""
        return self.__dict__.get("_device_memory")

    @property
    def offloaded(self) -> bool:
        """Whether :meth:`state_dict` holds host tensors for a device cache (:meth:`place` with a bound)."""
        return self.device_memory is not None

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The dtype candidates and merges run in (:meth:`place`; None: the stored one)."""
        placement = self.__dict__.get("_placement")
        return placement[1] if placement else None

    @property
    def compute_device(self) -> str:
        """The device candidates and merges run on (the placed device; ``cpu`` before :meth:`place`)."""
        placement = self.__dict__.get("_placement")
        return str(placement[0]) if placement else "cpu"

    @property
    def parameters_per_model(self) -> int:
        """Elements of one model's backbone tensors (from the base's headers; nothing is read)."""
        total = 0
        for name in self.tensor_names:
            count = 1
            for size in self.base.tensors[name].shape:
                count *= int(size)
            total += count
        return total

    def _fit_vocab(self, value: torch.Tensor, name: str) -> torch.Tensor:
        rows = self.vocab_size
        assert rows is not None
        if value.shape[0] > rows:
            return value[:rows]
        borrowed = self._source.load(self.stored_name(self._source, name))[value.shape[0] : rows]
        borrowed = borrowed.to(value.dtype)
        return torch.cat([value, borrowed], dim=0)

    def close(self) -> None:
        """Release file handles of every checkpoint."""
        for checkpoint in (self.base, *self.models):
            checkpoint.close()
        for reader in self.__dict__.pop("_readers", {}).values():
            reader.close()
        self.__dict__.pop("_state_dicts", None)

    def describe(self) -> dict[str, object]:
        """A summary for ``hm3 pool``: family, layers, sizes, vocabulary."""
        return {
            "family": self.backbone.family,
            "layers": self.num_layers,
            "tensors": len(self.tensor_names),
            "layer_tensors": len(self.layer_tensor_names(0)),
            "shared_tensors": len(self.shared_tensor_names()),
            "models": {c.name: str(c.folder) for c in (self.base, *self.models)},
            "bytes_per_model": self.base.nbytes,
            "vocab_size": self.vocab_size,
            "vocab_mismatches": self.vocab_mismatches,
        }


IGNORED_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "architectures",
        "torch_dtype",
        "dtype",
        "use_cache",
        "vocab_size",
        "model_type",
        "auto_map",
        "_attn_implementation_autoset",
    }
)
"""Config keys that record where a model came from or how it was saved, not what it computes."""
LAYER_CONFIG_KEYS = frozenset(
    {
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "hidden_act",
        "hidden_size",
        "intermediate_size",
    }
)
"""Config keys that set what a layer's tensors compute (how its heads are split, its activation): a model whose
config differs from the base's in one of them cannot lend its layers to a model built with the base's."""


def _first(items: list[str], count: int = 3) -> str:
    shown = ", ".join(items[:count])
    return shown + (f" (and {len(items) - count} more)" if len(items) > count else "")
