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
"""

from __future__ import annotations

from hm3.merge.mergekit_export import to_mergekit_config, to_mergekit_yaml
from hm3.merge.mergekit_run import run_mergekit_config
from hm3.merge.registry import METHODS, MergeMethod, get_method
from hm3.merge.spec import MergeSpec

__all__ = [
    "METHODS",
    "MergeMethod",
    "MergeSpec",
    "get_method",
    "merge_state_dict",
    "run_mergekit_config",
    "to_mergekit_config",
    "to_mergekit_yaml",
]


def __getattr__(name: str):
    if name in ("merge_state_dict", "iter_merged_tensors", "export_merge"):
        # not at the top: hm3.merge.engine imports torch, and every hm3.merge module imports this package,
        # the fused mergekit run's too, which never imports torch (hm3.merge.mergekit_run)
        from hm3.merge import engine

        return getattr(engine, name)
    raise AttributeError(name)
