"""The one front door for scoring: every objective prepared up front, then any number of in-memory models scored.

Example::

    from hm3.evaluate import Evaluator
    from hm3.recipe import load_recipe

    recipe = load_recipe("recipes/toy-lm.yaml")
    evaluator = Evaluator.from_recipe(recipe)        # tasks resolved, data loaded and split; errors raised here
    model = build_candidate(...)                     # any PreTrainedModel (LM) / CLIPVisionModel, in memory
    scores = evaluator.score(model, split="search")  # {"addition": 0.62, "reversal": 0.41}
    evaluator.higher_is_better                       # {"addition": True, "reversal": True}

Scores are the raw metric values lm-eval reports (or the accuracy, for vision). ``split`` is ``search`` (the
70% the search optimises), ``heldout`` (the 30% kept for the final models) or ``all``. Nothing is re-read or
written per call; the language backend keeps one ``HFLM`` and swaps its model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import AutoTokenizer

from hm3.checkpoint import resolve_model_folder
from hm3.errors import UserError
from hm3.evaluate.language import build_hflm, prepare_language_objectives, swap_model
from hm3.evaluate.quiet import quiet_libraries
from hm3.evaluate.split import SPLIT_NAMES
from hm3.evaluate.threads import scoring_threads
from hm3.evaluate.vision import VisionObjective, prepare_vision_objectives

if TYPE_CHECKING:
    from hm3.evaluate.language import LanguageObjective
    from hm3.recipe import Recipe


class Evaluator:
    """Scores models on a recipe's objectives.

    Build it with :meth:`from_recipe`; the constructor takes prepared objectives.

    Args:
        objectives: Prepared objectives, all language or all vision, in recipe order.
        tokenizer: The tokenizer of the language models (None for vision).
        quiet: Hide lm-eval's and datasets' progress bars and logs while scoring.
    """

    def __init__(
        self,
        objectives: list[LanguageObjective] | list[VisionObjective],
        tokenizer: Any = None,
        quiet: bool = True,
    ) -> None:
        self.objectives = objectives
        self.tokenizer = tokenizer
        self.quiet = quiet
        self._lms: dict[int, Any] = {}

    @classmethod
    def from_recipe(cls, recipe: Recipe, quiet: bool = True) -> Evaluator:
        """Validate and prepare every objective of ``recipe`` (tasks, data, heads, split), loading no model.

        Raises:
            UserError: naming the objective at fault (unknown task, unloadable task file, missing metric, an
                empty split, bad vision data or head), or a tokenizer that cannot be loaded.
        """
        source = recipe.base_model if recipe.tokenizer_source == "base" else None
        source = source or next(m for m in recipe.models if m.name == recipe.tokenizer_source)
        folder = resolve_model_folder(source)
        if recipe.objectives[0].is_vision:
            config = json.loads((folder / "config.json").read_text())
            hidden = int(config.get("vision_config", config)["hidden_size"])
            return cls(
                prepare_vision_objectives(recipe.objectives, recipe.split, folder, hidden), quiet=quiet
            )

        objectives = prepare_language_objectives(
            recipe.objectives,
            recipe.split,
            quiet=quiet,
            allow_task_code=recipe.allow_task_code,
            allow_code_execution=recipe.allow_code_execution,
        )
        return cls(objectives, tokenizer=load_tokenizer(folder, recipe.trust_remote_code), quiet=quiet)

    @property
    def names(self) -> list[str]:
        """Objective names, in recipe order."""
        return [o.name for o in self.objectives]

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """Direction of each objective's metric."""
        return {o.name: o.higher_is_better for o in self.objectives}

    @property
    def metrics(self) -> dict[str, str]:
        """The metric behind each objective's score (``exact_match,none``, ``accuracy``, ...)."""
        return {o.name: o.metric_key for o in self.objectives}

    @property
    def is_vision(self) -> bool:
        return isinstance(self.objectives[0], VisionObjective)

    def document_count(self, split: str = "search") -> dict[str, int]:
        """How many documents (or images) each objective scores on ``split``."""
        return {o.name: len(o.indices(split)) for o in self.objectives}

    def score(self, model: Any, split: str = "search", tokenizer: Any = None) -> dict[str, float]:
        """Score an in-memory model on every objective.

        Args:
            model: A causal LM (``PreTrainedModel``) for language objectives, or a vision tower returning
                ``pooler_output`` for vision ones. It is put in eval mode.
            split: ``search``, ``heldout`` or ``all``.
            tokenizer: Another tokenizer than the recipe's (e.g. a saved model's own); language only.

        Returns:
            Objective name -> raw metric value, in recipe order. On the CPU the model runs on one intra-op
            thread, whatever the machine's load (:mod:`hm3.evaluate.threads`).
        """
        if split not in SPLIT_NAMES:
            raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLIT_NAMES)}")
        with scoring_threads(model):
            if self.is_vision:
                return {o.name: o.score(model, split) for o in self.objectives}  # type: ignore[union-attr]
            lm = self._lm_for(model, tokenizer or self.tokenizer)
            with quiet_libraries(self.quiet):
                return {o.name: o.score(lm, split) for o in self.objectives}  # type: ignore[arg-type]

    def _lm_for(self, model: Any, tokenizer: Any) -> Any:
        """The ``HFLM`` of ``tokenizer``, pointed at ``model`` (built once per tokenizer, then swapped)."""
        if tokenizer is None:
            raise UserError("language objectives need a tokenizer")
        lm = self._lms.get(id(tokenizer))
        if lm is None or lm.tokenizer is not tokenizer:
            lm = self._lms[id(tokenizer)] = build_hflm(model, tokenizer)
        else:
            swap_model(lm, model)
        return lm


def load_tokenizer(folder: str | Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved in a model folder.

    Raises:
        UserError: the folder has no loadable tokenizer.
    """
    try:
        with quiet_libraries():
            return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as error:  # missing files and bad configs raise many kinds
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"no usable tokenizer in {folder}: {reason}") from None
