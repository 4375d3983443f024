"""What every baseline shares: its candidates scored on the search split through the run's one budgeted
evaluator (:class:`hm3.search.budget.BudgetedEvaluator`), so that a baseline spends exactly as HM3 does.

The budget is the number of *distinct* candidates a baseline asks for on the search split (each merge, each
merge + path). Asking for a candidate again costs nothing; the fine-tuned models and the references, scored for
every method alike, are not counted. Past the budget, :class:`~hm3.search.budget.BudgetSpent` ends the method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hm3.merge.spec import MergeSpec
from hm3.routing.path import InferencePath
from hm3.search.budget import BudgetedEvaluator
from hm3.search.candidate import Candidate
from hm3.search.session import Search


def shares(budget: int, parts: int) -> list[int]:
    """``budget`` split into ``parts`` near-equal shares (the first ``budget % parts`` get one more)."""
    base, extra = divmod(budget, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


@dataclass
class BaselineScoring:
    """A baseline's view of the search: merge settings to candidates, candidates to scores and rewards.

    Attributes:
        search: The open search (pool, evaluator, log).
        evaluations: The budgeted evaluator the baseline spends through.
    """

    search: Search
    evaluations: BudgetedEvaluator

    @property
    def budget(self) -> int:
        assert self.evaluations.budget is not None
        return self.evaluations.budget

    @property
    def used(self) -> int:
        return self.evaluations.used

    @property
    def left(self) -> int:
        return self.budget - self.used

    def merge_spec(self, weights: Sequence[float], density: float | None = None, method: str | None = None):
        """A merge of the recipe's method (or ``method``) with these per-model weights."""
        level = self.search.recipe.parameter_level
        if method is not None:
            level = level.model_copy(
                update={"method": method, "density": level.effective_density, "drop_rate": None}
            )
        return MergeSpec.from_recipe(
            level, [float(w) for w in weights], self.search.recipe.seed, density=density
        )

    def candidate(self, spec: MergeSpec | None, path: InferencePath | None = None) -> Candidate:
        """The candidate of ``spec``'s merge run as itself (``path`` None) or along ``path``."""
        routing = self.search.models.routing_pool(spec)
        return Candidate.routed(spec, path, self.search.recipe.architecture_level.alignment, routing)

    def score(
        self,
        spec: MergeSpec | None,
        path: InferencePath | None = None,
        preference: Sequence[float] | None = None,
    ) -> dict[str, float]:
        """Search-split scores of the candidate (``path`` None: the plain merge).

        Raises:
            BudgetSpent: the candidate is new and the budget is used up.
        """
        candidate = self.candidate(spec, path)
        self.evaluations.preference = None if preference is None else [float(v) for v in preference]
        used = self.used
        scores = self.evaluations.score(candidate, level="merge" if candidate.is_plain else "path")
        if self.used > used:
            self.search.progress.advance()
        return scores

    def oriented(self, scores: dict[str, float]) -> np.ndarray:
        """Scores in objective order, higher is better."""
        return np.array(self.search.rewards().oriented(scores))

    def reward(self, scores: dict[str, float], preference: Sequence[float], length: int) -> float:
        """The recipe's scalarized reward on the normalised objectives (the same R HM3's agent maximises)."""
        return self.search.rewards().reward(scores, preference, length)
