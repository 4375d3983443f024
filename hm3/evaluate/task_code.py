"""Which lm-eval task YAMLs would run Python code, found before lm-eval loads them.

lm-eval's ``!function utils.process_docs`` tag imports ``utils.py`` next to the YAML (or an installed module)
the moment the task is loaded, so a task file handed to hm3 can run code in ``hm3 validate``. hm3 reads each
objective's task YAML first, with a safe YAML loader that only records the tags, following ``include:`` as
lm-eval does; a task whose files carry ``!function`` is loaded only when the recipe sets
``allow_task_code: true``, and ``hm3 validate`` names every such tag either way.

Trusted without a flag: tasks that ship inside the installed lm-eval package (its own registry). Groups and tags
(several tasks under one name) are refused before loading: an objective is one task.

Example::

    found = objective_task_code(objective, manager)     # [] for a plain task
    found[0].describe()                                  # "!function utils.process_docs (tasks/utils.py)"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lm_eval
import yaml

from hm3.errors import UserError

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

    from hm3.recipe import Objective

FUNCTION_TAG = "!function"


class FunctionReference(str):
    """A ``!function`` tag's value (``module.function``) in a task config read by :func:`task_config`."""


@dataclass(frozen=True)
class TaskCode:
    """One ``!function`` tag of a task YAML.

    Attributes:
        file: The YAML file holding the tag.
        reference: The tag's value, ``module.function``.
        module: The Python file lm-eval would run (next to the YAML), or the module name it would import.
    """

    file: Path
    reference: str
    module: str

    def describe(self) -> str:
        return f"{FUNCTION_TAG} {self.reference} in {self.file.name} runs {self.module}"


def task_code(yaml_file: Path) -> list[TaskCode]:
    """Every ``!function`` tag in a task YAML and the files it includes (recursively).

    Raises:
        UserError: a file that is missing, not UTF-8, not YAML, or an include cycle (the message names the
            file, not the objective).
    """
    return _scan(Path(yaml_file).expanduser().resolve(), ())[1]


def task_config(yaml_file: Path) -> dict[str, Any]:
    """A task YAML's settings with its includes merged, as lm-eval merges them, and no code run.

    ``!function`` values come back as :class:`FunctionReference` strings.

    Raises:
        UserError: as :func:`task_code`.
    """
    return _scan(Path(yaml_file).expanduser().resolve(), ())[0]


def objective_task_code(objective: Objective, manager: TaskManager) -> list[TaskCode]:
    """The ``!function`` tags that loading ``objective``'s task would run ([] for lm-eval's own tasks).

    Raises:
        UserError: the task is a group or a tag (several tasks), or one of its files is unreadable.
    """
    spec = str(objective.task)
    if objective.task_is_file:
        try:
            config, found = _scan(Path(spec).expanduser().resolve(), ())
        except UserError as error:
            raise UserError(f"objective {objective.name}: task {spec} does not load: {error}") from None
        if "group" in config or not isinstance(config.get("task"), str):
            raise UserError(
                f"objective {objective.name}: {spec} is a group of tasks; name one task per objective"
            )
        return found
    entry = manager.task_index.get(spec)
    if entry is None:
        return []
    kind = entry.kind.name.lower()
    if kind not in ("task", "py_task"):
        raise UserError(
            f"objective {objective.name}: {spec} is a {kind} of several tasks; name one task per objective"
        )
    if entry.yaml_path is None or _inside_lm_eval(Path(entry.yaml_path)):
        return []
    try:
        return task_code(Path(entry.yaml_path))
    except UserError as error:
        raise UserError(f"objective {objective.name}: task {spec} does not load: {error}") from None


def check_task_code(objective: Objective, manager: TaskManager, allow: bool) -> list[TaskCode]:
    """:func:`objective_task_code`, refused (UserError) when it finds code and ``allow`` is false."""
    found = objective_task_code(objective, manager)
    if found and not allow:
        raise UserError(
            f"objective {objective.name}: task {objective.task} runs Python code ({found[0].describe()}"
            + (f" and {len(found) - 1} more" if len(found) > 1 else "")
            + "); read that code, then set 'allow_task_code: true' in the recipe to allow it"
        )
    return found


def _scan(file: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], list[TaskCode]]:
    """The YAML's mapping with includes merged (as lm-eval merges them) and the tags found on the way."""
    if file in chain:
        raise UserError(f"{chain[-1].name}: include cycle through {file}")
    if not file.is_file():
        where = f" (included by {chain[-1].name})" if chain else ""
        raise UserError(f"file not found: {file}{where}")
    found: list[TaskCode] = []

    class _TagRecorder(yaml.SafeLoader):
        pass

    def record(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> str:
        value = str(loader.construct_scalar(node)) if isinstance(node, yaml.ScalarNode) else ""
        if f"!{suffix}" == FUNCTION_TAG:
            found.append(TaskCode(file, value, _module_of(file.parent, value)))
            return FunctionReference(value)
        return value

    _TagRecorder.add_multi_constructor("!", record)
    try:
        config = yaml.load(file.read_text(encoding="utf-8"), Loader=_TagRecorder)  # noqa: S506 - SafeLoader
    except UnicodeDecodeError as error:
        raise UserError(f"{file.name} is not UTF-8 text (byte {error.start})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(
            f"{file.name} is not valid YAML{at}: {getattr(error, 'problem', None) or error}"
        ) from None
    except RecursionError:
        raise UserError(f"{file.name} is nested too deeply to be an lm-eval task") from None
    if not isinstance(config, dict):
        raise UserError(f"{file.name} is a YAML {type(config).__name__}, not a mapping of task settings")
    includes = config.pop("include", None)
    merged: dict[str, Any] = {}
    for include in [] if includes is None else includes if isinstance(includes, list) else [includes]:
        target = Path(str(include))
        target = (target if target.is_absolute() else file.parent / target).resolve()
        included, more = _scan(target, (*chain, file))
        included.pop("task_list", None)
        merged.update(included)
        found += more
    merged.update(config)
    return merged, found


def _module_of(folder: Path, reference: str) -> str:
    """What lm-eval runs for ``!function reference``: a file next to the YAML if there is one, else a module."""
    module, _, _ = reference.rpartition(".")
    local = folder / f"{module.replace('.', '/')}.py"
    return str(local.resolve()) if module and local.is_file() else f"module {module or reference!r}"


def _inside_lm_eval(path: Path) -> bool:
    package = Path(lm_eval.__file__).resolve().parent
    return path.resolve().is_relative_to(package)
