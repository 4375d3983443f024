"""A fixed-size summary of each layer's weights, the ``θ_{m,l}`` part of the agent's state.

Computed once per routing pool: for each (model, layer), over the concatenation of the layer's tensors,

0. log RMS of the weights,
1. log of the largest absolute weight,
2. mean weight,
3. log RMS of the difference to the merged model's same layer,
4. log RMS of the difference to the pool's mean of that layer (how unusual this model's layer is),
5. relative depth ``l / (L − 1)``.

Each feature is then standardised over all (K+1)·L layers and clipped to ±5, so the network sees O(1) inputs
whatever the model size.
"""

from __future__ import annotations

import numpy as np
import torch

from hm3.routing.pool import RoutingPool

SUMMARY_SIZE = 6
SUMMARY_CLIP = 5.0


def layer_summaries(pool: RoutingPool) -> np.ndarray:
    """A ``[K+1, L, SUMMARY_SIZE]`` float32 array of standardised per-layer weight statistics."""
    cached = pool.__dict__.get("_layer_summaries")
    if cached is not None:
        return cached

    count, layers = pool.num_models, pool.num_layers
    raw = np.zeros((count, layers, SUMMARY_SIZE), dtype=np.float64)
    with torch.no_grad():
        for layer in range(layers):
            flat = [
                torch.cat([t.float().reshape(-1) for t in pool.layer_tensors(m, layer)]) for m in range(count)
            ]
            mean_layer = torch.stack(flat).mean(0)
            merged = flat[pool.merged_index]
            for m, weights in enumerate(flat):
                raw[m, layer] = [
                    _log_rms(weights),
                    float(torch.log(weights.abs().max() + 1e-12)),
                    float(weights.mean()),
                    _log_rms(weights - merged),
                    _log_rms(weights - mean_layer),
                    layer / max(layers - 1, 1),
                ]
    flat_raw = raw.reshape(-1, SUMMARY_SIZE)
    std = flat_raw.std(0)
    standard = (raw - flat_raw.mean(0)) / np.where(std > 1e-12, std, 1.0)
    result = np.clip(standard, -SUMMARY_CLIP, SUMMARY_CLIP).astype(np.float32)
    pool.__dict__["_layer_summaries"] = result
    return result


def _log_rms(values) -> float:
    return float(torch.log(values.pow(2).mean().sqrt() + 1e-12))
