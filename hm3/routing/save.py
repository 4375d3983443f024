"""Saving routed models: a Hugging Face checkpoint, the routing record, and a mergekit ``passthrough`` YAML.

A saved routed model is a folder::

    routed/
      config.json, model.safetensors, tokenizer files   # a plain checkpoint: num_hidden_layers = T,
                                                        # layer_types in path order
      hm3_routing.json                                  # the path, the pool's models, the alignment mode
      hm3_alignment.safetensors                         # only for alignment 'stats': step.{t}.scale / shift
      mergekit_config.yml                               # passthrough slices reproducing the weights

With alignment ``none`` the folder is an ordinary model (``AutoModelForCausalLM.from_pretrained``); with
``stats`` the checkpoint alone runs without the maps and :func:`hm3.load_merged` re-attaches them (see
:mod:`hm3.routing.alignment` for why they cannot be folded into the weights). The folder appears only when
complete (written beside it, then renamed).

**mergekit.** ``passthrough`` copies whole layers: one slice per run of consecutive layers of one model. The
non-layer tensors come, in mergekit, from the first slice's model (embeddings) and the last slice's (final
norm, head); hm3 takes them from ``shared_source`` (the merged model), so the YAML opens and closes with an
empty slice (``layer_range: [0, 0]``) of that model. Every source must be a folder on disk, the merged model
included: :func:`ensure_merged_on_disk` writes it first when it only lives in memory (the two-step recipe:
the merge engineer's parameter-level YAML makes the merged model, this YAML routes over it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from safetensors.torch import save_file

from hm3.errors import UserError
from hm3.export import check_output_folder, fix_config, move_into_place, write_hf_checkpoint
from hm3.folder_swap import staging_folder
from hm3.output_guard import mark
from hm3.routing.builder import routed_tensors
from hm3.routing.path import InferencePath
from hm3.routing.pool import RoutingPool

if TYPE_CHECKING:
    import torch

    from hm3.routing.affine import AffineAlignment

ROUTING_FILE = "hm3_routing.json"
ALIGNMENT_FILE = "hm3_alignment.safetensors"
MERGEKIT_FILE = "mergekit_config.yml"
ROUTING_FORMAT = "hm3-routing/1"


def passthrough_config(
    pool: RoutingPool, path: InferencePath, shared_source: int | None = None, dtype: str | None = None
) -> dict[str, Any]:
    """A mergekit ``passthrough`` config (as data) whose output has the routed model's weights.

    Raises:
        UserError: a model the path (or the shared tensors) needs has no folder on disk.
    """
    source = pool.shared_source if shared_source is None else shared_source
    needed = sorted({*path.models, source})
    missing = [pool.names[i] for i in needed if pool.folders[i] is None]
    if missing:
        raise UserError(
            f"mergekit needs every source on disk; {', '.join(missing)} only lives in memory "
            "(write it first, e.g. with hm3.routing.save.ensure_merged_on_disk)"
        )

    def folder(index: int) -> str:
        return str(Path(pool.folders[index]).resolve())  # type: ignore[arg-type]

    slices = [{"sources": [{"model": folder(source), "layer_range": [0, 0]}]}]
    for model, first, end in path.runs():
        slices.append({"sources": [{"model": folder(model), "layer_range": [first, end]}]})
    slices.append({"sources": [{"model": folder(source), "layer_range": [0, 0]}]})
    config: dict[str, Any] = {"merge_method": "passthrough", "slices": slices}
    if dtype:
        config["dtype"] = dtype
    return config


def passthrough_yaml(pool: RoutingPool, path: InferencePath, shared_source: int | None = None) -> str:
    """:func:`passthrough_config` as YAML text (absolute source paths)."""
    dtype = str(pool.dtype).removeprefix("torch.")
    header = f"# hm3 routed model: path {path}\n"
    return header + yaml.safe_dump(
        passthrough_config(pool, path, shared_source, dtype), sort_keys=False, default_flow_style=None
    )


def ensure_merged_on_disk(pool: RoutingPool, folder: str | Path, force: bool = False) -> Path:
    """Write the merged model (index K) as a checkpoint at ``folder`` unless the pool already has it on disk;
    records the folder in the pool."""
    existing = pool.folders[pool.merged_index]
    if existing is not None and Path(existing).is_dir():
        return Path(existing)
    config, tensors = _checkpoint_parts(pool, pool.state_dicts[pool.merged_index], pool.num_layers)
    out = write_hf_checkpoint(
        tensors, config, Path(folder), tokenizer_from=pool.tokenizer_folder, force=force
    )
    pool.folders[pool.merged_index] = out.resolve()
    return out


def save_routed_model(
    pool: RoutingPool,
    path: InferencePath,
    out: str | Path,
    *,
    alignment: AffineAlignment | None = None,
    shared_source: int | None = None,
    shard_size: str | int = "5GB",
    force: bool = False,
    model_card: str | None = None,
) -> Path:
    """Write a routed model (see the module docstring for the folder layout).

    Args:
        pool: The routing pool.
        path: The inference path.
        out: The folder to create.
        alignment: The fitted ``stats`` maps, or None for alignment ``none``.
        shared_source: Model whose non-layer tensors are used (default: the pool's, the merged model).
        shard_size: Largest safetensors shard.
        force: Replace an existing non-empty ``out``.
        model_card: Text of ``README.md``.

    Returns:
        ``out``.
    """
    out = Path(out)
    source = pool.shared_source if shared_source is None else shared_source
    check_output_folder(out, force=force, expected_bytes=None)
    config, tensors = _checkpoint_parts(pool, routed_tensors(pool, path, source), len(path), path.layers)
    record = {
        "format": ROUTING_FORMAT,
        "path": path.to_data(),
        "alignment": "none" if alignment is None else "stats",
        "shared_source": source,
        "models": [
            {"index": i, "name": name, "folder": None if folder is None else str(folder)}
            for i, (name, folder) in enumerate(zip(pool.names, pool.folders, strict=True))
        ],
        "source_num_layers": pool.num_layers,
    }
    extra = {ROUTING_FILE: json.dumps(record, indent=2) + "\n"}
    needed = {*path.models, source}
    if all(pool.folders[i] is not None for i in needed):
        extra[MERGEKIT_FILE] = passthrough_yaml(pool, path, source)
    staging = staging_folder(out, "routed")  # named for this process: the next export clears it if killed
    try:
        folder = write_hf_checkpoint(
            tensors,
            config,
            staging / "model",
            tokenizer_from=pool.tokenizer_folder,
            shard_size=shard_size,
            model_card=model_card,
            extra_files=extra,
        )
        if alignment is not None:
            save_file(alignment.to_tensors(), str(folder / ALIGNMENT_FILE))
            mark(folder, "model")  # its marker lists the alignment too
        move_into_place(folder, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _checkpoint_parts(
    pool: RoutingPool,
    tensors: dict[str, torch.Tensor],
    num_layers: int,
    layer_origin: tuple[int, ...] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and tensors of a checkpoint of the pool's backbone with ``num_layers`` layers (a vision
    tower of a full CLIP checkpoint is saved as a standalone ``CLIPVisionModel``)."""
    config = dict(pool.config)
    backbone = pool.backbone
    if backbone.kind == "vision" and backbone.config_section and backbone.config_section in config:
        config = {**config[backbone.config_section], "model_type": "clip_vision_model"}
        config["architectures"] = ["CLIPVisionModel"]
        tensors = {name.removeprefix(backbone.optional_prefix): t for name, t in tensors.items()}
    fixed = fix_config(config, num_layers, layer_origin)
    fixed["dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    # a repeated layer is the same storage under two names: the writer streams each tensor's own bytes
    return fixed, tensors
