"""The parameter-level merge: one module per kernel, a registry of methods, and the engines that run them.

* ``MergeSpec`` (``hm3.merge.spec``): a merge as frozen data; ``MergeSpec.from_recipe`` builds it from a
  recipe's ``parameter_level`` and a preference vector.
* ``merge_state_dict(pool, spec)`` (``hm3.merge.engine``): the merged model in memory, for the search.
* ``run_mergekit_config(path, out)`` (``hm3.merge.mergekit_run``): a mergekit YAML, streamed to disk.
* ``to_mergekit_config(spec, model_paths, base_path)`` (``hm3.merge.mergekit_export``): any merge as a
  mergekit config that ``mergekit-yaml`` runs to the same tensors.

Kernels (pure tensor functions): ``linear``, ``task_arithmetic`` (with ``sparsify`` trims and ``consensus``
sign election). Methods (``registry.METHODS``): linear, task_arithmetic, ties, dare_linear, dare_ties,
breadcrumbs, della; each gives what mergekit gives for the same config.

Importing the package loads nothing heavy: each name is imported from its module when first used (a run that
only reads a merge's description, as ``hm3 select`` does, never loads torch or the fused kernels).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hm3.merge.engine import export_merge, iter_merged_tensors, merge_state_dict
    from hm3.merge.mergekit_export import to_mergekit_config, to_mergekit_yaml
    from hm3.merge.mergekit_run import run_mergekit_config
    from hm3.merge.registry import METHODS, MergeMethod, get_method
    from hm3.merge.spec import MergeSpec

_HOMES = {
    "METHODS": "registry",
    "MergeMethod": "registry",
    "get_method": "registry",
    "MergeSpec": "spec",
    "merge_state_dict": "engine",
    "iter_merged_tensors": "engine",
    "export_merge": "engine",
    "run_mergekit_config": "mergekit_run",
    "to_mergekit_config": "mergekit_export",
    "to_mergekit_yaml": "mergekit_export",
}
"""Each public name's module (imported on first use: the engine and the fused mergekit run import torch and the
compiled kernels)."""

__all__ = [
    "METHODS",
    "MergeMethod",
    "MergeSpec",
    "export_merge",
    "get_method",
    "iter_merged_tensors",
    "merge_state_dict",
    "run_mergekit_config",
    "to_mergekit_config",
    "to_mergekit_yaml",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'hm3.merge' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hm3.merge.{home}"), name)
