"""The language backend: lm-evaluation-harness tasks scored on a model that lives in memory.

Tasks are resolved, configured and split once (:mod:`hm3.evaluate.task_loading`), and each split's requests are
built once (:mod:`hm3.evaluate.prepared`, as lm-eval's ``evaluate`` builds them with its ``samples`` argument).
Scoring a model replays ``evaluate``'s steps on them through one ``HFLM`` whose model is swapped for each candidate —
with plain greedy generation decided by teacher-forced passes where the result is provably lm-eval's
(:mod:`hm3.evaluate.greedy`). The scores are ``evaluate``'s (``LanguageObjective.score_with_lm_eval`` runs it;
``tests/test_fast_scoring.py`` compares them). Nothing is re-read, nothing is written.

Objective options map to lm-eval's as its CLI would apply them: ``num_fewshot`` (refused where lm-eval would
ignore it — the task's YAML fixes 0 — or cannot draw that many examples), ``generation_kwargs`` (merged into
the task's), ``batch_size``, ``apply_chat_template`` (with few-shot as multi-turn, the CLI's default),
``limit`` (the first ``limit`` documents of the split, in file order). Few-shot sampling is re-seeded
(lm-eval's seed, 1234) before every score, so every candidate sees the same prompts.

Tasks that execute the model's code (lm-eval's ``unsafe_code``: humaneval, mbpp) load only with the recipe's
``allow_code_execution``; hm3 then passes lm-eval ``confirm_run_unsafe_code=True`` and sets
``HF_ALLOW_CODE_EVAL=1`` (:mod:`hm3.evaluate.task_facts`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import lm_eval.evaluator
import numpy as np
import torch
from lm_eval.models.huggingface import HFLM

from hm3.errors import UserError
from hm3.evaluate.prepared import PreparedSplit
from hm3.evaluate.quiet import quiet_libraries
from hm3.evaluate.split import DocumentSplit
from hm3.evaluate.task_facts import ObjectiveSettingError
from hm3.evaluate.task_loading import TaskScopes, load_objective_task
from hm3.recipe import GENERATION_LENGTH_KEYS

if TYPE_CHECKING:
    from lm_eval.api.task import Task

    from hm3.recipe import Objective, SplitConfig

FEWSHOT_SEED = 1234
"""lm-eval's default few-shot seed (``DEFAULT_OTHER_SEED``), so hm3 and the ``lm_eval`` CLI build the same prompts."""


class _IndexList(list):
    """A list of document positions with O(1) membership (lm-eval tests ``i in samples`` per document)."""

    def __init__(self, indices: Sequence[int]) -> None:
        super().__init__(indices)
        self._members = frozenset(indices)

    def __contains__(self, item: object) -> bool:
        return item in self._members


