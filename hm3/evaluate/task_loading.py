"""An objective's lm-eval task, loaded without a model: resolved through lm-eval's ``TaskManager`` (registry
names and local task YAMLs alike), configured with the objective's options, its metric key checked and its
documents split (:mod:`hm3.evaluate.split`).

The language backend (:mod:`hm3.evaluate.language`) scores models on these tasks; ``hm3 validate`` loads them
here, without importing torch, transformers or lm-eval's model classes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lm_eval.tasks import TaskManager

from hm3.errors import UserError
from hm3.evaluate.quiet import quiet_libraries
from hm3.evaluate.split import DocumentSplit, split_documents
from hm3.evaluate.task_code import check_task_code
from hm3.evaluate.task_facts import (
    ObjectiveSettingError,
    TaskFacts,
    check_code_execution,
    check_fewshot,
    check_generation_settings,
    enable_code_eval,
    filter_names,
    objective_facts,
    reported_metrics,
    resolve_metric_key,
)

if TYPE_CHECKING:
    from lm_eval.api.task import Task

    from hm3.recipe import Objective, SplitConfig


@dataclass(frozen=True)
class ObjectiveTask:
    """One objective's task, loaded and configured, with its metric key, direction and document split."""

    task: Task
    metric_key: str
    """Key of the score in lm-eval's results, ``metric,filter`` (e.g. ``exact_match,none``)."""
    higher_is_better: bool
    """The recipe's direction if it sets one, else the task's."""
    split: DocumentSplit


class TaskScopes:
    """The ``TaskManager`` each objective's task is resolved in — what ``lm_eval --tasks T --include_path P``
    would use for that objective alone, never another objective's folders.

    A task named in the recipe is looked up in its own ``include_path`` (which lm-eval lets override its
    registry), else in lm-eval's registry; a task file is loaded with its own folder indexed. One shared index
    once let a name resolve to another objective's folder, where a task of the same name (another file, other
    data, untracked by the run's fingerprint) won by the objectives' order. Managers are built once per folder
    set and kept for the scope's life.

    Args:
        allow_defaults: False never indexes lm-eval's built-in tasks: a name its own folder lacks is answered
            with a manager that does not know it.
    """

    def __init__(self, allow_defaults: bool = True) -> None:
        self.allow_defaults = allow_defaults
        self._local: dict[tuple[str, ...], TaskManager] = {}

    def manager(self, objective: Objective) -> TaskManager:
        """The manager ``objective``'s task is loaded with (the registry's is built once per process, ~15 s)."""
        folders = [objective.include_path] if objective.include_path else []
        if objective.task_is_file:
            folders.append(str(Path(objective.task).parent))  # type: ignore[arg-type]
        local = self._local_manager(tuple(f for f in dict.fromkeys(folders) if Path(f).is_dir()))
        if objective.task_is_file or objective.task in local.task_index or not self.allow_defaults:
            return local
        return registry_task_manager()

    def _local_manager(self, folders: tuple[str, ...]) -> TaskManager:
        if folders not in self._local:
            self._local[folders] = TaskManager(include_path=list(folders) or None, include_defaults=False)
        return self._local[folders]


@functools.cache
def registry_task_manager() -> TaskManager:
    """The installed lm-eval's own task index, built once per process (~15 s: it reads every task YAML)."""
    with quiet_libraries():
        return TaskManager(include_defaults=True)


def load_objective_task(
    objective: Objective,
    manager: TaskManager,
    split: SplitConfig,
    allow_task_code: bool = False,
    allow_code_execution: bool = False,
) -> ObjectiveTask:
    """Load, configure and split one objective's task with its scope's ``manager``
    (:meth:`TaskScopes.manager`), as the evaluator scores it.

    Raises:
        UserError: naming the objective, for an unknown task, a task file that does not load or runs code
            without the opt-in, a metric the task does not produce, or a split with no documents.
    """
    task = _load_task(objective, manager, allow_task_code, allow_code_execution)
    _configure(task, objective)
    _check_fewshot_pool(task, objective)
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
    if direction is None:  # the task's own (lm-eval's default for a metric it does not name: higher)
        direction = bool(task.higher_is_better().get(metric, True))
    return ObjectiveTask(task, metric_key, direction, document_split)


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
        with _datasets_errors_unlogged():  # the error is reported below, in hm3's one line
            loaded = manager.load([spec])
    except StopIteration:  # datasets' JSON reader on a file with no rows
        raise UserError(
            f"objective {objective.name}: task {spec} does not load: its data has no documents"
        ) from None
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


