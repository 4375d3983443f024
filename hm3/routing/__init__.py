"""The architecture level of HM3: inference paths over layers of the fine-tuned models and the merged one.

* :mod:`~hm3.routing.path` — :class:`InferencePath`, a sequence of (model, layer) steps;
* :mod:`~hm3.routing.pool` — :class:`RoutingPool`, the K + 1 state dicts routed models share;
* :mod:`~hm3.routing.builder` — :func:`build_routed_model`, a runnable model of the backbone's class;
* :mod:`~hm3.routing.alignment` — ``none`` and ``stats`` alignment between layers of different origin;
* :mod:`~hm3.routing.env`, :mod:`~hm3.routing.wolpertinger`, :mod:`~hm3.routing.agent` — the gymnasium
  environment, the Wolpertinger wrapper and the PPO agent (:func:`search_path`, :func:`rollout`);
* :mod:`~hm3.routing.save` — routed checkpoints (Hugging Face folder, mergekit ``passthrough`` YAML).

The package itself imports only the path and the pool; each module imports what it uses at its top.
"""

from hm3.routing.path import InferencePath
from hm3.routing.pool import RoutingPool

__all__ = ["InferencePath", "RoutingPool"]
