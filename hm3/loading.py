"""Loading a model hm3 saved: a parameter-level merge, or a routed model with its alignment re-applied.

    import hm3
    model = hm3.load_merged("runs/toy/front/03")     # AutoModelForCausalLM or CLIPVisionModel, eval mode

A plain checkpoint (a parameter merge, or a routed model with alignment ``none``) loads as transformers
loads it. A routed model saved with ``stats`` alignment carries ``hm3_routing.json`` and
``hm3_alignment.safetensors``; the maps are attached as forward pre-hooks on the layers they belong to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import transformers
from safetensors.torch import load_file

from hm3.arch import detect_family
from hm3.errors import UserError
from hm3.routing.affine import AffineAlignment
from hm3.routing.builder import layer_modules
from hm3.routing.save import ALIGNMENT_FILE, read_routing_record


def load_merged(folder: str | Path, *, dtype: Any = None, device: str | None = None) -> Any:
    """A saved hm3 model, ready to run.

    Args:
        folder: The model folder (``config.json`` + safetensors, optionally the hm3 routing files).
        dtype: Load in this torch dtype (default: the checkpoint's).
        device: Move the model (and its alignment maps) to this device.

    Raises:
        UserError: the folder is not a model hm3 can load.
    """
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{folder}: no config.json; not a saved model")
    spec = detect_family(json.loads(config_file.read_text()), where=str(folder))
    model_class = getattr(transformers, spec.auto_class)
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = model_class.from_pretrained(folder, **kwargs)
    if device is not None:
        model = model.to(device)
    model.eval()
    record = read_routing_record(folder)
    if record is not None and record.get("alignment") == "stats":
        file = folder / ALIGNMENT_FILE
        if not file.is_file():
            raise UserError(f"{folder}: routed with 'stats' alignment but {ALIGNMENT_FILE} is missing")
        tensors = load_file(str(file), device=str(device or "cpu"))
        AffineAlignment.from_tensors(tensors).attach(layer_modules(model, spec))
    return model
