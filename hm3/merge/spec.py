"""``MergeSpec``: one parameter-level merge as frozen data (hashable, cacheable, exportable).

The search builds one per preference vector λ (the merge weights ARE the preference weights)::

    spec = MergeSpec.from_recipe(recipe.parameter_level, weights=[0.2, 0.5, 0.3], seed=recipe.seed)
    merged = merge_state_dict(pool, spec)          # hm3.merge.engine, no disk I/O

and ``spec.model_dump()`` is deterministic, so it keys a score cache. Each weight or density is a number or a
per-layer gradient (a tuple, interpolated across the layers as mergekit does, see ``hm3.merge.gradient``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hm3.errors import UserError
from hm3.merge.gradient import evaluate_setting
from hm3.merge.registry import METHODS, MergeMethod
from hm3.recipe import MergeMethodName

if TYPE_CHECKING:
    from hm3.recipe import ParameterLevel

Value = float | tuple[float, ...]
"""A number, or a gradient over the layers (at least one number)."""

VALUE_LIMIT = 10.0
"""Weights and the scale are finite and within [-10, 10] (a preference gives weights in [0, 1])."""

DtypeName = Literal["float32", "bfloat16", "float16", "float64"]


class MergeSpec(BaseModel):
    """A parameter-level merge of K fine-tuned models (and the base, for task-vector methods).

    Attributes:
        method: A method of ``hm3.merge.registry.METHODS``.
        weights: One weight (or gradient) per fine-tuned model, in pool order; each finite, in [-10, 10].
        density: One density (or gradient) per fine-tuned model; fraction of each task vector kept
            (drop rate p = 1 - density for DARE). 1.0 for methods that do not trim.
        normalize: Divide by the sum of weights; None: the method's default (mergekit's).
        rescale: L1-rescale trimmed task vectors; None: the method's default (True for DARE and DELLA).
        scale: λ multiplying the merged task vector (mergekit's ``lambda``); finite, in [-10, 10].
        gamma: Breadcrumbs: fraction of largest-magnitude entries dropped.
        epsilon: DELLA: spread of keep probabilities around the density.
        int8_mask: mergekit's memory option for the TIES mask (no effect on values; kept for export).
        seed: Seed of random masks (DARE, DELLA): the same seed gives the same masks.
        dtype: Dtype inputs are cast to and merged in (None: the stored dtype).
        out_dtype: Dtype of the result (None: the merge dtype).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    method: MergeMethodName
    weights: tuple[Value, ...] = Field(min_length=1)
    density: tuple[Value, ...] | None = None
    normalize: bool | None = None
    rescale: bool | None = None
    scale: float = Field(default=1.0, ge=-VALUE_LIMIT, le=VALUE_LIMIT)
    gamma: float = Field(default=0.01, ge=0, lt=1)
    epsilon: float = Field(default=0.15, gt=0, lt=1)
    int8_mask: bool = False
    seed: int = 0
    dtype: DtypeName | None = None
    out_dtype: DtypeName | None = None

    @field_validator("weights", "density", mode="before")
    @classmethod
    def _tuples(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(tuple(v) if isinstance(v, list) else v for v in value)
        return value

    @field_validator("weights", "density")
    @classmethod
    def _non_empty_gradients(cls, value: tuple[Value, ...] | None) -> tuple[Value, ...] | None:
        for entry in value or ():
            if isinstance(entry, tuple) and not entry:
                raise ValueError("a gradient needs at least one value")
            for number in entry if isinstance(entry, tuple) else (entry,):
                if not -VALUE_LIMIT <= number <= VALUE_LIMIT:
                    raise ValueError(f"{number} is outside [-{VALUE_LIMIT:g}, {VALUE_LIMIT:g}]")
        return value

    @model_validator(mode="before")
    @classmethod
    def _broadcast_density(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("density"), (int, float)):
            weights = data.get("weights") or ()
            data = {**data, "density": (float(data["density"]),) * len(weights)}
        return data

    @model_validator(mode="after")
    def _check(self) -> MergeSpec:
        row = self.row
        count = len(self.weights)
        density = self.density
        if row.sparsification is None:
            density = (1.0,) * count  # canonical: a method that does not trim ignores density
        elif density is None:
            density = (1.0,) * count
        if len(density) != count:
            raise ValueError(f"density has {len(density)} entries for {count} models")
        for entry in density:
            for value in entry if isinstance(entry, tuple) else (entry,):
                if not 0 < value <= 1:
                    raise ValueError(f"density {value} is outside (0, 1]")
                if row.sparsification == "della_magprune" and value < 1:
                    if not (0 < value - self.epsilon and value + self.epsilon < 1):
                        raise ValueError(f"DELLA needs density +/- epsilon inside (0, 1), got {value}")
        object.__setattr__(self, "density", density)
        return self

    # -- facts --------------------------------------------------------------------------------------------

    @property
    def row(self) -> MergeMethod:
        """The method's registry row."""
        return METHODS[self.method]

    @property
    def effective_normalize(self) -> bool:
        """``normalize``, or the method's default."""
        return self.row.default_normalize if self.normalize is None else self.normalize

    @property
    def effective_rescale(self) -> bool:
        """``rescale``, or the method's default."""
        return self.row.default_rescale if self.rescale is None else self.rescale

    def weights_at(self, t: float) -> list[float]:
        """The per-model weights at layer position ``t`` (gradients interpolated)."""
        return [evaluate_setting(list(w) if isinstance(w, tuple) else w, t) for w in self.weights]

    def density_at(self, t: float) -> list[float]:
        """The per-model densities at layer position ``t``."""
        assert self.density is not None
        return [evaluate_setting(list(d) if isinstance(d, tuple) else d, t) for d in self.density]

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_record(cls, data: Any, where: str) -> MergeSpec:
        """A spec read back from a run's files (``candidates.jsonl``, ``front.json``).

        Raises:
            UserError: naming ``where`` and the field, when the data does not validate (an edited file).
        """
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            field = ".".join(str(part) for part in first["loc"]) or "spec"
            raise UserError(f"{where}: merge {field}: {first['msg']}") from None

    @classmethod
    def from_recipe(
        cls,
        parameter_level: ParameterLevel,
        weights: Any,
        seed: int,
        *,
        density: float | None = None,
        scale: float = 1.0,
        dtype: DtypeName | None = None,
    ) -> MergeSpec:
        """The merge a recipe's ``parameter_level`` asks for, with a preference vector as the weights.

        Args:
            parameter_level: The recipe section (method, density or drop rate, normalize, seed).
            weights: One weight per fine-tuned model (the preference vector λ), or per-model gradients.
            seed: The recipe's seed; ``parameter_level.seed`` wins when set.
            density: Override of the density (one value of ``density_search``).
            scale: λ multiplying the merged task vector (one value of ``scale_search``).
            dtype: Merge dtype (None: the stored one).
        """
        values = [float(w) if isinstance(w, (int, float)) else tuple(float(x) for x in w) for w in weights]
        chosen = parameter_level.effective_density if density is None else density
        return cls(
            method=parameter_level.method,
            weights=tuple(values),
            density=(chosen,) * len(values),
            normalize=parameter_level.normalize,
            seed=parameter_level.seed if parameter_level.seed is not None else seed,
            dtype=dtype,
            scale=scale,
        )
