"""The language backend: lm-evaluation-harness tasks scored on a model that lives in memory.

Tasks are resolved once, through lm-eval's ``TaskManager`` (registry names and local task YAMLs alike), their
documents are loaded once and split once (:mod:`hm3.evaluate.split`), and each split's requests are built once
(:mod:`hm3.evaluate.prepared`, as lm-eval's ``evaluate`` builds them with its ``samples`` argument). Scoring a
model replays ``evaluate``'s steps on them through one ``HFLM`` whose model is swapped for each candidate —
with plain greedy generation decided by teacher-forced passes where the result is provably lm-eval's
(:mod:`hm3.evaluate.greedy`). The scores are ``evaluate``'s (``LanguageObjective.score_with_lm_eval`` runs it;
``tests/test_fast_scoring.py`` compares them). Nothing is re-read, nothing is written.

Objective options map to lm-eval's as its CLI would apply them: ``num_fewshot`` (a task whose YAML fixes 0 keeps
0), ``generation_kwargs`` (merged into the task's), ``batch_size``, ``apply_chat_template`` (with few-shot as
multi-turn, the CLI's default), ``limit`` (the first ``limit`` documents of the split, in file order). Few-shot
sampling is re-seeded (lm-eval's seed, 1234) before every score, so every candidate sees the same prompts.

Tasks that execute the model's code (lm-eval's ``unsafe_code``: humaneval, mbpp) load only with the recipe's
``allow_code_execution``; hm3 then passes lm-eval ``confirm_run_unsafe_code=True`` and sets
``HF_ALLOW_CODE_EVAL=1`` (:mod:`hm3.evaluate.task_facts`).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lm_eval.evaluator
import numpy as np
import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from hm3.errors import UserError
from hm3.evaluate.prepared import PreparedSplit
from hm3.evaluate.quiet import quiet_libraries
from hm3.evaluate.split import DocumentSplit, split_documents
from hm3.evaluate.task_code import check_task_code
from hm3.evaluate.task_facts import (
    TaskFacts,
    check_code_execution,
    enable_code_eval,
    filter_names,
    objective_facts,
    reported_metrics,
    resolve_metric_key,
)

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
        manager = build_task_manager(objectives)
        return [
            prepare_language_objective(objective, manager, split, allow_task_code, allow_code_execution)
            for objective in objectives
        ]


def build_task_manager(objectives: Sequence[Objective], allow_defaults: bool = True) -> TaskManager:
    """One TaskManager for all objectives; lm-eval's own registry is indexed only when a name needs it (~15 s,
    once per process when no include path is involved: :func:`registry_task_manager`).

    Args:
        objectives: The objectives whose task files and include paths are indexed.
        allow_defaults: False never indexes lm-eval's built-in tasks (names found nowhere else stay unknown).
    """
    include: list[str] = []
    for objective in objectives:
        folders = [objective.include_path]
        if objective.task_is_file:
            folders.append(str(Path(objective.task).parent))  # type: ignore[arg-type]
        include += [f for f in folders if f and f not in include and Path(f).is_dir()]
    local = TaskManager(include_path=include or None, include_defaults=False)
    names = [o.task for o in objectives if not o.task_is_file]
    if not allow_defaults or all(name in local.task_index for name in names):
        return local
    if not include:
        return registry_task_manager()
    return TaskManager(include_path=include, include_defaults=True)


@functools.cache
def registry_task_manager() -> TaskManager:
    """The installed lm-eval's own task index, built once per process (~15 s: it reads every task YAML)."""
    with quiet_libraries():
        return TaskManager(include_defaults=True)


def prepare_language_objective(
    objective: Objective,
    manager: TaskManager,
    split: SplitConfig,
    allow_task_code: bool = False,
    allow_code_execution: bool = False,
) -> LanguageObjective:
    """One objective of :func:`prepare_language_objectives`, with a ready ``manager``."""
    task = _load_task(objective, manager, allow_task_code, allow_code_execution)
    _configure(task, objective)
    metric_key = _metric_key(task, objective)
    docs = task.eval_docs
    document_split = split_documents(docs, split.search_fraction, split.seed, split.screen_fraction)
    for side in ("search", "heldout"):
        if not document_split.indices(side):
            raise UserError(
                f"objective {objective.name}: task {task.task_name} has {len(docs)} evaluation document(s), "
                f"none left for the {side} split (search_fraction {split.search_fraction})"
            )
    metric = metric_key.split(",")[0]
    direction = objective.higher_is_better
    if "higher_is_better" not in objective.model_fields_set:
        direction = bool(task.higher_is_better().get(metric, True))
    return LanguageObjective(objective, task, metric_key, direction, document_split, allow_code_execution)


def _load_task(
    objective: Objective, manager: TaskManager, allow_task_code: bool, allow_code_execution: bool
) -> Task:
    spec = objective.task
    if not objective.task_is_file and spec not in manager.task_index:
        raise UserError(f"objective {objective.name}: lm-eval has no task named {spec!r}")
    if objective.task_is_file and not Path(spec).is_file():  # type: ignore[arg-type]
        raise UserError(f"objective {objective.name}: task file not found: {spec}")
    check_task_code(objective, manager, allow_task_code)  # before lm-eval imports any !function file
    if check_code_execution(objective, objective_facts(objective, manager), allow_code_execution):
        enable_code_eval()  # humaneval's and mbpp's utils run code_eval's self-test on import
    try:
        loaded = manager.load([spec])
    except Exception as error:  # lm-eval raises many kinds (YAML, datasets, templates): all mean "unusable"
        raise UserError(
            f"objective {objective.name}: task {spec} does not load: {_one_line(error)}"
        ) from None
    tasks = list(loaded["tasks"].values())
    if len(tasks) != 1:
        raise UserError(
            f"objective {objective.name}: {spec} is a group of {len(tasks)} tasks; name one task per objective"
        )
    if getattr(tasks[0], "UNSAFE_CODE", False):  # a Python-class task: its flag was not in YAML
        check_code_execution(objective, TaskFacts(str(spec), (), (), unsafe_code=True), allow_code_execution)
        enable_code_eval()
    return tasks[0]


def _configure(task: Task, objective: Objective) -> None:
    """Apply the objective's options the way ``lm_eval.simple_evaluate`` applies the CLI's."""
    if objective.num_fewshot is not None and task.get_config("num_fewshot") != 0:
        task.set_config(key="num_fewshot", value=objective.num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    if objective.generation_kwargs and task.get_config("output_type") == "generate_until":
        task.set_config(key="generation_kwargs", value=dict(objective.generation_kwargs), update=True)


def task_metrics(task: Task) -> tuple[list[str], list[str]]:
    """The metrics a task reports and its filter names (``none`` when it has no filter list)."""
    metric_list = task.config.metric_list
    metrics = reported_metrics(metric_list) if metric_list else list(task.higher_is_better())
    return metrics, filter_names(task.config.filter_list)


def _metric_key(task: Task, objective: Objective) -> str:
    metrics, filters = task_metrics(task)
    return resolve_metric_key(objective, task.task_name, metrics, filters)


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


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]
