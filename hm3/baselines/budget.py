"""What every baseline shares: the candidate evaluation on the search split, counted against one budget.

The budget is the number of *distinct* candidates scored on the search split — the same count HM3 uses (each
new path, and each preference's plain merge). Asking for a candidate scored before costs nothing; the fine-tuned
models and the reference merges, scored for every method alike, are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hm3.routing.path import InferencePath

if TYPE_CHECKING:
    from hm3.merge.spec import MergeSpec
    from hm3.search.session import Search


def shares(budget: int, parts: int) -> list[int]:
    """``budget`` split into ``parts`` near-equal shares (the first ``budget % parts`` get one more)."""
    base, extra = divmod(budget, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class BudgetSpent(Exception):
    """Raised when a baseline asks for one candidate more than its budget."""


@dataclass
class BaselineEvaluator:
    """Scores candidates for a baseline, logging each and stopping at the budget.

    Attributes:
        search: The open search (pool, evaluator, log).
        budget: Distinct candidates this baseline may score.
        scored: Every candidate scored (or found in the log) so far, as front candidates.
    """

    search: Search
    budget: int
    scored: list[dict[str, Any]] = field(default_factory=list)
    _seen: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def used(self) -> int:
        return len(self._seen)

    @property
    def left(self) -> int:
        return self.budget - self.used

    def merge_spec(self, weights: Sequence[float], density: float | None = None, method: str | None = None):
        """A merge of the recipe's method (or ``method``) with these per-model weights."""
        from hm3.merge.spec import MergeSpec

        level = self.search.recipe.parameter_level
        if method is not None:
            level = level.model_copy(
                update={"method": method, "density": level.effective_density, "drop_rate": None}
            )
        return MergeSpec.from_recipe(
            level, [float(w) for w in weights], self.search.recipe.seed, density=density
        )

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
        from hm3.evaluate.cache import candidate_key

        search = self.search
        routing = search.models.routing_pool(spec)
        identity = InferencePath.identity(routing.merged_index, routing.num_layers)
        chosen = identity if path is None else path
        merge = None if spec is None else spec.model_dump(mode="json")
        alignment = "none" if chosen == identity else search.recipe.architecture_level.alignment
        spec_data = {
            "merge": merge,
            "path": chosen.to_data(),
            "alignment": alignment,
            "split": "search",
            "objectives": search.objectives,
            "scoring": search.scoring,
        }
        key = candidate_key(spec_data)
        if key not in self._seen:
            if self.used >= self.budget:
                raise BudgetSpent
            self._seen[key] = search.log.score_once(
                spec_data,
                lambda: search.score_search(search.models.candidate(spec, chosen, alignment)),
                split="search",
                kind="path",
                preference=None,
                merge=merge,
                path=chosen.to_data(),
                alignment=alignment,
            )
            search.progress.advance()
        scores = self._seen[key]
        self.scored.append(
            {
                "preference": None if preference is None else [float(v) for v in preference],
                "merge": merge,
                "path": None if chosen == identity else chosen.to_data(),
                "alignment": alignment,
                "scores": scores,
            }
        )
        return scores

    def oriented(self, scores: dict[str, float]) -> np.ndarray:
        """Scores in objective order, higher is better."""
        return np.array(self.search.rewards().oriented(scores))

    def reward(self, scores: dict[str, float], preference: Sequence[float], length: int) -> float:
        """The recipe's scalarized reward (the same R HM3's agent maximises)."""
        return self.search.rewards().reward(scores, preference, length)
