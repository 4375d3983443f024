"""``hm3 validate``: a recipe's schema, then everything that can be checked without loading a model.

Checked here, cheaply (config files and safetensors headers only):

* the schema (``hm3.recipe``), including includes;
* every local model: folder, config, weights, shards, pickle policy, remote-code policy;
* the pool: same family, layer count, tensor names and shapes as the base (vocabulary rule allowed), and a
  ``device_memory`` bound that holds one candidate (what fits this machine's free memory is checked at start);
* every objective's local files: task YAMLs parse, vision data and heads exist;
* every lm-eval objective (:mod:`hm3.evaluate.offline_check`): local tasks are loaded as the evaluator loads
  them; registry names are checked offline against the installed lm-eval's task index (the name, the metric
  and filter, code execution), and a task whose data is not cached is noted as needing the hub.

Hub ids are checked when the network or the local cache has them; otherwise they are listed as not checked,
so a recipe for a 7B model validates on a machine that has never seen the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import repo_info, try_to_load_from_cache
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from hm3.checkpoint import Checkpoint, hub_is_offline, resolve_model_folder
from hm3.errors import ModelError, RecipeError, UserError
from hm3.evaluate.offline_check import language_objective_problems
from hm3.evaluate.task_facts import hub_data_in_cache
from hm3.evaluate.tower_input import vision_data_problem
from hm3.himole.checks import himole_problems
from hm3.placement import Placement, PoolSizes, candidate_length, check_frame, plan_memory
from hm3.pool import ModelPool
from hm3.recipe import ZEROSHOT_HEAD, Recipe, load_recipe


@dataclass
class ValidationReport:
    """What ``hm3 validate`` found on a recipe that has no problems.

    Attributes:
        recipe: The validated recipe.
        family: The pool's architecture family (None when not checked).
        num_layers: Its layer count.
        not_checked: What could not be checked here (hub ids not cached, Python-class lm-eval tasks).
        notes: Facts worth knowing (vocabulary sizes that differ, task data that needs the hub).
        runs_code: The ``!function`` tags of the task YAMLs, each naming the Python it runs (allowed by
            ``allow_task_code: true``; without it each is a problem).
    """

    recipe: Recipe
    family: str | None = None
    num_layers: int | None = None
    not_checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runs_code: list[str] = field(default_factory=list)


def validate_recipe_file(path: str | Path) -> ValidationReport:
    """Validate a recipe file completely.

    Raises:
        RecipeError: every problem found, each with the YAML path of the field at fault.
    """
    recipe = load_recipe(path)
    report = ValidationReport(recipe)
    problems: list[tuple[str, str]] = []
    problems += _check_models(recipe, report)
    problems += _check_hub_image_data(recipe, report)
    objective_problems = _check_objectives(recipe)
    problems += objective_problems
    problems += _check_vision_data(recipe)
    if recipe.himole is not None:
        problems += himole_problems(recipe.himole)
    if not objective_problems:  # files exist: load local lm-eval tasks as the evaluator will (a few seconds)
        problems += language_objective_problems(recipe, report.not_checked, report.runs_code, report.notes)
    if problems:
        raise RecipeError(problems, source=str(path))
    return report


def _check_models(recipe: Recipe, report: ValidationReport) -> list[tuple[str, str]]:
    refs = [("base_model", recipe.base_model, "base")] + [
        (f"models[{i}]", ref, ref.name) for i, ref in enumerate(recipe.models)
    ]
    where_of = {name: where for where, _, name in refs}
    checkpoints: dict[str, Checkpoint] = {}
    problems: list[tuple[str, str]] = []
    for where, ref, name in refs:
        if ref.is_hub and not _in_hub_cache(ref.path, ref.revision):
            problem = None if hub_is_offline() else _hub_problem(ref.path, ref.revision)
            if problem:
                problems.append((where, problem))
            else:
                report.not_checked.append(f"{where} ({ref.path}): hub id not in the local cache")
            continue
        try:
            checkpoints[name] = Checkpoint(resolve_model_folder(ref), name, recipe.allow_pickle)
        except ModelError as error:
            problems.append((where, error.detail))
        except UserError as error:
            problems.append((where, str(error)))
    if problems or "base" not in checkpoints:
        return problems
    if not recipe.models:  # a HiMoLE-only recipe: the base model alone, no pool
        config = checkpoints["base"].config
        report.family, report.num_layers = config.get("model_type"), config.get("num_hidden_layers")
        return []
    try:
        pool = ModelPool(
            checkpoints["base"],
            [checkpoints[n] for n in recipe.model_names if n in checkpoints],
            tokenizer_source=recipe.tokenizer_source if recipe.tokenizer_source in checkpoints else "base",
            trust_remote_code=recipe.trust_remote_code,
        )
    except ModelError as error:
        return [(where_of.get(error.model, "models"), error.detail)]
    except UserError as error:
        return [("models", str(error))]
    report.family, report.num_layers = pool.backbone.family, pool.num_layers
    try:
        check_frame(recipe, pool.num_layers)
    except UserError as error:
        return [("architecture_level", str(error).removeprefix("architecture_level."))]
    sizes = PoolSizes.of(pool, recipe.dtype)
    device = recipe.device if recipe.device != "auto" else "cuda or cpu"
    try:
        plan = plan_memory(
            sizes,
            candidate_length(recipe, pool.num_layers),
            Placement(device, recipe.dtype),
            recipe.device_memory,
            free=None,
        )
    except UserError as error:
        return [("device_memory", str(error).removeprefix("device_memory: "))]
    if plan.offload:
        report.notes.append(plan.line)
    for name, differences in pool.config_notes.items():
        report.notes.append(
            f"{where_of[name]}: its config differs from the base's ({'; '.join(differences[:3])}"
            f"{f' and {len(differences) - 3} more' if len(differences) > 3 else ''}): it is scored as itself, "
            "merges and paths are built with the base's config"
        )
    for name, rows in pool.vocab_mismatches.items():
        report.notes.append(
            f"{where_of[name]}: vocabulary has {rows} rows, the merged model keeps {pool.vocab_size} "
            "(rows beyond are dropped, missing rows come from tokenizer_source)"
        )
    base_folder = pool.base.folder.resolve()
    for model in pool.models:
        if model.folder.resolve() == base_folder:
            report.notes.append(
                f"{where_of[model.name]}: is the base model itself: its task vector is zero, so it adds nothing to a "
                "merge (it is scored as itself, as the base)"
            )
    return []


def _hub_problem(repo_id: str, revision: str | None = None, repo_type: str = "model") -> str | None:
    """Why a hub id (a model's, or a ``dataset``'s) is wrong, if the hub can be asked and says so; None when it
    exists or can't be reached."""
    try:
        repo_info(repo_id, revision=revision, repo_type=repo_type, timeout=10)
    except RevisionNotFoundError:
        return f"revision {revision!r} of {repo_id!r} not found on the hub"
    except RepositoryNotFoundError:
        kind = "hub data set" if repo_type == "dataset" else "hub id"
        return f"{kind} {repo_id!r} not found (or gated without a token)"
    except Exception:  # no network, a proxy, a time-out: the id can't be checked from here
        return None
    return None


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        return isinstance(found, str)
    except Exception:  # an unusual cache layout means "not cached" here
        return False


