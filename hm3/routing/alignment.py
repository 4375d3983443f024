"""Alignment between consecutive layers of different origin.

A layer of model m was trained on the hidden states model m's own earlier layers produce. In a routed model
its input may come from another model (or from the merged model's embeddings), so its statistics differ. The
paper learns ``z' = W·(z − μ)/σ + b`` with a Deep-CORAL loss; hm3 offers two modes:

``none``
    Pure layer routing: hidden states pass unchanged. A routed model is then an ordinary model of the
    backbone's class, saved as a plain Hugging Face checkpoint that ``AutoModelForCausalLM.from_pretrained``
    (or ``CLIPVisionModel.from_pretrained``) loads, and that mergekit ``passthrough`` reproduces.

``stats``
    A per-channel affine map ``z' = a ⊙ z + b`` on the hidden state entering step ``t``, fitted on a small
    calibration batch from the search split so that its per-channel mean and standard deviation match those
    the layer saw in its own model (``a = σ_src / σ_in``, ``b = μ_src − a ⊙ μ_in``): the diagonal, closed-form
    case of the paper's map and of CORAL's second-order matching. Maps are fitted in path order in one
    forward pass, so the statistics of step t are measured after the maps of steps < t are applied. Only
    steps whose input is not native get a map (see :meth:`InferencePath.is_native_input`).

    **Not foldable into a plain checkpoint.** The map acts on the residual stream itself, which every later
    layer adds to and reads; a pre-norm layer's input-norm weight only scales the branch that reads it
    (RMSNorm is also invariant to a per-channel scale only up to the norm of the scaled vector), and a shift
    cannot live in an RMSNorm at all. So a ``stats`` model is saved as the routed checkpoint (loadable on its
    own, without the maps) plus ``hm3_routing.json`` and ``hm3_alignment.safetensors`` (keys
    ``step.{t}.scale`` / ``step.{t}.shift``); :func:`hm3.load_merged` loads the checkpoint and re-attaches the
    maps as forward pre-hooks.

The maps themselves (:class:`~hm3.routing.affine.AffineAlignment`) live in :mod:`hm3.routing.affine`, which the
model builder applies; this module fits them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from hm3.errors import UserError
from hm3.routing.affine import AffineAlignment, affine_hook
from hm3.routing.builder import build_routed_model, layer_modules
from hm3.routing.path import InferencePath
from hm3.routing.pool import RoutingPool

if TYPE_CHECKING:
    from torch import nn

ALIGNMENT_MODES = ("none", "stats")
_EPS = 1e-6


def _channel_stats(hidden: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    flat = hidden.detach().float().reshape(-1, hidden.shape[-1])
    if mask is not None:
        flat = flat[mask.reshape(-1).bool()]
    return flat.mean(0), flat.std(0, unbiased=False).clamp_min(_EPS)


class StatsAligner:
    """Fits ``stats`` alignment maps for paths over one routing pool and one calibration batch.

    Args:
        pool: The routing pool.
        calibration: One batch of model inputs from the search split (``input_ids`` + ``attention_mask``
            for a causal LM, ``pixel_values`` for CLIP); padding positions are left out of the statistics.
    """

    def __init__(self, pool: RoutingPool, calibration: dict[str, torch.Tensor]) -> None:
        if not calibration:
            raise UserError("stats alignment needs a calibration batch")
        self.pool = pool
        self.calibration = calibration
        self._mask = calibration.get("attention_mask")
        self._source: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None

    def source_stats(self) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
        """(model, layer) -> (mean, std) of the hidden state entering that layer in its own model."""
        if self._source is None:
            stats: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
            for model_index in range(self.pool.num_models):
                path = InferencePath.identity(model_index, self.pool.num_layers)
                model = build_routed_model(self.pool, path, shared_source=model_index)
                for layer, module in enumerate(layer_modules(model, self.pool.backbone)):
                    module.register_forward_pre_hook(
                        self._recorder(stats, (model_index, layer)), with_kwargs=True
                    )
                self._run(model)
            self._source = stats
        return self._source

    def fit(self, path: InferencePath) -> AffineAlignment:
        """Maps for every step of ``path`` whose input is not native, fitted in path order."""
        source = self.source_stats()
        alignment = AffineAlignment()
        model = build_routed_model(self.pool, path)
        for step, module in enumerate(layer_modules(model, self.pool.backbone)):
            if not path.is_native_input(step, self.pool.shared_source):
                module.register_forward_pre_hook(
                    self._fitter(alignment, step, source[path.steps[step]]), with_kwargs=True
                )
        self._run(model)
        return alignment

    def _run(self, model: nn.Module) -> None:
        with torch.no_grad():
            model(**self.calibration)

    def _recorder(self, stats: dict, key: tuple[int, int]):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            stats[key] = _channel_stats(hidden, self._mask)

        return hook

    def _fitter(self, alignment: AffineAlignment, step: int, target: tuple[torch.Tensor, torch.Tensor]):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            mean_in, std_in = _channel_stats(hidden, self._mask)
            mean_src, std_src = target
            scale = std_src / std_in
            alignment.scales[step] = scale
            alignment.shifts[step] = mean_src - scale * mean_in
            return affine_hook(alignment.scales[step], alignment.shifts[step])(module, args, kwargs)

        return hook


def make_aligner(
    mode: str, pool: RoutingPool, calibration: dict[str, torch.Tensor] | None
) -> StatsAligner | None:
    """The aligner for a recipe's ``architecture_level.alignment`` mode (None for ``none``).

    Raises:
        UserError: an unknown mode, or ``stats`` without a calibration batch.
    """
    if mode == "none":
        return None
    if mode == "stats":
        if calibration is None:
            raise UserError(
                "architecture_level.alignment 'stats' needs calibration inputs from the search split"
            )
        return StatsAligner(pool, calibration)
    raise UserError(f"unknown alignment mode {mode!r} (known: {', '.join(ALIGNMENT_MODES)})")
