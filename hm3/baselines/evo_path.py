"""``evo_path``: an evolutionary search over inference paths plus merge weights, one objective per preference.

The Sakana "data-flow space" approach, on HM3's search space: a genome is (per-model weights, a path over the K
fine-tuned models and that merge); fitness is the scalarized reward R(λ) that HM3's agent maximises. Per
preference, a (μ + λ) evolution with an equal share of the budget: the first individual is the plain merge
with weights λ; children mutate the weights (Gaussian, σ = 0.1, clipped to [0, 1]) and the path (replace,
insert, delete or repeat one step), and the best μ of parents and children survive.
"""

from __future__ import annotations

import numpy as np

from hm3.baselines.budget import BaselineScoring, shares
from hm3.routing.agent import max_path_length
from hm3.routing.path import InferencePath
from hm3.search.budget import BudgetSpent

PARENTS = 4
CHILDREN = 4
WEIGHT_SIGMA = 0.1


def mutate_path(steps: list[tuple[int, int]], num_models: int, num_layers: int, max_length: int, rng) -> list:
    """One random edit of a path: replace, insert, delete or repeat a step (lengths stay in 1..T_max)."""
    steps = list(steps)
    edit = rng.integers(4)
    position = int(rng.integers(len(steps)))
    step = (int(rng.integers(num_models)), int(rng.integers(num_layers)))
    if edit == 0:
        steps[position] = step
    elif edit == 1 and len(steps) < max_length:
        steps.insert(position, step)
    elif edit == 2 and len(steps) > 1:
        del steps[position]
    elif len(steps) < max_length:
        steps.insert(position, steps[position])
    else:
        steps[position] = step
    return steps


def evo_path(scoring: BaselineScoring, preferences: np.ndarray, seed: int) -> None:
    """Evolve (weights, path) per preference on the weighted-sum reward."""
    search = scoring.search
    for index, (preference, share) in enumerate(
        zip(preferences, shares(scoring.budget, len(preferences)), strict=True)
    ):
        if share == 0:
            continue
        rng = np.random.default_rng(seed + 7919 * (index + 1))
        weights = np.array(search.recipe.model_weights(list(preference)), dtype=float)
        spec = scoring.merge_spec(weights)
        routing = search.models.routing_pool(spec)
        t_max = max_path_length(routing, search.recipe)
        identity = InferencePath.identity(routing.merged_index, routing.num_layers)
        spent = 0

        def fitness(weights: np.ndarray, steps: list, preference=preference, identity=identity) -> float:
            nonlocal spent
            spent += 1
            spec = scoring.merge_spec([round(float(w), 6) for w in weights])
            path = InferencePath(tuple(steps))
            scores = scoring.score(spec, None if path == identity else path, preference=preference)
            return scoring.reward(scores, preference, len(path))

        population = [(fitness(weights, list(identity.steps)), weights, list(identity.steps))]
        while spent < share:
            children = []
            for _ in range(CHILDREN):
                if spent >= share:
                    break
                _, parent_weights, parent_steps = population[int(rng.integers(len(population)))]
                child_weights = np.clip(
                    parent_weights + rng.normal(0.0, WEIGHT_SIGMA, len(parent_weights)), 0, 1
                )
                if not child_weights.any():
                    child_weights = parent_weights
                child_steps = mutate_path(parent_steps, routing.num_models, routing.num_layers, t_max, rng)
                children.append((fitness(child_weights, child_steps), child_weights, child_steps))
            population = sorted(population + children, key=lambda item: -item[0])[:PARENTS]
        if scoring.left <= 0:
            raise BudgetSpent
