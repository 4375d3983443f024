"""What an lm-eval task declares in its YAML, read without running it: metrics, filters, unsafe code, data.

``hm3 validate`` checks registry tasks with these facts, offline and without a model, and scoring uses the same
rules before lm-eval loads a task:

* the recipe's metric key (``metric,filter``) is one the task reports;
* a task marked ``unsafe_code: true`` (humaneval, mbpp: they execute the programs the model writes) is refused
  unless the recipe sets ``allow_code_execution: true``;
* a task whose data set is neither local nor in the Hugging Face caches needs the hub to be scored;
* an objective's ``num_fewshot`` and ``generation_kwargs`` are ones lm-eval applies: not a few-shot count on a
  task whose YAML fixes 0, not generation settings on a task that generates nothing or that neither lm-eval nor
  transformers' ``GenerationConfig`` reads.

Metric names follow lm-eval: a name from ``metric_list``, a ``!function``'s function name, or, without a
``metric_list``, the output type's defaults. A metric function given ``k`` follows HF evaluate's ``code_eval``
(humaneval's ``pass_at_k``) and reports ``pass@k`` for each ``k`` instead of its own name.

Example::

    facts = objective_facts(objective, manager)    # None for a Python-class task
    facts.unsafe_code, facts.metrics, facts.filters  # True, ("pass@1",), ("create_test",) for humaneval
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets.config
import huggingface_hub.constants
from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY

from hm3.errors import UserError
from hm3.evaluate.task_code import FunctionReference, task_config
from hm3.recipe import TYPED_GENERATION_KEYS

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

    from hm3.recipe import Objective

CODE_EVAL_VARIABLE = "HF_ALLOW_CODE_EVAL"
"""The variable HF evaluate's ``code_eval`` metric needs set to ``1`` before it executes any program."""

LOCAL_BUILDERS = frozenset(
    {"json", "csv", "parquet", "text", "arrow", "pandas", "imagefolder", "audiofolder"}
)
"""``dataset_path`` values that are datasets' packaged builders: the data files are named in the task."""


@dataclass(frozen=True)
class TaskFacts:
    """What one task's YAML says, without loading it.

    Attributes:
        name: The task's name.
        metrics: The metric names its results carry.
        filters: Its filter names (``none`` when it has no filter list).
        unsafe_code: lm-eval's ``unsafe_code``: scoring executes the model's output.
        dataset_path: Its data set (a hub id, a local path or a packaged builder), if it names one.
        num_fewshot: The few-shot count its YAML sets, if it sets one (0 is fixed: lm-eval ignores another).
        output_type: How it is scored (``generate_until``, ``multiple_choice``, ...), if its YAML says.
    """

    name: str
    metrics: tuple[str, ...]
    filters: tuple[str, ...]
    unsafe_code: bool = False
    dataset_path: str | None = None
    num_fewshot: int | None = None
    output_type: str | None = None


def facts_from_config(config: Mapping[str, Any]) -> TaskFacts:
    """The facts of a task config as :func:`hm3.evaluate.task_code.task_config` reads it."""
    metric_list = config.get("metric_list")
    if metric_list is None:
        metrics = list(DEFAULT_METRIC_REGISTRY.get(config.get("output_type", "generate_until"), []))
    else:
        metrics = reported_metrics(metric_list)
    path = config.get("dataset_path")
    return TaskFacts(
        name=str(config.get("task")),
        metrics=tuple(metrics),
        filters=tuple(filter_names(config.get("filter_list"))),
        unsafe_code=bool(config.get("unsafe_code")),
        dataset_path=None if path is None else str(path),
        num_fewshot=config.get("num_fewshot") if isinstance(config.get("num_fewshot"), int) else None,
        output_type=str(config.get("output_type", "generate_until")),
    )


def reported_metrics(metric_list: Sequence[Mapping[str, Any]]) -> list[str]:
    """The names a ``metric_list`` puts in lm-eval's results (functions as lm-eval's loader or hm3's reads them)."""
    names: list[str] = []
    for entry in metric_list:
        metric = entry.get("metric")
        if callable(metric):
            name, is_function = str(getattr(metric, "__name__", metric)), True
        else:
            name, is_function = str(metric), isinstance(metric, FunctionReference)
            name = name.rpartition(".")[2] if is_function else name
        if is_function and "k" in entry:
            ks = entry["k"] if isinstance(entry["k"], list) else [entry["k"]]
            names += [f"pass@{k}" for k in ks]
        else:
            names.append(name)
    return names


