"""What ``hm3 validate`` can check about lm-eval objectives without a model, offline.

Objectives whose task is a local YAML, or a name found in the recipe's include paths, are prepared exactly as
the evaluator prepares them (task loaded, data read, metric and filter checked, split non-empty): a few seconds,
mostly lm-eval's import.

Names from lm-eval's built-in registry are checked from the installed lm-eval's task index (built once per
process, ~15 s) and the task's YAML, without loading the task or its data: the name exists and is one task, the
metric key (with its filter) is one the task reports, a task that executes the model's code has the recipe's
``allow_code_execution``, and a task whose data is not in the local cache is noted as needing the hub.
"""

from __future__ import annotations

import lm_eval

from hm3.errors import UserError
from hm3.evaluate.quiet import quiet_libraries
from hm3.evaluate.task_code import objective_task_code
from hm3.evaluate.task_facts import (
    ObjectiveSettingError,
    check_code_execution,
    check_fewshot,
    check_generation_settings,
    data_is_local,
    objective_facts,
    resolve_metric_key,
)
from hm3.evaluate.task_loading import (
    ObjectiveTask,
    TaskScopes,
    fewshot_from_evaluation_documents,
    load_objective_task,
    registry_task_manager,
)
from hm3.recipe import Objective, Recipe


def language_objective_problems(
    recipe: Recipe,
    not_checked: list[str],
    runs_code: list[str] | None = None,
    notes: list[str] | None = None,
) -> list[tuple[str, str]]:
    """Problems of the recipe's lm-eval objectives, as ``(yaml_path, message)``; unchecked ones go to ``not_checked``.

    Args:
        recipe: A recipe whose files were already found to exist.
        not_checked: Receives one line per objective that could not be checked here.
        runs_code: Receives one line per ``!function`` tag of an objective's task files (allowed or not: a
            task that runs code without ``allow_task_code`` is also a problem, and is not loaded).
        notes: Receives one line per registry task whose data needs the hub (not in the local cache), and per
            local task whose few-shot examples are drawn from the documents it is scored on.
    """
    objectives = [(i, o) for i, o in enumerate(recipe.objectives) if o.task is not None]
    if not objectives:
        return []
    problems: list[tuple[str, str]] = []
    with quiet_libraries():
        scopes = TaskScopes(allow_defaults=False)
        for i, objective in objectives:
            where = f"objectives[{i}].task"
            local = scopes.manager(objective)
            try:
                if not objective.task_is_file and objective.task not in local.task_index:
                    needs_hub, unread = _check_registry_task(objective, recipe.allow_code_execution)
                    if needs_hub and notes is not None:
                        notes.append(f"{where} ({objective.task}): {needs_hub}")
                    if unread:
                        not_checked.append(f"{where} ({objective.task}): {unread}")
                    continue
                found = objective_task_code(objective, local)
                if runs_code is not None:
                    runs_code += [f"{where} ({objective.name}): {code.describe()}" for code in found]
                loaded = load_objective_task(
                    objective, local, recipe.split, recipe.allow_task_code, recipe.allow_code_execution
                )
                if notes is not None and fewshot_from_evaluation_documents(loaded.task):
                    notes.append(
                        f"{where} ({objective.name}): its {loaded.task.get_config('num_fewshot')} few-shot "
                        "examples are drawn from the documents it is scored on (no fewshot_split): the search's "
                        "prompts show held-out documents with their answers"
                    )
                if notes is not None and (contradiction := _direction_contradiction(objective, loaded)):
                    notes.append(f"objectives[{i}].higher_is_better ({objective.name}): {contradiction}")
            except UserError as error:
                field = (
                    f"objectives[{i}].{error.setting}" if isinstance(error, ObjectiveSettingError) else where
                )
                problems.append((field, str(error).removeprefix(f"objective {objective.name}: ")))
    return problems


def _direction_contradiction(objective: Objective, loaded: ObjectiveTask) -> str | None:
    """Why the recipe's ``higher_is_better`` reads as a slip: the task itself says the other direction for the
    metric (the search then optimises the metric the wrong way); None when they agree or the task is silent."""
    metric = loaded.metric_key.split(",")[0]
    own = loaded.task.higher_is_better().get(metric)
    if objective.higher_is_better is None or own is None or bool(own) == objective.higher_is_better:
        return None
    wanted = "maximises" if objective.higher_is_better else "minimises"
    return f"the recipe says {objective.higher_is_better}, the task says {bool(own)} for {metric}: the search {wanted} it"


def _check_registry_task(objective: Objective, allow_code_execution: bool) -> tuple[str | None, str | None]:
    """Check a registry name from lm-eval's index and its YAML.

    Returns:
        The "needs the hub" note (data not in the local cache) and the "not checked" line (a task defined by a
        Python class, whose metrics are not in YAML), each None when it does not apply.

    Raises:
        UserError: naming the objective: an unknown name, a group or tag, a metric or filter the task does not
            have, or a task that executes code without ``allow_code_execution``.
    """
    manager = registry_task_manager()
    if objective.task not in manager.task_index:
        raise UserError(
            f"objective {objective.name}: lm-eval {lm_eval.__version__} has no task named {objective.task!r}"
        )
    objective_task_code(objective, manager)  # refuses groups and tags
    facts = objective_facts(objective, manager)
    if facts is None:
        return None, "a Python-class lm-eval task: its metric is checked when scoring"
    check_code_execution(objective, facts, allow_code_execution)
    check_fewshot(objective, facts.name, facts.num_fewshot)
    if objective.generation_kwargs:
        check_generation_settings(objective, facts.name, facts.output_type)
    resolve_metric_key(objective, facts.name, facts.metrics, facts.filters)
    if data_is_local(facts):
        return None, None
    return (
        f"needs the hub: data set {facts.dataset_path} is not in the local cache (downloaded when scoring)",
        None,
    )
