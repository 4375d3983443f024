"""The subset of mergekit's configuration format that hm3 runs, as frozen pydantic data.

The fields and their meaning are mergekit's (``mergekit.config.MergeConfiguration``); anything outside the
subset (``modules``, ``tokenizer``, ``chat_template``, ``tokenizer_source: union``, LoRA references,
``residual_weight``...) is refused with one line naming it, instead of being merged differently; which
``parameters:`` are honoured where is :mod:`hm3.merge.mergekit_parameters`'s table. hm3 reads the YAML with this schema rather than
importing mergekit, which costs seconds of start-up (it pulls in transformers)::

    merge_method: dare_ties            # linear, task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs,
    base_model: /models/base           # della, or passthrough (with slices)
    models:
      - model: /models/math
        parameters: {weight: [0, 0.5, 1], density: 0.5}
    parameters: {normalize: true}
    dtype: bfloat16
    tokenizer_source: base
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hm3.errors import UserError
from hm3.yaml_loading import UniqueKeyLoader

DtypeName = Literal["float32", "bfloat16", "float16", "float64"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _model_path(value: Any) -> Any:
    if isinstance(value, str) and "+" in value:
        raise ValueError(f"LoRA references ({value!r}) are not supported; merge the adapter first")
    return value


class InputModel(_Strict):
    """One entry of ``models:``."""

    model: str = Field(min_length=1)
    parameters: dict[str, Any] | None = None

    _check_model = field_validator("model", mode="before")(classmethod(lambda cls, v: _model_path(v)))


class InputSlice(_Strict):
    """One source of a slice: layers ``[start, end)`` of a model."""

    model: str = Field(min_length=1)
    layer_range: tuple[int, int]
    parameters: dict[str, Any] | None = None

    _check_model = field_validator("model", mode="before")(classmethod(lambda cls, v: _model_path(v)))

    @field_validator("layer_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= value[0] < value[1]:
            raise ValueError(f"layer_range {list(value)} must be [start, end) with 0 <= start < end")
        return value


class OutputSlice(_Strict):
    """One slice of the output model: the same number of layers from each source, merged."""

    sources: list[InputSlice] = Field(min_length=1)
    base_model: str | None = None
    parameters: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _same_length(self) -> OutputSlice:
        lengths = {s.layer_range[1] - s.layer_range[0] for s in self.sources}
        if len(lengths) > 1:
            raise ValueError("all sources of a slice must contain the same number of layers")
        return self


class MergekitConfig(_Strict):
    """A mergekit merge configuration (the supported subset)."""

    merge_method: str
    base_model: str | None = None
    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    parameters: dict[str, Any] | None = None
    dtype: DtypeName | None = None
    out_dtype: DtypeName | None = None
    tokenizer_source: str | None = Field(default=None, min_length=1)
    """``base`` or a model folder: whose tokenizer the merged model gets (:mod:`hm3.merge.mergekit_vocab`)."""

    @field_validator("tokenizer_source")
    @classmethod
    def _no_union(cls, value: str | None) -> str | None:
        if value == "union":
            raise ValueError(
                "union is not supported by hm3 (it builds a new tokenizer from every model's); "
                "use base or one model's folder"
            )
        return _model_path(value)

    @model_validator(mode="after")
    def _one_layout(self) -> MergekitConfig:
        if bool(self.models) == bool(self.slices):
            raise ValueError("give exactly one of 'models' or 'slices'")
        return self


def load_mergekit_config(path: str | Path) -> MergekitConfig:
    """Read and check a mergekit YAML file.

    Raises:
        UserError: unreadable, not YAML, or outside the supported subset (one line naming the field).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mergekit config not found: {path}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path}: not UTF-8 text (byte {error.start}): a mergekit config is a YAML text file"
        ) from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({getattr(error, 'problem', error)})") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a mergekit config") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a mergekit config is a mapping")
    try:
        return MergekitConfig.model_validate(raw)
    except ValidationError as error:
        item = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            message = "not supported by hm3 (supported: " + ", ".join(_allowed(item["loc"])) + ")"
        else:
            message = item["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
        more = f" (and {error.error_count() - 1} more problem(s))" if error.error_count() > 1 else ""
        raise UserError(f"{path}: {where}: {message}{more}") from None


def _allowed(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = MergekitConfig
    for piece in loc[:-1]:
        if isinstance(piece, int):
            continue
        model = {"models": InputModel, "slices": OutputSlice, "sources": InputSlice}.get(str(piece), model)
    return list(model.model_fields)