def _check_fewshot_pool(task: Task, objective: Objective) -> None:
    """Refuse a few-shot count larger than the documents lm-eval draws the examples from (its sampler would
    raise ``Sample larger than population`` on the first document scored).

    Raises:
        ObjectiveSettingError: naming the objective, the count and the pool's size.
    """
    shots = task.get_config("num_fewshot") or 0
    if not shots:
        return
    pool = len(task.fewshot_docs())
    fewshot_split = task.get_config("fewshot_split")
    needed = (
        shots + 1 if fewshot_split is not None and fewshot_split == task.get_config("test_split") else shots
    )
    if needed > pool:
        raise ObjectiveSettingError(
            f"objective {objective.name}: num_fewshot {shots} is more than the {pool} document(s) task "
            f"{task.task_name} draws its few-shot examples from"
            + (" (one of them the document scored)" if needed > shots else ""),
            "num_fewshot",
        )


def fewshot_from_evaluation_documents(task: Task) -> bool:
    """Whether the task's few-shot examples come from the documents it is scored on — held-out ones among them
    for the search's prompts — as lm-eval does for a task with no ``fewshot_split``, no ``fewshot_config``
    samples and neither training nor validation documents (or a ``fewshot_split`` that is its test split)."""
    if not task.get_config("num_fewshot"):
        return False
    scored = task.get_config("test_split") if task.has_test_docs() else task.get_config("validation_split")
    fewshot = getattr(task, "fewshot_cfg", None)  # what ConfigurableTask.fewshot_docs reads, in its order
    source = None if fewshot is None else fewshot.split
    if source is None:
        if fewshot is not None and task.config.fewshot_config is not None and fewshot.samples is not None:
            return False
        if task.has_training_docs():
            source = task.get_config("training_split")
        elif task.has_validation_docs():
            source = task.get_config("validation_split")
        else:
            source = task.get_config("test_split")
    return source == scored


def _configure(task: Task, objective: Objective) -> None:
    """Apply the objective's options the way ``lm_eval.simple_evaluate`` applies the CLI's (a few-shot count
    that it would ignore is refused: :func:`check_fewshot`)."""
    check_fewshot(objective, task.task_name, task.get_config("num_fewshot"))
    if objective.num_fewshot is not None and task.get_config("num_fewshot") != 0:
        task.set_config(key="num_fewshot", value=objective.num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    if objective.generation_kwargs:
        check_generation_settings(objective, task.task_name, task.get_config("output_type"))
        task.set_config(key="generation_kwargs", value=dict(objective.generation_kwargs), update=True)


def task_metrics(task: Task) -> tuple[list[str], list[str]]:
    """The metrics a task reports and its filter names (``none`` when it has no filter list)."""
    metric_list = task.config.metric_list
    metrics = reported_metrics(metric_list) if metric_list else list(task.higher_is_better())
    return metrics, filter_names(task.config.filter_list)


def _metric_key(task: Task, objective: Objective) -> str:
    metrics, filters = task_metrics(task)
    return resolve_metric_key(objective, task.task_name, metrics, filters)


@contextlib.contextmanager
def _datasets_errors_unlogged() -> Iterator[None]:
    """``datasets`` logs a data file it cannot parse on a line of its own before raising; within the block its
    logger keeps only critical records."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _one_line(error: BaseException) -> str:
    """The first line of an error, with the error beneath it where the outer one only says that something
    failed (``datasets``: "An error occurred while generating the dataset", caused by a JSON parse error)."""
    text = str(error).strip()
    line = (text.splitlines()[0] if text else type(error).__name__)[:300]
    cause = error.__cause__ or error.__context__
    if cause is not None and "error occurred" in line.lower():
        line = f"{line}: {_one_line(cause)}"
    return line[:400]
