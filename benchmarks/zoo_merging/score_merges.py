"""Score task-arithmetic merges of a toy zoo's specialists on the recipe's search split (issue 4 follow-up).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/zoo_merging/score_merges.py \\
        recipes/toy-lm.yaml [--corners] [--scaled]

Prints one line per merge: the centre of the simplex, the three pairs, and with ``--corners`` the specialists
themselves, with ``--scaled`` each specialist's task vector at 1/2 and the plain sum (weights in pool order; ``normalize: false``, as the HM3 search merges). Results:
benchmarks/results/zoo_merging.md.
"""

from __future__ import annotations

import json
import sys
import time

from hm3.evaluate import Evaluator
from hm3.merge.engine import merge_state_dict
from hm3.merge.spec import MergeSpec
from hm3.pool import ModelPool
from hm3.recipe import load_recipe
from hm3.routing.builder import build_routed_model
from hm3.routing.path import InferencePath
from hm3.routing.pool import RoutingPool

MERGES = {
    "centre (1/3,1/3,1/3)": (1 / 3, 1 / 3, 1 / 3),
    "pair 1+2 (1/2,1/2,0)": (0.5, 0.5, 0.0),
    "pair 1+3 (1/2,0,1/2)": (0.5, 0.0, 0.5),
    "pair 2+3 (0,1/2,1/2)": (0.0, 0.5, 0.5),
}
CORNERS = {"corner 1": (1.0, 0.0, 0.0), "corner 2": (0.0, 1.0, 0.0), "corner 3": (0.0, 0.0, 1.0)}
SCALED = {
    "single 1 at 1/2": (0.5, 0.0, 0.0),
    "single 2 at 1/2": (0.0, 0.5, 0.0),
    "single 3 at 1/2": (0.0, 0.0, 0.5),
    "sum (1,1,1)": (1.0, 1.0, 1.0),
}
"""How far each task vector scales down alone, and the plain sum (weights summing to 3)."""


def main() -> None:
    recipe = load_recipe(sys.argv[1])
    pool = ModelPool.from_recipe(recipe)
    evaluator = Evaluator.from_recipe(recipe)
    merges = {
        **MERGES,
        **(CORNERS if "--corners" in sys.argv else {}),
        **(SCALED if "--scaled" in sys.argv else {}),
    }
    for name, weights in merges.items():
        started = time.perf_counter()
        spec = MergeSpec(
            method="task_arithmetic", weights=weights, density=(0.5,) * 3, normalize=False, seed=0
        )
        routed = RoutingPool.from_model_pool(pool, merge_state_dict(pool, spec))
        scores = evaluator.score(
            build_routed_model(routed, InferencePath.identity(3, routed.num_layers)), "search"
        )
        rounded = json.dumps({task: round(value, 3) for task, value in scores.items()})
        print(f"{name:22s} {rounded} {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