def filter_names(filter_list: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """A ``filter_list``'s names; ``none`` (lm-eval's name for no filter) when there is none."""
    return [str(f["name"]) for f in filter_list or [] if "name" in f] or ["none"]


def resolve_metric_key(
    objective: Objective, task_name: str, metrics: Sequence[str], filters: Sequence[str]
) -> str:
    """The ``metric,filter`` key of ``objective`` in the task's results (the task's first ones by default).

    Raises:
        UserError: naming the objective, for a metric or a filter the task does not have.
    """
    if not metrics:
        raise UserError(f"objective {objective.name}: task {task_name} reports no metric")
    metric, _, filter_name = (objective.metric or metrics[0]).partition(",")
    if metric not in metrics:
        raise UserError(
            f"objective {objective.name}: task {task_name} does not report {metric!r} "
            f"(it reports {', '.join(metrics)})"
        )
    if filter_name and filter_name not in filters:
        raise UserError(
            f"objective {objective.name}: task {task_name} has no filter {filter_name!r} "
            f"(its filters: {', '.join(filters)})"
        )
    return f"{metric},{filter_name or filters[0]}"


def objective_facts(objective: Objective, manager: TaskManager) -> TaskFacts | None:
    """The facts of ``objective``'s task, read from its YAML; None when they are not in YAML (a Python class).

    Raises:
        UserError: a task file that does not read (see :func:`hm3.evaluate.task_code.task_config`).
    """
    if objective.task_is_file:
        path = Path(str(objective.task))
    else:
        entry = manager.task_index.get(str(objective.task))
        if entry is None or entry.yaml_path is None:
            return None
        path = Path(entry.yaml_path)
    try:
        config = task_config(path)
    except UserError as error:
        raise UserError(f"objective {objective.name}: task {objective.task} does not load: {error}") from None
    if "class" in config or (not objective.task_is_file and config.get("task") != objective.task):
        return None
    return facts_from_config(config)


def check_code_execution(objective: Objective, facts: TaskFacts | None, allow: bool) -> bool:
    """Whether the task executes the model's code; refused (UserError) when it does and ``allow`` is false."""
    if facts is None or not facts.unsafe_code:
        return False
    if not allow:
        raise UserError(
            f"objective {objective.name} runs task {facts.name}, which executes the code the model writes "
            "(lm-eval marks it unsafe_code); set 'allow_code_execution: true' in the recipe to allow it"
        )
    return True


class ObjectiveSettingError(UserError):
    """An objective setting the task would ignore or cannot apply (a ``num_fewshot`` lm-eval keeps at 0 or cannot
    draw, ``generation_kwargs`` of a task that generates nothing, that ``generate`` does not know or as long as
    the model's context, ``apply_chat_template`` with a tokenizer that has no template).

    Args:
        message: The one line, naming the objective.
        setting: The objective's field at fault (``num_fewshot``), so ``hm3 validate`` names it.
    """

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


def check_fewshot(objective: Objective, task_name: str, task_num_fewshot: int | None) -> None:
    """Refuse a few-shot count that lm-eval would ignore: a task whose YAML sets ``num_fewshot: 0`` keeps 0
    whatever is asked (``simple_evaluate`` only logs it), so the recipe's count would silently not apply.

    Raises:
        ObjectiveSettingError: naming the objective, the task and the count.
    """
    if task_num_fewshot == 0 and objective.num_fewshot:
        raise ObjectiveSettingError(
            f"objective {objective.name}: num_fewshot {objective.num_fewshot} would be ignored: task {task_name} "
            "sets num_fewshot: 0 in its YAML, which lm-eval keeps; leave num_fewshot out or set it to 0",
            "num_fewshot",
        )


def check_generation_settings(objective: Objective, task_name: str, output_type: str | None) -> None:
    """Refuse ``generation_kwargs`` that would not apply: a task that generates nothing (it scores
    log-likelihoods, so they were ignored), or a key neither lm-eval nor transformers' ``generate`` reads (it
    failed on the first document, naming ``model_kwargs``).

    Raises:
        ObjectiveSettingError: naming the objective and the task or the keys.
    """
    if output_type != "generate_until":
        raise ObjectiveSettingError(
            f"objective {objective.name}: task {task_name} scores {output_type} and generates nothing, so its "
            "generation_kwargs would be ignored; leave them out",
            "generation_kwargs",
        )
    unknown = sorted(set(objective.generation_kwargs) - TYPED_GENERATION_KEYS)
    if unknown:
        # transformers only for keys beyond lm-eval's own (validate stays without it)
        from transformers import GenerationConfig

        unknown = sorted(set(unknown) - set(GenerationConfig().to_dict()))
    if unknown:
        raise ObjectiveSettingError(
            f"objective {objective.name}: generation_kwargs {', '.join(map(repr, unknown))}: not a generation "
            "setting lm-eval or transformers' GenerationConfig knows",
            "generation_kwargs",
        )


def enable_code_eval() -> None:
    """Set ``HF_ALLOW_CODE_EVAL=1``, which HF evaluate's ``code_eval`` (loaded by lm-eval's code tasks) needs."""
    os.environ[CODE_EVAL_VARIABLE] = "1"


def data_is_local(facts: TaskFacts) -> bool:
    """Whether the task's data can be read without the hub: local files, or a data set in the HF caches."""
    path = facts.dataset_path
    if path is None or path in LOCAL_BUILDERS or Path(path).expanduser().exists():
        return True
    return hub_data_in_cache(path)


def hub_data_in_cache(path: str) -> bool:
    """Whether a hub data set is in the local caches: its files downloaded (the hub cache), or prepared by
    ``datasets``."""
    snapshot = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}"
    prepared = Path(datasets.config.HF_DATASETS_CACHE) / path.replace("/", "___")
    return snapshot.is_dir() or prepared.is_dir()
