"""The parameter-level merge methods, one row each: a kernel plus the settings that make the variant.

Adding a variant of task arithmetic is one row; a new kernel is a module plus a row. Defaults follow
mergekit's registry (``mergekit.merge_methods.registry``), so a config means the same in both tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hm3.errors import UserError

Sparsification = Literal["magnitude", "random", "magnitude_outliers", "della_magprune"]


@dataclass(frozen=True)
class MergeMethod:
    """One merge method as data.

    Attributes:
        name: The name recipes and mergekit configs use.
        kernel: ``linear`` (average of the models) or ``task_arithmetic`` (base + merged task vectors).
        sparsification: How each task vector is trimmed (None: not trimmed).
        consensus: TIES sign election before summing.
        default_normalize: ``normalize`` when the config does not say.
        default_rescale: ``rescale`` (L1 rescale of trimmed task vectors) when the config does not say.
        extra: Method-specific parameters and their defaults (``gamma`` of breadcrumbs, ``epsilon`` of DELLA).
    """

    name: str
    kernel: Literal["linear", "task_arithmetic"]
    sparsification: Sparsification | None = None
    consensus: bool = False
    default_normalize: bool = False
    default_rescale: bool = False
    extra: tuple[tuple[str, float], ...] = ()

    @property
    def uses_base(self) -> bool:
        """Whether the method merges task vectors (needs a base model)."""
        return self.kernel == "task_arithmetic"

    @property
    def is_random(self) -> bool:
        """Whether the method draws random masks (reproducible from a seed)."""
        return self.sparsification in ("random", "della_magprune")

    @property
    def parameters(self) -> tuple[str, ...]:
        """Parameter names a mergekit config may give this method."""
        if self.kernel == "linear":
            return ("weight", "normalize")
        return (
            "weight",
            "density",
            "normalize",
            "rescale",
            "lambda",
            "int8_mask",
            *(k for k, _ in self.extra),
        )


METHODS: dict[str, MergeMethod] = {
    row.name: row
    for row in (
        MergeMethod("linear", "linear", default_normalize=True),
        MergeMethod("task_arithmetic", "task_arithmetic"),
        MergeMethod("ties", "task_arithmetic", "magnitude", consensus=True, default_normalize=True),
        MergeMethod("dare_linear", "task_arithmetic", "random", default_rescale=True),
        MergeMethod("dare_ties", "task_arithmetic", "random", consensus=True, default_rescale=True),
        MergeMethod("breadcrumbs", "task_arithmetic", "magnitude_outliers", extra=(("gamma", 0.01),)),
        MergeMethod(
            "della",
            "task_arithmetic",
            "della_magprune",
            consensus=True,
            default_normalize=True,
            default_rescale=True,
            extra=(("epsilon", 0.15),),
        ),
    )
}
"""Every parameter-level method, by name (the names ``hm3.recipe.MERGE_METHODS`` lists)."""


def get_method(name: str) -> MergeMethod:
    """The row of a method by name.

    Raises:
        UserError: no such method.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown merge method {name!r} (known: {', '.join(METHODS)})") from None
