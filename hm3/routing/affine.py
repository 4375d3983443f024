"""Per-step affine maps on the hidden state entering a layer of a routed model (``stats`` alignment).

:class:`AffineAlignment` is what :mod:`hm3.routing.alignment` fits and what
:func:`hm3.routing.builder.build_routed_model` attaches: plain data (a scale and a shift per step) and the forward
pre-hook that applies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class AffineAlignment:
    """Per-step affine maps ``z' = scale ⊙ z + shift`` on the hidden state entering a layer.

    Attributes:
        scales: Step index -> per-channel scale [H].
        shifts: Step index -> per-channel shift [H].
    """

    scales: dict[int, torch.Tensor] = field(default_factory=dict)
    shifts: dict[int, torch.Tensor] = field(default_factory=dict)

    def attach(self, layers: nn.ModuleList) -> list[Any]:
        """Register a forward pre-hook on each mapped layer; returns the hook handles."""
        handles = []
        for step, scale in sorted(self.scales.items()):
            shift = self.shifts[step]
            handles.append(
                layers[step].register_forward_pre_hook(affine_hook(scale, shift), with_kwargs=True)
            )
        return handles

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``step.{t}.scale`` / ``step.{t}.shift`` tensors (for safetensors)."""
        out = {}
        for step in sorted(self.scales):
            out[f"step.{step}.scale"] = self.scales[step].contiguous()
            out[f"step.{step}.shift"] = self.shifts[step].contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> AffineAlignment:
        """The inverse of :meth:`to_tensors`."""
        out = cls()
        for name, value in tensors.items():
            _, step, kind = name.split(".")
            (out.scales if kind == "scale" else out.shifts)[int(step)] = value
        return out


def affine_hook(scale: torch.Tensor, shift: torch.Tensor):
    """A forward pre-hook (``with_kwargs=True``) that maps the layer's hidden-state input to ``scale ⊙ z + shift``."""

    def hook(module, args, kwargs):
        if args:
            hidden = args[0]
            return (hidden * scale.to(hidden.dtype) + shift.to(hidden.dtype), *args[1:]), kwargs
        hidden = kwargs["hidden_states"]
        return args, {**kwargs, "hidden_states": hidden * scale.to(hidden.dtype) + shift.to(hidden.dtype)}

    return hook