@dataclass
class LanguageObjective:
    """One objective's lm-eval task, prepared: loaded, configured, its documents split.

    Attributes:
        objective: The recipe's objective.
        task: lm-eval's task object, reused for every candidate.
        metric_key: Key of the score in lm-eval's results, ``metric,filter`` (e.g. ``exact_match,none``).
        higher_is_better: Direction of the metric (the recipe's if it sets one, else the task's).
        split: Positions of the task's evaluation documents on each side.
        allow_code_execution: The recipe's opt-in, passed to lm-eval as ``confirm_run_unsafe_code``.
        shortcut: Let plain greedy tasks skip token-by-token decoding where the result is provably lm-eval's
            (:mod:`hm3.evaluate.greedy`); False replays lm-eval's decoding for every scoring.
    """

    objective: Objective
    task: Task
    metric_key: str
    higher_is_better: bool
    split: DocumentSplit
    allow_code_execution: bool = False
    shortcut: bool = True
    _prepared: dict[tuple[str, int], tuple[HFLM, PreparedSplit]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.objective.name

    def indices(self, split: str) -> list[int]:
        """Positions scored on ``split``, cut to the objective's ``limit``."""
        return self.split.limited(split, self.objective.limit)

    def score(self, lm: HFLM, split: str) -> float:
        """The objective's metric for the model inside ``lm``, on ``split``'s documents.

        The split's requests are built once per ``HFLM`` (:class:`~hm3.evaluate.prepared.PreparedSplit`) and
        replayed through lm-eval's own steps; the score equals :meth:`score_with_lm_eval`'s.
        """
        if getattr(self.task, "UNSAFE_CODE", False) and not self.allow_code_execution:
            raise UserError(
                f"objective {self.name}: task {self.task.task_name} executes the model's code; "
                "set allow_code_execution: true in the recipe to score it"
            )
        lm.batch_size_per_gpu = self.objective.batch_size
        with _seeded(FEWSHOT_SEED):
            return self.prepared(lm, split).score(lm)

    def prepared(self, lm: HFLM, split: str) -> PreparedSplit:
        """The split's requests for ``lm``'s tokenizer, built on first use."""
        key = (split, id(lm))  # the entry holds ``lm`` itself, so the id cannot be reused by another HFLM
        prepared = self._prepared.get(key, (None, None))[1]
        if prepared is None:
            _check_generation_length(self.task, lm, self.name)
            if self.objective.apply_chat_template and not getattr(lm.tokenizer, "chat_template", None):
                raise ObjectiveSettingError(
                    f"objective {self.name}: apply_chat_template is set, and the model's tokenizer has no chat "
                    "template; leave it out, or score with a tokenizer that has one (tokenizer_source)",
                    "apply_chat_template",
                )
            self.task.set_fewshot_seed(seed=FEWSHOT_SEED)
            chat = self.objective.apply_chat_template
            with _seeded(FEWSHOT_SEED):
                prepared = PreparedSplit.build(
                    self.task, _IndexList(self.indices(split)), lm, self.metric_key, chat, self.shortcut
                )
            self._prepared[key] = (lm, prepared)
        return prepared

    def score_with_lm_eval(self, lm: HFLM, split: str) -> float:
        """The same score through one ``lm_eval.evaluator.evaluate`` call (requests rebuilt, every document
        decoded token by token): the reference the parity tests and the benchmark compare against."""
        name = self.task.task_name
        self.task.set_fewshot_seed(seed=FEWSHOT_SEED)
        lm.batch_size_per_gpu = self.objective.batch_size
        chat = self.objective.apply_chat_template
        with _seeded(FEWSHOT_SEED):
            results = lm_eval.evaluator.evaluate(
                lm=lm,
                task_dict={"tasks": {name: self.task}, "groups": {}, "group_map": {}},
                samples={name: _IndexList(self.indices(split))},
                bootstrap_iters=0,
                log_samples=False,
                apply_chat_template=chat,
                fewshot_as_multiturn=chat,
                confirm_run_unsafe_code=self.allow_code_execution,
            )
        return float(results["results"][name][self.metric_key])


def _check_generation_length(task: Task, lm: HFLM, name: str) -> None:
    """Refuse a task that may generate as many tokens as the model's context holds: lm-eval asserts on the first
    document (its prompt would get no room), a traceback in the middle of a search.

    Raises:
        ObjectiveSettingError: naming the objective, the task's generation length and the model's.
    """
    if task.get_config("output_type") != "generate_until" or lm.backend != "causal":
        return
    settings = task.get_config("generation_kwargs") or {}
    given = [settings[key] for key in GENERATION_LENGTH_KEYS if settings.get(key) is not None]
    length = int(given[0]) if given else lm.max_gen_toks
    if length >= lm.max_length:
        raise ObjectiveSettingError(
            f"objective {name}: task {task.task_name} generates up to {length} tokens, and the model's maximum "
            f"sequence length is {lm.max_length}: set generation_kwargs: {{max_gen_toks: N}} below it",
            "generation_kwargs",
        )


def prepare_language_objectives(
    objectives: Sequence[Objective],
    split: SplitConfig,
    quiet: bool = True,
    allow_task_code: bool = False,
    allow_code_execution: bool = False,
) -> list[LanguageObjective]:
    """Resolve, load, configure and split every lm-eval objective (no model is needed).

    Args:
        objectives: The recipe's lm-eval objectives.
        split: The recipe's split settings.
        quiet: Silence lm-eval's and datasets' logging.
        allow_task_code: Load task YAMLs whose ``!function`` tags run Python (the recipe's
            ``allow_task_code``); without it they are refused before lm-eval reads them.
        allow_code_execution: Load and score tasks that execute the model's code (the recipe's
            ``allow_code_execution``); without it they are refused before lm-eval reads them.

    Raises:
        UserError: naming the objective, for an unknown task, a task file that does not load or runs code
            without the opt-in, a metric the task does not produce, or a split with no documents.
    """
    with quiet_libraries(quiet):
        scopes = TaskScopes()
        prepared = []
        for objective in objectives:
            loaded = load_objective_task(
                objective, scopes.manager(objective), split, allow_task_code, allow_code_execution
            )
            prepared.append(
                LanguageObjective(
                    objective,
                    loaded.task,
                    loaded.metric_key,
                    loaded.higher_is_better,
                    loaded.split,
                    allow_code_execution,
                )
            )
        return prepared


def build_hflm(model: Any, tokenizer: Any) -> HFLM:
    """lm-eval's ``HFLM`` around a live model and its tokenizer (cheap: no loading, no copying)."""
    with quiet_libraries():
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)


def swap_model(lm: HFLM, model: Any) -> None:
    """Point an existing ``HFLM`` at another model of the same family (what a new candidate needs)."""
    model.eval()
    lm._model = model
    lm._config = model.config
    lm._device = model.device


class _seeded:
    """Seed python, numpy and torch inside a block, then restore their states (the caller's RNGs stay put)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self._states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        python_state, numpy_state, torch_state = self._states
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)
