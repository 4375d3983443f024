"""What ``hm3 validate`` can check about lm-eval objectives without a model and within a few seconds.

Objectives whose task is a local YAML, or a name found in the recipe's include paths, are prepared exactly as
the evaluator prepares them (task loaded, data read, metric and filter checked, split non-empty): a few seconds,
mostly lm-eval's import. Names from lm-eval's built-in registry are left to scoring time, because indexing the
registry takes ~20 s; they are listed as not checked.
"""

from __future__ import annotations

from hm3.errors import UserError
from hm3.recipe import Recipe

_REGISTRY_NOTE = "lm-eval registry names are checked when scoring (indexing the registry takes ~20 s)"


def language_objective_problems(
    recipe: Recipe, not_checked: list[str], runs_code: list[str] | None = None
) -> list[tuple[str, str]]:
    """Problems of the recipe's lm-eval objectives, as ``(yaml_path, message)``; unchecked ones go to ``not_checked``.

    Args:
        recipe: A recipe whose files were already found to exist.
        not_checked: Receives one line per objective that could not be checked here.
        runs_code: Receives one line per ``!function`` tag of an objective's task files (allowed or not: a
            task that runs code without ``allow_task_code`` is also a problem, and is not loaded).
    """
    from hm3.evaluate.language import build_task_manager, prepare_language_objective
    from hm3.evaluate.quiet import quiet_libraries
    from hm3.evaluate.task_code import objective_task_code

    objectives = [(i, o) for i, o in enumerate(recipe.objectives) if o.task is not None]
    if not any(
        o.task_is_file or o.include_path for _, o in objectives
    ):  # nothing local: skip lm-eval's import
        not_checked += [f"objectives[{i}].task ({o.task}): {_REGISTRY_NOTE}" for i, o in objectives]
        return []
    problems: list[tuple[str, str]] = []
    with quiet_libraries():
        manager = build_task_manager([o for _, o in objectives], allow_defaults=False)
        for i, objective in objectives:
            where = f"objectives[{i}].task"
            if not objective.task_is_file and objective.task not in manager.task_index:
                not_checked.append(f"{where} ({objective.task}): {_REGISTRY_NOTE}")
                continue
            try:
                found = objective_task_code(objective, manager)
                if runs_code is not None:
                    runs_code += [f"{where} ({objective.name}): {code.describe()}" for code in found]
                prepare_language_objective(objective, manager, recipe.split, recipe.allow_task_code)
            except UserError as error:
                problems.append((where, str(error).removeprefix(f"objective {objective.name}: ")))
    return problems