def _check_hub_image_data(recipe: Recipe, report: ValidationReport) -> list[tuple[str, str]]:
    """A vision objective's hub data set: in the local cache, or asked of the hub (a wrong id is a problem),
    or noted as needing the hub when neither can tell (offline: downloaded when scoring)."""
    problems: list[tuple[str, str]] = []
    for i, objective in enumerate(recipe.objectives):
        data = objective.dataset
        if data is None or data.format != "hf" or Path(data.path).exists() or hub_data_in_cache(data.path):
            continue
        where = f"objectives[{i}].dataset.path"
        problem = None if hub_is_offline() else _hub_problem(data.path, repo_type="dataset")
        if problem:
            problems.append((where, problem))
        else:
            report.notes.append(
                f"needs the hub: {where}: data set {data.path} is not in the local cache (downloaded when scoring)"
            )
    return problems


def _check_objectives(recipe: Recipe) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for i, objective in enumerate(recipe.objectives):
        where = f"objectives[{i}]"
        if objective.task_is_file:
            problem = _task_yaml_problem(Path(objective.task))  # type: ignore[arg-type]
            if problem:
                problems.append((f"{where}.task", problem))
        if objective.include_path and not Path(objective.include_path).is_dir():
            problems.append((f"{where}.include_path", f"folder not found: {objective.include_path}"))
        if objective.dataset is not None and objective.dataset.format != "hf":
            if not Path(objective.dataset.path).exists():
                problems.append((f"{where}.dataset.path", f"not found: {objective.dataset.path}"))
        if objective.head not in (None, ZEROSHOT_HEAD) and not Path(objective.head).is_file():
            problems.append((f"{where}.head", f"file not found: {objective.head}"))
        if objective.head == ZEROSHOT_HEAD and (problem := _zeroshot_base_problem(recipe)):
            problems.append((f"{where}.head", problem))
    return problems


def _check_vision_data(recipe: Recipe) -> list[tuple[str, str]]:
    """Vision data of another shape than the tower takes (an npz file's header against ``num_channels`` and
    ``image_size`` in the config of the folder that preprocesses images, a local one only): what loading the
    data refuses, told without reading it."""
    source = recipe.base_model if recipe.tokenizer_source == "base" else None
    source = source or next((m for m in recipe.models if m.name == recipe.tokenizer_source), None)
    if source is None or source.is_hub:
        return []
    folder = Path(source.path)
    problems = [
        (f"objectives[{i}].dataset", vision_data_problem(o, folder)) for i, o in enumerate(recipe.objectives)
    ]
    return [(where, problem) for where, problem in problems if problem]


def _zeroshot_base_problem(recipe: Recipe) -> str | None:
    """Why a local base model cannot give a zero-shot head (it has no text tower), or None (a hub id is checked
    when its files are read)."""
    base = recipe.base_model
    config_file = Path(base.path) / "config.json"
    if base.is_hub or not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None  # the model checks name an unreadable configuration
    if config.get("model_type") == "clip" and "text_config" in config:
        return None
    return (
        "zeroshot needs base_model to be a full CLIPModel (its text tower embeds the class names); "
        f"{base.path} is a {config.get('model_type')!r} model: give a head file"
    )


def _task_yaml_problem(path: Path) -> str | None:
    """Why a local lm-eval task YAML is unusable, or None. lm-eval's ``!function`` tags are accepted."""
    if path.is_dir():
        return f"{path} is a folder, not a task file"
    if not path.is_file():
        return f"task file not found: {path}"

    class _TaskLoader(yaml.SafeLoader):
        pass

    _TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskLoader)  # noqa: S506 - SafeLoader subclass
    except UnicodeDecodeError as error:
        return f"task file is not UTF-8 text (byte {error.start})"
    except yaml.YAMLError as error:
        return f"task file does not parse as YAML: {error}".replace("\n", " ")
    except RecursionError:
        return "task file is nested too deeply to be an lm-eval task"
    if not isinstance(data, dict) or not ("task" in data or "include" in data or "group" in data):
        return f"{path.name} is not an lm-eval task (no 'task' key)"
    return None
