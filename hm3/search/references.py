"""What every method is measured against, scored for all of them alike and never charged to a budget.

* **The fine-tuned models**, scored first on the search split: they set the ideal point z* and the nadir, the
  normalisation of every objective (:class:`hm3.moo.scalarization.ObjectiveScale`).
* **The references** of the front, on both splits: the K fine-tuned models, and uniform-weight merges (weights
  1/K) with ``task_arithmetic``, ``ties`` and ``dare_ties`` at the recipe's density. A uniform merge is an
  ordinary plain-merge :class:`~hm3.search.candidate.Candidate`: a method that scored the same merge already
  paid for it, and the reference is answered from the log.
"""

from __future__ import annotations

from hm3.front import Reference
from hm3.merge.spec import MergeSpec
from hm3.moo.reward import objective_scale
from hm3.search.budget import BudgetedEvaluator
from hm3.search.candidate import Candidate
from hm3.search.session import Search

UNIFORM_METHODS = ("task_arithmetic", "ties", "dare_ties")
REFERENCES = "references"
"""The name the references are scored under (``method`` in their log records)."""


def score_finetuned(search: Search) -> None:
    """Score the K fine-tuned models on the search split; set the ideal point z* and the nadir."""
    names = search.pool.model_names
    search.progress.stage("fine-tuned models (search split)", len(names))
    evaluations = BudgetedEvaluator(search, REFERENCES)
    for name in names:
        search.finetuned_scores[name] = evaluations.score(
            Candidate.finetuned_model(name), level="finetuned", label=name
        )
        search.progress.advance()
    set_scale(search)


def set_scale(search: Search) -> None:
    """The ideal point z* and the nadir from the fine-tuned models' search-split scores."""
    scale = objective_scale(search.recipe, search.finetuned_scores)
    search.ideal, search.nadir = list(scale.ideal), list(scale.nadir)
    search.store.log(f"ideal point z* {search.ideal}, nadir {search.nadir} (search split, oriented)")


def uniform_merge(search: Search, method: str) -> MergeSpec:
    """The uniform-weight (1/K) merge of ``method`` at the recipe's density."""
    level = search.recipe.parameter_level
    k = len(search.pool.models)
    return MergeSpec.from_recipe(
        level.model_copy(update={"method": method, "density": level.effective_density, "drop_rate": None}),
        [1.0 / k] * k,
        search.recipe.seed,
    )


def references(search: Search, evaluations: BudgetedEvaluator) -> list[Reference]:
    """The fine-tuned models and the uniform merges, scored on both splits."""
    out: list[Reference] = []
    for name in search.pool.model_names:
        candidate = Candidate.finetuned_model(name)
        scores = {
            "search": search.finetuned_scores[name],
            "heldout": evaluations.score(candidate, level="finetuned", split="heldout", label=name),
        }
        out.append(Reference(label=name, kind="finetuned", scores=scores))
    for method in UNIFORM_METHODS:
        label = f"uniform {method}"
        candidate = Candidate.of_merge(uniform_merge(search, method))
        scores = {}
        for split in ("search", "heldout"):
            scores[split] = evaluations.score(candidate, level="reference", split=split, label=label)
            search.progress.advance()
        out.append(Reference(label=label, kind="merge", scores=scores, merge=dict(candidate.merge or {})))
    return out
