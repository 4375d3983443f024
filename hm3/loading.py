"""Loading a model hm3 saved: a parameter-level merge, or a routed model with its alignment re-applied.

    import hm3
    model = hm3.load_merged("runs/toy/front/03")     # AutoModelForCausalLM or CLIPVisionModel, eval mode

A plain checkpoint (a parameter merge, or a routed model with alignment ``none``) loads as transformers
loads it. A routed model saved with ``stats`` alignment carries ``hm3_routing.json`` and
``hm3_alignment.safetensors``; the maps are attached as forward pre-hooks on the layers they belong to.

:func:`load_model_folder` is the one loader behind ``hm3.load_merged`` and ``hm3 eval``: transformers' own
loading report is checked (a tensor the config needs that the weights lack, or one they hold that it does not
use, is refused rather than initialised at random or dropped), and the routing record and its maps are checked
by :func:`saved_alignment` before they are attached.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file

from hm3.arch import FAMILIES, Backbone, detect_family
from hm3.checkpoint import read_model_config
from hm3.errors import UserError
from hm3.routing.affine import AffineAlignment
from hm3.routing.builder import layer_modules
from hm3.routing.path import InferencePath
from hm3.routing.save import ALIGNMENT_FILE, ROUTING_FILE, ROUTING_FORMAT

_ALIGNMENTS = ("none", "stats")
_SHOWN = 3
"""Names a refusal lists before saying how many more there are."""


def load_merged(folder: str | Path, *, dtype: Any = None, device: str | None = None) -> Any:
    """A saved hm3 model, ready to run.

    Args:
        folder: The model folder (``config.json`` + safetensors, optionally the hm3 routing files).
        dtype: Load in this torch dtype (default: the checkpoint's).
        device: Move the model (and its alignment maps) to this device.

    Raises:
        UserError: the folder is not a model hm3 can load.
    """
    return load_model_folder(Path(folder), dtype=dtype, device=device)


def load_model_folder(
    folder: Path,
    model_class: Any = None,
    *,
    dtype: Any = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = True,
) -> Any:
    """A saved model in eval mode, its weights checked against its config and its ``stats`` maps attached.

    Args:
        folder: The model folder.
        model_class: The transformers class to load (default: the family's, e.g. ``AutoModelForCausalLM``).
        dtype: Load in this torch dtype (default: the checkpoint's).
        device: Move the model (and its alignment maps) to this device.
        trust_remote_code: Passed to ``from_pretrained``.
        allow_pickle: Accept ``pytorch_model*.bin`` weights (False: safetensors only).

    Raises:
        UserError: no or a bad ``config.json``, weights transformers cannot load or that do not match the config,
            or a routing record or alignment maps that do not fit the model.
    """
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: no config.json; not a saved model")
    config = read_model_config(folder, str(folder))
    routed = (folder / ROUTING_FILE).exists() or (folder / ALIGNMENT_FILE).exists()
    backbone = detect_family(config, where=str(folder)) if routed or model_class is None else _family(config)
    if model_class is None:
        model_class = getattr(transformers, backbone.auto_class)
    kwargs: dict[str, Any] = {
        "trust_remote_code": trust_remote_code,
        "use_safetensors": None if allow_pickle else True,
        **({} if dtype is None else {"dtype": dtype}),
    }
    try:
        model, report = model_class.from_pretrained(
            folder, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    except Exception as error:  # transformers raises many kinds for a bad folder
        raise UserError(f"model folder {folder}: cannot be loaded: {_first_line(error)}") from None
    _check_loading_report(folder, report, backbone)
    if device is not None:
        model = model.to(device)
    model.eval()
    if routed:
        assert backbone is not None
        layers = layer_modules(model, backbone)
        alignment = saved_alignment(folder, len(layers), int(model.config.hidden_size), device=device)
        if alignment is not None:
            alignment.attach(layers)
    return model


def saved_alignment(
    folder: Path, num_layers: int, hidden_size: int, device: str | torch.device | None = None
) -> AffineAlignment | None:
    """The ``stats`` maps of a saved routed model, checked against its ``hm3_routing.json``; None without maps.

    The record must be a JSON object of hm3's routing format whose path has one step per layer and whose
    ``alignment`` is ``none`` (then no maps file may be there) or ``stats`` (then the maps file holds a finite
    float ``scale`` and ``shift`` of ``hidden_size`` channels for exactly the steps whose input is not native,
    :meth:`InferencePath.is_native_input`, as :class:`~hm3.routing.alignment.StatsAligner` fits them).

    Args:
        folder: The model folder.
        num_layers: Layers of the loaded model.
        hidden_size: Its hidden size.
        device: Where the maps go (default: the CPU).

    Raises:
        UserError: the first thing that does not fit, in one line.
    """
    record_file, maps_file = folder / ROUTING_FILE, folder / ALIGNMENT_FILE
    if not record_file.is_file():
        if maps_file.exists():
            raise UserError(f"{folder}: holds {ALIGNMENT_FILE} but no {ROUTING_FILE} saying how to apply it")
        return None
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{record_file}: not valid JSON ({_first_line(error)})") from None
    if not isinstance(record, dict):
        raise UserError(f"{record_file}: holds a JSON {type(record).__name__}, not an object")
    if record.get("format") != ROUTING_FORMAT:
        raise UserError(
            f"{record_file}: unknown routing format {record.get('format')!r} (expected {ROUTING_FORMAT})"
        )
    alignment = record.get("alignment")
    if alignment not in _ALIGNMENTS:
        raise UserError(f"{record_file}: 'alignment' is {alignment!r}, not 'none' or 'stats'")
    try:
        path = InferencePath.from_data(record.get("path"))
    except UserError as error:
        raise UserError(f"{record_file}: 'path' is {error}") from None
    if len(path) != num_layers:
        raise UserError(
            f"{record_file}: the path has {len(path)} steps but the model has {num_layers} layers"
        )
    if alignment == "none":
        if maps_file.exists():
            raise UserError(f"{folder}: holds {ALIGNMENT_FILE} but {ROUTING_FILE} says alignment 'none'")
        return None
    if not maps_file.is_file():
        raise UserError(f"{folder}: routed with 'stats' alignment but {ALIGNMENT_FILE} is missing")
    source = record.get("shared_source")
    if type(source) is not int:
        raise UserError(f"{record_file}: 'shared_source' is {source!r}, not a model index")
    try:
        tensors = load_file(str(maps_file))
    except Exception as error:  # safetensors raises its own error, OSError, or ValueError for a bad file
        raise UserError(f"{maps_file}: not a readable safetensors file ({_first_line(error)})") from None
    expected = {
        f"step.{step}.{kind}"
        for step in range(len(path))
        if not path.is_native_input(step, source)
        for kind in ("scale", "shift")
    }
    missing, extra = (
        sorted(expected - tensors.keys(), key=_natural),
        sorted(tensors.keys() - expected, key=_natural),
    )
    if missing or extra:
        problems = [
            f"{label} {_names(names)}" for label, names in (("lacks", missing), ("has extra", extra)) if names
        ]
        raise UserError(
            f"{maps_file}: {' and '.join(problems)} (a map belongs to each step of the path whose input is "
            f"not native)"
        )
    for name in sorted(tensors, key=_natural):
        tensor = tensors[name]
        if not tensor.is_floating_point() or tuple(tensor.shape) != (hidden_size,):
            raise UserError(
                f"{maps_file}: {name} has dtype {str(tensor.dtype).removeprefix('torch.')} and shape "
                f"{list(tensor.shape)}; a map is a float vector of the hidden size, [{hidden_size}]"
            )
        if not torch.isfinite(tensor).all():
            raise UserError(f"{maps_file}: {name} holds NaN or infinite values")
    return AffineAlignment.from_tensors(
        {name: tensor.to(device or "cpu") for name, tensor in tensors.items()}
    )


def _check_loading_report(folder: Path, report: dict[str, Any], backbone: Backbone | None) -> None:
    """Refuse weights that lack a tensor the model needs or store one in another shape (transformers would
    initialise it at random), or hold one of the backbone it does not use (dropped: e.g. layers beyond
    ``num_hidden_layers``). Tensors outside the backbone (the text tower of a full CLIP checkpoint loaded as
    ``CLIPVisionModel``) are not its concern, and a tied head is not reported missing by transformers."""
    missing = sorted(report.get("missing_keys") or (), key=_natural)
    unexpected = sorted(
        (name for name in report.get("unexpected_keys") or () if backbone is None or backbone.belongs(name)),
        key=_natural,
    )
    mismatched = sorted(report.get("mismatched_keys") or (), key=lambda entry: _natural(entry[0]))
    reshaped = [f"{name} ({list(stored)}, not {list(needed)})" for name, stored, needed in mismatched]
    problems = [
        f"{label} {_names(names)}"
        for label, names in (
            ("lack", missing),
            ("hold unused", unexpected),
            ("store in another shape", reshaped),
        )
        if names
    ]
    if problems:
        raise UserError(
            f"model folder {folder}: its weights do not match its config.json: they {'; they '.join(problems)}"
        )


def _family(config: dict[str, Any]) -> Backbone | None:
    """The backbone of a supported family, or None (a model ``hm3 eval`` scores but hm3 does not merge)."""
    return next((backbone for backbone in FAMILIES if config.get("model_type") in backbone.model_types), None)


def _names(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _natural(name: str) -> list[Any]:
    """Sort key that puts ``layers.2`` before ``layers.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
