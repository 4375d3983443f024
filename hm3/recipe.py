"""The recipe: everything a run needs, as frozen, validated data.

A recipe is a YAML file. Relative paths in it resolve against the recipe file's folder, and ``include:``
pulls in other recipes (this file's keys win; mappings merge, lists are replaced)::

    include: base.yaml                  # optional; a path or a list of paths
    base_model: ../zoo/lm-llama-small/base
    models:                             # the K fine-tuned models (local folders or hub ids)
      - {name: addition, path: ../zoo/lm-llama-small/addition}
      - {name: reversal, path: ../zoo/lm-llama-small/reversal}
    objectives:                         # one per task; an lm-eval task name or a local task YAML
      - {name: addition, task: ../zoo/lm-llama-small/tasks/toy_addition.yaml, metric: exact_match}
      - {name: reversal, task: ../zoo/lm-llama-small/tasks/toy_reversal.yaml, metric: exact_match}
    split: {search_fraction: 0.7, seed: 0}
    parameter_level: {method: dare_ties, density: 0.5}
    architecture_level: {enabled: true, alignment: none, length_penalty: 0.01}
    agent: {gamma: 0.99, iterations: 1000}
    preferences: {count: 10, scalarization: weighted_sum}

Loading (:func:`load_recipe`) reports every problem at once, one line each, naming the YAML path of the field.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from hm3.errors import RecipeError
from hm3.himole.config import HiMoLEConfig, himole_cross_checks
from hm3.yaml_loading import UniqueKeyLoader

MERGE_METHODS = ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "della")
"""Parameter-level methods a recipe may name (the merge registry holds one row for each)."""

MergeMethodName = Literal[
    "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "della"
]

ZEROSHOT_HEAD = "zeroshot"
"""``head`` value asking for CLIP's zero-shot head instead of a head file."""
DEFAULT_TEMPLATES = ("a photo of a {}.",)
"""A zero-shot head's prompt templates when the recipe gives none (CLIP's, as in task arithmetic)."""

SEED_LIMIT = 2**31
"""Seeds are in [0, 2^31): NumPy's legacy seeding (stable-baselines3) takes < 2^32, and the search seeds
preference i's agent with ``seed + i``."""
MAX_PREFERENCES = 10_000
"""Most Dirichlet samples ``preferences.count`` may ask for (each one is a full upper + lower level search)."""
MAX_PATH_LENGTH = 1024
"""Largest ``architecture_level.max_path_length`` (T_max): the agent's observation holds T_max steps."""
NAME_PATTERN = r"^[\w.\-]+$"
GRANULARITY_PATTERN = r"^(model|block:([2-9]|1[0-6]))$"
SHARD_SIZE_PATTERN = r"^\d+(\.\d+)?\s*[KMGT]?B$"
PATTERN_MEANINGS = {
    NAME_PATTERN: "must be letters, digits, '_', '.' or '-' (it names files and table columns)",
    GRANULARITY_PATTERN: "must be 'model' or 'block:N' with N blocks of layers, 2 to 16",
    SHARD_SIZE_PATTERN: "must be a size such as '5GB', '500MB' or '2.5GB'",
}
"""What each pattern a recipe string must match means, for the one-line error (not the regular expression)."""
MAX_ITERATIONS = 100_000
"""Largest ``agent.iterations`` (the paper uses 1000 per preference)."""
DEFAULT_LEARNING_RATES = {"path": 3e-4, "edit": 3e-3}
"""``agent.learning_rate`` when the recipe leaves it out, by ``agent.actions``: the path agent keeps SB3's PPO
default; the edit agent, whose one-decision episodes give it ~8 PPO updates in a search of a few hundred paths,
learns within a search only at a larger rate (``benchmarks/results/agent_learning.md``)."""
MAX_SEARCH_VALUES = 100
"""Most values ``density_search`` or ``scale_search`` may list (every density × scale is merged and scored)."""

Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]


def is_seed(value: int) -> bool:
    """Whether a seed given on the command line is one a recipe's ``seed`` could hold (:data:`SEED_LIMIT`)."""
    return 0 <= value < SEED_LIMIT


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_TASK_YAML_SUFFIXES = (".yaml", ".yml")


class _Section(BaseModel):
    """Base of every recipe section: frozen, unknown keys refused, every number finite (no NaN or infinity).

    ``_omit_when_unset`` names optional fields added after runs were recorded: left unset (None), they are not
    written (a run's ``recipe.yaml`` and fingerprint), so every candidate's cache key stays what it was and runs
    started before the field existed resume as they were.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    _omit_when_unset: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_unset_later_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in self._omit_when_unset:
            if getattr(self, name) is None:
                data.pop(name, None)
        return data


def _resolve_path(value: str, info: ValidationInfo) -> str:
    """An absolute path for a relative one, against the recipe's folder (from the validation context)."""
    base_dir = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return str(path.resolve()) if (path.is_absolute() or base_dir is not None) else value


def is_hub_id(reference: str) -> bool:
    """Whether a model reference reads as a Hugging Face hub id (``org/name``) rather than a local path."""
    return bool(_HUB_ID.match(reference)) and not reference.startswith((".", "/", "~"))


class ModelRef(_Section):
    """A model: a local folder or a hub id.

    Attributes:
        path: Local folder (relative to the recipe) or hub id such as ``meta-llama/Llama-2-7b-chat-hf``.
        name: Short name used in tables and plots; defaults to the folder or repository name.
        revision: Hub revision (branch, tag or commit); only for hub ids.
    """

    path: str = Field(min_length=1)
    name: str | None = Field(default=None, min_length=1, pattern=NAME_PATTERN)
    revision: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        if is_hub_id(value) and not _exists_locally(value, info):
            return value
        return _resolve_path(value, info)

    @model_validator(mode="after")
    def _default_name(self) -> ModelRef:
        if self.name is None:
            object.__setattr__(self, "name", re.sub(r"[^\w.\-]", "_", Path(self.path).name) or "model")
        return self

    @property
    def is_hub(self) -> bool:
        """True when :attr:`path` is a hub id rather than a local folder."""
        return is_hub_id(self.path)


def _exists_locally(value: str, info: ValidationInfo) -> bool:
    base_dir = (info.context or {}).get("base_dir")
    return (Path(base_dir) / value).exists() if base_dir else Path(value).exists()


class ImageDataset(_Section):
    """Evaluation images for a vision objective.

    Attributes:
        format: ``npz`` (arrays ``pixel_values`` [N, C, H, W] and ``labels`` [N]), ``image_folder``
            (one sub-folder per class), or ``hf`` (a Hugging Face dataset; needs a network or a local cache).
        path: File or folder for ``npz`` / ``image_folder``; dataset name for ``hf``.
        split: Dataset split for ``hf``.
        image_key: Column holding the image for ``hf``.
        label_key: Column holding the label for ``hf``.
        config: The configuration of an ``hf`` data set that has several (``datasets.load_dataset``'s ``name``:
            SVHN's ``cropped_digits``). Unset: the data set's only one.
    """

    format: Literal["npz", "image_folder", "hf"]
    path: str = Field(min_length=1)
    split: str = "test"
    image_key: str = "image"
    label_key: str = "label"
    config: str | None = Field(default=None, min_length=1)
    _omit_when_unset = ("config",)

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        format_ = info.data.get("format")
        return value if format_ == "hf" else _resolve_path(value, info)

    @model_validator(mode="after")
    def _hub_settings_for_hub_data(self) -> ImageDataset:
        defaults = {"split": "test", "image_key": "image", "label_key": "label", "config": None}
        given = [key for key, default in defaults.items() if getattr(self, key) != default]
        if self.format != "hf" and given:
            raise ValueError(
                f"{', '.join(given)}: {'applies' if len(given) == 1 else 'apply'} to format: hf only (a hub data "
                f"set's split and columns), not to format: {self.format}"
            )
        return self


class Objective(_Section):
    """One task to be good at: an lm-eval task, or a vision classification data set.

    Attributes:
        name: Short name (tables, plots, ``--preference`` order).
        task: lm-eval task name from its registry (``gsm8k``) or a path to a local task YAML.
        dataset: Vision only: the images and labels to classify.
        head: Vision only: the task's classification head — a ``head.safetensors`` file (``weight`` [C, hidden],
            ``bias`` [C], applied to the pooled output), or ``zeroshot``: CLIP's zero-shot head, built from the
            base ``CLIPModel``'s text tower, the data set's class names and ``templates`` (the task-arithmetic
            setting).
        templates: Prompt templates of a ``zeroshot`` head, ``{}`` standing for the class name.
        class_names: A ``zeroshot`` head's class names, one per label id in label order, in place of the data
            set's own (the names a fine-tuning benchmark built its heads from, e.g. FusionBench's "annual crop
            land" for EuroSAT's ``AnnualCrop``). Unset: the data's names; not written to a run's recipe then, so
            runs started before the field existed keep their fingerprint.
        metric: Key of the score in lm-eval's results (``acc``, ``exact_match``, ``chrf``, optionally with its
            filter: ``exact_match,flexible-extract``); ``accuracy`` for vision. Empty: the task's first metric.
        higher_is_better: Direction of the metric. Unset: the task's own (lm-eval's ``higher_is_better`` for the
            metric, e.g. lower for ``perplexity``; higher for vision accuracy), resolved when the task loads.
        weight: Relative importance of the objective: the centre preference (``preferences.include_centre``) is
            λ ∝ the objectives' weights (all 1 by default: the uniform λ).
        num_fewshot: Few-shot examples (lm-eval).
        limit: Score at most this many documents of the split (lm-eval ``limit``).
        batch_size: Evaluation batch size.
        generation_kwargs: Extra generation arguments for generative tasks.
        apply_chat_template: Wrap prompts in the model's chat template.
        include_path: Extra folder of task YAMLs for lm-eval's TaskManager.
        model: Name of the fine-tuned model whose skill this objective measures. A preference λ over the
            objectives becomes merge weights over the models: each model's weight is the sum of λ over its
            objectives. May be left out when there are as many objectives as models (objective i ↔ model i).
    """

    name: str = Field(min_length=1, pattern=NAME_PATTERN)
    task: str | None = Field(default=None, min_length=1)
    dataset: ImageDataset | None = None
    head: str | None = None
    templates: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES), min_length=1)
    class_names: list[str] | None = Field(default=None, min_length=1)
    _omit_when_unset = ("class_names",)
    metric: str | None = None
    higher_is_better: bool | None = None
    weight: float = Field(default=1.0, gt=0)
    num_fewshot: int | None = Field(default=None, ge=0)
    limit: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=16, gt=0)
    generation_kwargs: dict[str, Any] = Field(default_factory=dict)
    apply_chat_template: bool = False
    include_path: str | None = None
    model: str | None = Field(default=None, min_length=1)

    @field_validator("task")
    @classmethod
    def _resolve_task(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value.endswith(_TASK_YAML_SUFFIXES):
            return _resolve_path(value, info)
        return value

    @field_validator("generation_kwargs")
    @classmethod
    def _check_generation(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = [problem for key, item in value.items() if (problem := _generation_problem(key, item))]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("head", "include_path")
    @classmethod
    def _resolve_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return value if value in (None, ZEROSHOT_HEAD) else _resolve_path(value, info)

    @model_validator(mode="after")
    def _one_kind(self) -> Objective:
        if (self.task is None) == (self.dataset is None):
            raise ValueError("give exactly one of 'task' (lm-eval) or 'dataset' (vision)")
        if self.dataset is not None and self.head is None:
            raise ValueError("a vision objective needs 'head' (the task's classification head)")
        if self.dataset is not None and self.metric not in (None, "accuracy"):
            raise ValueError("a vision objective's metric is 'accuracy'")
        if self.dataset is not None:
            language = [key for key in ("num_fewshot", "include_path") if getattr(self, key) is not None]
            language += [key for key in ("generation_kwargs", "apply_chat_template") if getattr(self, key)]
            if language:
                one = len(language) == 1
                raise ValueError(
                    f"{', '.join(language)}: {'an lm-eval setting' if one else 'lm-eval settings'}, and this "
                    f"objective classifies images; leave {'it' if one else 'them'} out"
                )
        elif self.head is not None:
            raise ValueError(
                "head: a vision objective's classification head, and this objective is an lm-eval task"
            )
        if self.head != ZEROSHOT_HEAD and self.templates != list(DEFAULT_TEMPLATES):
            raise ValueError(
                "templates: they phrase the class names of a 'head: zeroshot' only, and this objective has "
                + ("a head file" if self.head else "no zero-shot head")
                + "; leave them out"
            )
        if self.head != ZEROSHOT_HEAD and self.class_names is not None:
            raise ValueError(
                "class_names: they name the classes of a 'head: zeroshot' only, and this objective has "
                + ("a head file" if self.head else "no zero-shot head")
                + "; leave them out"
            )
        return self

    @field_validator("class_names")
    @classmethod
    def _distinct_class_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        blank = [i for i, name in enumerate(value) if not name.strip()]
        if blank:
            raise ValueError(
                f"class name {blank[0]} is empty: every class needs a name the text tower can embed"
            )
        seen: dict[str, int] = {}
        for i, name in enumerate(value):
            if name in seen:
                raise ValueError(
                    f"class names {seen[name]} and {i} are both {name!r}: two classes with one name get one "
                    "embedding, and the head could not tell them apart"
                )
            seen[name] = i
        return value

    @field_validator("templates")
    @classmethod
    def _one_class_name_each(cls, value: list[str]) -> list[str]:
        for i, template in enumerate(value):
            try:
                filled = template.format("\0")
            except (IndexError, KeyError, ValueError):
                filled = None
            if filled is None or filled.count("\0") != 1:
                raise ValueError(
                    f"template {i} ({template!r}) must hold {{}} once, where the class name goes (other braces "
                    "doubled)"
                )
        return value

    @property
    def is_vision(self) -> bool:
        """True for a classification objective scored on images."""
        return self.dataset is not None

    @property
    def task_is_file(self) -> bool:
        """True when :attr:`task` names a local task YAML rather than a registry task."""
        return self.task is not None and self.task.endswith(_TASK_YAML_SUFFIXES)


GENERATION_LENGTH_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
"""The names lm-eval reads as the most tokens to generate (the first given, in this order)."""


TYPED_GENERATION_KEYS = frozenset(
    {"until", "do_sample", "temperature", "top_p", "top_k", *GENERATION_LENGTH_KEYS}
)
"""``generation_kwargs`` keys lm-eval reads or passes on to ``generate``, typed here (:func:`_generation_problem`)."""


def _generation_problem(key: str, value: Any) -> str | None:
    """What is wrong with one ``generation_kwargs`` entry of :data:`TYPED_GENERATION_KEYS`, if anything (other keys
    are checked against transformers' ``GenerationConfig`` when the task loads:
    :func:`hm3.evaluate.task_facts.check_generation_settings`)."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if key == "until":
        strings = value if isinstance(value, list) else [value]  # [] stops at the end-of-text token alone
        if not all(isinstance(item, str) and item for item in strings):
            return f"until must be a stop string or a list of them, not {value!r}"
    elif key in GENERATION_LENGTH_KEYS or key == "top_k":
        least = 0 if key == "top_k" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            return f"{key} must be a whole number of tokens, at least {least}, not {value!r}"
    elif key == "do_sample" and not isinstance(value, bool):
        return f"do_sample must be true or false, not {value!r}"
    elif key == "temperature" and not (is_number and math.isfinite(value) and value >= 0):
        return f"temperature must be a number of at least 0, not {value!r}"
    elif key == "top_p" and not (is_number and 0 < value <= 1):
        return f"top_p must be a number in (0, 1], not {value!r}"
    return None


class SplitConfig(_Section):
    """How each objective's evaluation documents divide into the search and held-out parts.

    Attributes:
        search_fraction: The share of each objective's documents the search scores on.
        seed: Seeds the split (documents are ordered by a hash of the seed and their content).
        screen_fraction: The share of the search split a path is scored on first
            (``architecture_level.screen_paths``): a random subset fixed by content and seed, like the split.
    """

    search_fraction: float = Field(default=0.7, gt=0, lt=1)
    seed: Seed = 0
    screen_fraction: float = Field(default=0.25, gt=0, lt=1)


class ParameterLevel(_Section):
    """The upper level: the parameter-space merge each preference's path search starts from.

    Attributes:
        weights: ``optimised`` (the default; the paper's formulation: a multi-objective optimiser searches per-model
            coefficients in [0, ``w_max``] — and the density, for methods that sparsify — once for the run, and
            each preference starts from the merge its scalarization ranks best; :mod:`hm3.search.upper_level`)
            or ``preference`` (the HM3 paper's shortcut, its exact ablation: a preference's merge weights are λ,
            on the simplex; ``density_search`` / ``scale_search`` apply to it).
        w_max: Largest per-model coefficient the optimised upper level tries, in (0, 10].
        budget: Merges the optimised upper level scores (None: 8 per searched dimension), at most 100,000.
        optimiser: The optimised upper level's optimiser: ``gp`` (Optuna's Gaussian-process sampler, expected
            hypervolume improvement) or ``nsga2`` (pymoo's NSGA-II), on the normalised objectives.
        batch: Merges the ``gp`` optimiser proposes together, in [1, 64] (Optuna's q-batch acquisition), scored
            at once on a distributed run's Ray workers — set it to the number of workers there. The merges
            proposed depend on it (never on the workers), so a run gives the same front in this process and on
            Ray. NSGA-II scores each generation's merges together anyway.
        granularity: What the optimised upper level gives a coefficient: ``model`` (one per model) or
            ``block:N`` (N per model, 2 ≤ N ≤ 16, at N evenly spaced depths; the layers between take the linear
            interpolation — mergekit's gradient, so the merge exports to mergekit as it is).
        method: Merge method (see ``hm3.merge``).
        density: Fraction of each task vector kept (TIES trim; DARE random keep). Paper: not given.
        drop_rate: DARE drop rate p; the same knob as ``1 - density`` (give one or the other, or equal ones).
        normalize: Divide by the sum of weights (None: the method's mergekit default).
        density_search: Optional densities tried per preference, each in (0, 1], at most 100 (the upper level
            picks the best).
        scale_search: Optional scales of the merged task vector tried per preference, each in (0, 10], at most
            100 (task arithmetic's scaling coefficient, mergekit's ``lambda``; the upper level picks the best).
            With the preference as the weights the task vectors are averaged (scale 1); a larger scale sums more
            of each.
        seed: Seed of DARE's random masks, in [0, 2^31) (None: the recipe's ``seed``).

    Every number here must be finite.
    """

    weights: Literal["preference", "optimised"] = "optimised"
    w_max: float = Field(default=1.0, gt=0, le=10)
    budget: int | None = Field(default=None, gt=0, le=100_000)
    optimiser: Literal["gp", "nsga2"] = "gp"
    batch: int = Field(default=1, ge=1, le=64)
    granularity: Annotated[str, Field(pattern=GRANULARITY_PATTERN)] = "model"
    method: MergeMethodName = "dare_ties"
    density: float | None = Field(default=None, gt=0, le=1)
    drop_rate: float | None = Field(default=None, ge=0, lt=1)
    normalize: bool | None = None
    density_search: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        default=None, min_length=1, max_length=MAX_SEARCH_VALUES
    )
    scale_search: list[Annotated[float, Field(gt=0, le=10)]] | None = Field(
        default=None, min_length=1, max_length=MAX_SEARCH_VALUES
    )
    seed: Seed | None = None

    @model_validator(mode="after")
    def _density_or_drop_rate(self) -> ParameterLevel:
        if self.density is not None and self.drop_rate is not None:
            if abs(self.density - (1 - self.drop_rate)) > 1e-9:
                raise ValueError(
                    f"density {self.density} and drop_rate {self.drop_rate} disagree (density = 1 - drop_rate)"
                )
        if self.drop_rate is not None and not self.method.startswith(("dare", "della")):
            raise ValueError(f"drop_rate applies to DARE methods only, not {self.method!r}; use density")
        if self.weights == "preference" and self.granularity != "model":
            raise ValueError(
                f"granularity {self.granularity!r} applies to weights: optimised (with weights: preference the "
                "merge weights are λ, one per model)"
            )
        if self.batch != 1 and (self.weights != "optimised" or self.optimiser != "gp"):
            raise ValueError(
                f"batch {self.batch} applies to the optimised upper level's gp optimiser (weights: optimised, "
                "optimiser: gp); NSGA-II scores each generation's merges together without it"
            )
        if self.weights == "optimised" and (self.density_search or self.scale_search):
            raise ValueError(
                "density_search and scale_search apply to weights: preference (set it); the optimised upper "
                "level, the default, searches coefficients up to w_max (and the density) itself"
            )
        return self

    @property
    def optimised(self) -> bool:
        return self.weights == "optimised"

    @property
    def blocks(self) -> int:
        """Coefficients per model of the optimised upper level (``granularity``)."""
        return 1 if self.granularity == "model" else int(self.granularity.split(":")[1])

    @property
    def merges_per_preference(self) -> int:
        """Merges the upper level scores per preference: every density × every scale it searches (none with
        ``weights: optimised``, whose merges are searched once for the run)."""
        if self.optimised:
            return 0
        return len(self.density_search or [None]) * len(self.scale_search or [None])

    @property
    def effective_density(self) -> float:
        """The density the merge uses: ``density``, else ``1 - drop_rate``, else 0.5."""
        if self.density is not None:
            return self.density
        return 1 - self.drop_rate if self.drop_rate is not None else 0.5


class ArchitectureLevel(_Section):
    """The lower level: the inference-path search over layers of the K fine-tuned models and the merged one.

    Attributes:
        enabled: Switch the level off to search parameters only (the paper's ablation).
        max_path_length: T_max, at most 1024; None means 1.5 × the number of layers.
        alignment: ``none`` (pure layer routing) or ``stats`` (per-channel mean/std matching between layers of
            different origin, fitted on a calibration sample of the search split).
        length_penalty: β1 in R = Σ λ_k f_k − β1·T (per layer, on the scale of the scores).
        calibration_samples: Documents used to fit ``stats`` alignment.
        screen_paths: Successive halving for paths: a new path is scored first on ``split.screen_fraction`` of
            the search split, and on the whole split only if its reward there is at least the best path's on the
            same documents; a screen costs its share of a full scoring (budgets count documents). False scores
            every path on the whole split.
        fixed_first: The first so many steps of every path are the merged model's own first layers: the edit
            agent leaves them alone and edits the slots after them (for pools whose first and last layers are
            known not to be exchangeable; on the deep toy zoo it did not pay: ``agent_learning.md``). Needs
            ``agent.actions: edit``.
        fixed_last: The same for the last steps (the merged model's last layers).
    """

    enabled: bool = True
    max_path_length: int | None = Field(default=None, gt=0, le=MAX_PATH_LENGTH)
    alignment: Literal["none", "stats"] = "none"
    length_penalty: float = Field(default=0.001, ge=0)
    calibration_samples: int = Field(default=16, gt=0)
    screen_paths: bool = True
    fixed_first: int = Field(default=0, ge=0)
    fixed_last: int = Field(default=0, ge=0)

    @property
    def frame(self) -> tuple[int, int]:
        """``(fixed_first, fixed_last)``: the steps at each end of a path that stay the merged model's."""
        return self.fixed_first, self.fixed_last


class AgentConfig(_Section):
    """The PPO actor-critic with Wolpertinger discretization that searches inference paths.

    Attributes:
        mode: ``per_preference`` (the paper's Algorithm 1: a fresh agent per λ) or ``conditioned`` (one policy
            with λ in its observation, trained over sampled λ, each over its own merge, reusable for a new λ by a
            rollout).
        actions: ``path`` (the paper's agent: a path built one layer at a time, Wolpertinger over the layer
            actions) or ``edit`` (one edit of the best path so far per episode — replace a layer by another
            model's, delete or repeat one — masked to the valid edits, paid the signed change of reward:
            :mod:`hm3.routing.edits`).
        gamma: Discount γ (paper: 0.99; an edit episode is one decision, where it plays no role).
        iterations: Episodes per preference, i.e. candidate paths scored (paper: Max_iter = 1000; at most
            100,000).
        learning_rate: Adam learning rate of actor and critic; None (default): by ``actions``, 3e-4 for the path
            agent, 3e-3 for the edit agent (:data:`DEFAULT_LEARNING_RATES`; :attr:`adam_learning_rate`); 0: the
            untrained policy alone, its prior (an ablation: what learning adds, ``benchmarks/agent_learning.py``).
        n_steps: Environment steps per PPO rollout; None (default) scales it to the budget — or to the patience
            window where that is shorter —, so that even a search of a few paths, or one that stops after its
            window, makes several PPO updates (:func:`hm3.routing.agent.scaled_to_budget`).
        batch_size: PPO minibatch size; None (default) is the whole rollout (one gradient step per epoch).
        n_epochs: PPO epochs per rollout.
        gae_lambda: GAE λ.
        clip_range: PPO clip ε.
        ent_coef: Entropy coefficient c2.
        vf_coef: Value-loss coefficient c1.
        hidden_size: Width of the GRU trajectory encoder and the heads.
        wolpertinger_neighbours: M', the discrete actions nearest the proto-action that the critic ranks
            (default 1: the nearest, unranked — at the budgets of a search, a few hundred episodes, the critic's
            ranking of unvisited successors is noise and turned every path into many edits:
            ``benchmarks/results/agent_learning.md``).
        wolpertinger_epsilon: Probability of a uniform pick among the M' neighbours instead of the critic's
            (default 0: the actor's Gaussian explores, about one edit per path; each ε pick is an edit more).
        patience: A preference's path search stops once its last ⌈patience × iterations⌉ new paths (at least
            3) did not improve its best reward — the merge it starts from included —, in (0, 1]; with
            ``parameter_level.weights: optimised`` only by a path the upper level's first round does not
            dominate, the window at most that round's size (:func:`hm3.search.allocation.stall_window`), and
            what it did not spend goes back to the upper level. None:
            every preference spends all its iterations (the paper's Algorithm 1).
        unpaid_patience: The window, in paths, of a preference's path search while the path level has not paid:
            neither in the run's first preference (the probe, searched with the full window) nor yet in this
            preference's own search (paths that pay give it the full window: :class:`hm3.search.allocation.
            FrontGain`). At least 1 (the floor
            of exploration); None: the full window everywhere. Only with ``patience`` and ``mode:
            per_preference``.
    """

    mode: Literal["per_preference", "conditioned"] = "per_preference"
    actions: Literal["path", "edit"] = "path"
    gamma: float = 0.99
    iterations: int = Field(default=1000, gt=0, le=MAX_ITERATIONS)
    learning_rate: float | None = Field(default=None, ge=0)
    n_steps: int | None = Field(default=None, gt=1)
    batch_size: int | None = Field(default=None, gt=1)
    n_epochs: int = Field(default=4, gt=0)
    gae_lambda: float = Field(default=0.95, ge=0, le=1)
    clip_range: float = Field(default=0.2, gt=0)
    ent_coef: float = Field(default=0.01, ge=0)
    vf_coef: float = Field(default=0.5, ge=0)
    hidden_size: int = Field(default=64, gt=0)
    wolpertinger_neighbours: int = Field(default=1, gt=0)
    wolpertinger_epsilon: float = Field(default=0.0, ge=0, le=1)
    patience: float | None = Field(default=0.25, gt=0, le=1)
    unpaid_patience: int | None = Field(default=1, gt=0)

    @field_validator("gamma")
    @classmethod
    def _gamma_range(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError("must be in (0, 1]")
        return value

    @property
    def adam_learning_rate(self) -> float:
        """The learning rate the agent trains with: the recipe's, or the default of its kind of actions."""
        return DEFAULT_LEARNING_RATES[self.actions] if self.learning_rate is None else self.learning_rate


class PreferenceConfig(_Section):
    """Which preference vectors λ over the objectives the search covers.

    Attributes:
        count: N samples from Dirichlet(1, ..., 1), at most 10,000; the centre (``include_centre``) and the K
            simplex corners (``include_corners``) are added. There must be at least one preference in all.
        scalarization: ``weighted_sum`` Σ λ_k f_k (the paper's RL reward) or ``tchebycheff``
            max_k λ_k |f_k − z*_k| (the paper's main text), z* the best fine-tuned score per task.
        include_corners: Add the K one-hot preferences (default: no — the fine-tuned models, scored for every
            run, are those corners' references; a corner searched is a budget spent re-finding a specialist).
        include_centre: Add the centre preference: the objectives' ``weight``s normalised (uniform by default).
        seed: Seed of the Dirichlet samples, in [0, 2^31) (None: the recipe's ``seed``).
    """

    count: int = Field(default=10, ge=0, le=MAX_PREFERENCES)
    scalarization: Literal["weighted_sum", "tchebycheff"] = "weighted_sum"
    include_corners: bool = False
    include_centre: bool = True
    seed: Seed | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> PreferenceConfig:
        if self.count == 0 and not self.include_corners and not self.include_centre:
            raise ValueError(
                "no preference to search: count is 0 and include_corners and include_centre are false"
            )
        return self


class OutputConfig(_Section):
    """Where runs go.

    Attributes:
        dir: Run directory (relative to the recipe file); None: ``runs/<recipe name>`` in the working directory.
        shard_size: Largest safetensors shard written on export, e.g. ``5GB``.
    """

    dir: str | None = None
    shard_size: str = Field(default="5GB", pattern=SHARD_SIZE_PATTERN)

    @field_validator("dir")
    @classmethod
    def _resolve(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        resolved = _resolve_path(value, info)
        if Path(resolved).exists() and not Path(resolved).is_dir():
            raise ValueError(f"{resolved} is a file; the run directory must be a folder")
        return resolved


class DistributedConfig(_Section):
    """Where the preference subproblems run (``hm3 merge --ray-address/--workers`` override it).

    Attributes:
        ray_address: None: in this process, one preference after the other. ``local``: a Ray cluster started
            on this machine; ``auto``: the running cluster Ray finds; ``HOST:PORT``: that cluster.
        workers: Ray actors, each holding its own copy of the pool (None: one per CPU of the cluster).
    """

    ray_address: str | None = Field(default=None, min_length=1)
    workers: int | None = Field(default=None, gt=0)


class Recipe(_Section):
    """A complete, validated recipe. See the module docstring for an annotated example.

    The safety switches (all off by default): ``allow_pickle`` accepts pickle checkpoints (``pytorch_model.bin``)
    and pickled agent policies of older runs; ``trust_remote_code`` accepts models whose config asks for custom
    code; ``allow_task_code`` accepts lm-eval task YAMLs whose ``!function`` tags run Python files;
    ``allow_code_execution`` accepts lm-eval tasks marked ``unsafe_code`` (humaneval, mbpp), which execute the
    programs the models write, unsandboxed, on this machine: hm3 passes lm-eval ``confirm_run_unsafe_code=True``
    and sets ``HF_ALLOW_CODE_EVAL=1`` for the ``code_eval`` metric. Without it such a task is refused by
    ``hm3 validate`` and ``hm3 merge`` before any model loads::

        objectives:
          - {name: humaneval, task: humaneval, metric: "pass@1,create_test"}
          - {name: mbpp, task: mbpp, metric: pass_at_1}
        allow_code_execution: true      # run the models' programs (use a container or a throwaway machine)

    ``device_memory`` (``24GiB``, ``40GB``, bytes) bounds what the search keeps on the device: the models stay in
    host memory (memory-mapped where stored in the run's ``dtype``) and candidates' layers move to the device as
    their paths need them, through a cache of recently used layers (:mod:`hm3.routing.residency`); scores are
    the same as with every model resident. Unset: every model resident when the K + 2 models fit the free
    memory, else offloaded with what is free (``hm3 merge`` says which)::

        device: cuda
        dtype: bfloat16
        device_memory: 20GiB            # LLaMA-2-7B x 3 (+ base + merge, ~67 GB resident) on one 24 GB GPU
    """

    base_model: ModelRef
    models: list[ModelRef] = Field(default_factory=list)  # required unless the recipe is HiMoLE-only
    objectives: list[Objective] = Field(min_length=1)
    split: SplitConfig = SplitConfig()
    parameter_level: ParameterLevel = ParameterLevel()
    architecture_level: ArchitectureLevel = ArchitectureLevel()
    agent: AgentConfig = AgentConfig()
    preferences: PreferenceConfig = PreferenceConfig()
    output: OutputConfig = OutputConfig()
    distributed: DistributedConfig = DistributedConfig()
    tokenizer_source: str = Field(default="base", min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device_memory: ByteSize | None = Field(default=None, gt=0)
    seed: Seed = 0
    allow_pickle: bool = False
    trust_remote_code: bool = False
    allow_task_code: bool = False
    allow_code_execution: bool = False
    himole: HiMoLEConfig | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        problems: list[str] = []
        if not self.models and self.himole is None:
            given = "models" in self.model_fields_set
            problems.append("models: " + ("must not be empty" if given else "required"))
        if self.himole is not None:
            problems += himole_cross_checks(self.himole, [o.name for o in self.objectives])
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"models: duplicate names {duplicates}; give each a distinct 'name'")
        problems += _repeated_models(self.models)
        objective_names = [o.name for o in self.objectives]
        repeated = sorted({n for n in objective_names if objective_names.count(n) > 1})
        if repeated:
            problems.append(f"objectives: duplicate names {repeated}")
        if self.tokenizer_source not in ("base", *names):
            problems.append(f"tokenizer_source: {self.tokenizer_source!r} is neither 'base' nor a model name")
        for i, objective in enumerate(self.objectives):
            if objective.model is not None and objective.model not in names:
                problems.append(
                    f"objectives[{i}].model: {objective.model!r} is not a model name ({', '.join(names)})"
                )
        mismatch = self.models and len(self.objectives) != len(self.models)
        if mismatch and any(o.model is None for o in self.objectives):
            problems.append(
                f"objectives: {len(self.objectives)} objectives for {len(self.models)} models: give each objective "
                "'model' (the model whose skill it measures), so a preference maps to merge weights"
            )
        level = self.architecture_level
        if level.enabled and any(level.frame) and self.agent.actions != "edit":
            field = "fixed_first" if level.fixed_first else "fixed_last"
            problems.append(
                f"architecture_level.{field}: fixed layers are kept by the edit agent; set agent.actions: edit"
            )
        kinds = {o.is_vision for o in self.objectives}
        if len(kinds) > 1:
            problems.append(
                "objectives: mixes lm-eval tasks and vision data sets; a pool is one or the other"
            )
        if problems:
            raise ValueError(" | ".join(problems))
        return self

    @property
    def model_names(self) -> list[str]:
        """Names of the K fine-tuned models, in recipe order."""
        return [m.name for m in self.models]  # type: ignore[misc]

    @property
    def objective_names(self) -> list[str]:
        """Names of the objectives, in recipe order (the order of a preference vector)."""
        return [o.name for o in self.objectives]

    def with_directions(self, directions: Mapping[str, bool]) -> Recipe:
        """This recipe with every objective's ``higher_is_better`` set: ``directions`` (objective name ->
        direction, as the loaded tasks resolve them: :attr:`hm3.evaluate.Evaluator.higher_is_better`) fills in
        the ones the recipe leaves to the task."""
        objectives = [
            o
            if o.higher_is_better is not None
            else o.model_copy(update={"higher_is_better": directions[o.name]})
            for o in self.objectives
        ]
        return self.model_copy(update={"objectives": objectives})

    def model_weights(self, preference: list[float] | tuple[float, ...]) -> list[float]:
        """Per-model merge weights for a preference over the objectives (see ``Objective.model``)."""
        if len(preference) != len(self.objectives):
            raise ValueError(f"{len(preference)} preference values for {len(self.objectives)} objectives")
        weights = dict.fromkeys(self.model_names, 0.0)
        for i, (objective, value) in enumerate(zip(self.objectives, preference, strict=True)):
            weights[objective.model or self.model_names[i]] += float(value)
        return [weights[name] for name in self.model_names]


def _repeated_models(models: Sequence[ModelRef]) -> list[str]:
    """A problem per model that is an earlier one again (the same folder, however written, or the same hub id and
    revision): a merge of a model with itself has nothing to merge, and its two slots would split its weight."""
    problems = []
    seen: dict[tuple[str, str | None], int] = {}
    for i, model in enumerate(models):
        where = model.path if model.is_hub else str(Path(model.path).resolve())
        first = seen.setdefault((where, model.revision), i)
        if first != i:
            problems.append(
                f"models[{i}]: {model.path} is models[{first}] again ({models[first].name!r}); list each "
                "fine-tuned model once"
            )
    return problems


# ---------------------------------------------------------------------------------------------------------
# Loading: YAML, include:, and error messages that name the field.


def load_recipe(path: str | Path) -> Recipe:
    """Read, merge includes, and validate a recipe file.

    Raises:
        RecipeError: with one ``(yaml_path, message)`` per problem.
    """
    path = Path(path)
    raw = _read_with_includes(path.resolve(), chain=())
    return recipe_from_dict(raw, base_dir=path.resolve().parent, source=str(path))


def read_stored_recipe(path: str | Path) -> Recipe:
    """The recipe a run stored (``RUN/recipe.yaml``: resolved, no ``include:``, absolute paths).

    Raises:
        RecipeError: one line per problem — a damaged file (not YAML, not UTF-8) included.
    """
    return recipe_from_dict(_read_yaml(Path(path), ""), source=str(path))


def recipe_files(path: str | Path) -> list[Path]:
    """The recipe file and every file its ``include:`` chain reads (resolved), for a recipe that loads."""
    found: list[Path] = []
    _read_with_includes(Path(path).resolve(), chain=(), files=found)
    return found


def recipe_from_dict(raw: dict[str, Any], base_dir: Path | None = None, source: str | None = None) -> Recipe:
    """Validate an already-read recipe mapping; relative paths resolve against ``base_dir``."""
    try:
        return Recipe.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as error:
        raise RecipeError(_problems_from(error), source=source) from None


def _read_yaml(path: Path, where: str) -> dict[str, Any]:
    if path.is_dir():
        raise RecipeError([(where, f"{path} is a folder, not a recipe file")])
    if not path.is_file():
        raise RecipeError([(where, f"file not found: {path}")])
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError as error:
        problem = f"not UTF-8 text (byte {error.start}): a recipe is a YAML text file"
        raise RecipeError([("", problem)], str(path)) from None
    except RecursionError:
        raise RecipeError([("", "nested too deeply to be a recipe")], str(path)) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise RecipeError(
            [("", f"not valid YAML{at}: {getattr(error, 'problem', error)}")], str(path)
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(
            [("", f"a recipe is a mapping of sections, not a {type(data).__name__}")], str(path)
        )
    return data


def _read_with_includes(
    path: Path, chain: tuple[Path, ...], files: list[Path] | None = None
) -> dict[str, Any]:
    """The recipe mapping with every ``include:`` merged in; relative paths inside an included file are
    rewritten to absolute ones so they keep pointing where that file meant. ``files`` collects every file read."""
    data = _read_yaml(path, "include" if chain else "")
    if files is not None and path not in files:
        files.append(path)
    includes = data.pop("include", None)
    if includes is None:
        return data
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise RecipeError([("include", "must be a path or a list of paths")], str(path))
    merged: dict[str, Any] = {}
    for index, include in enumerate(includes):
        target = (path.parent / include).resolve()
        where = "include" if len(includes) == 1 else f"include[{index}]"
        if target in chain or target == path:
            raise RecipeError([(where, f"include cycle through {target}")], str(path))
        if not target.is_file():
            raise RecipeError([(where, f"included file not found: {target}")], str(path))
        included = _read_with_includes(target, (*chain, path), files)
        merged = _deep_merge(merged, _absolutize(included, target.parent))
    return _deep_merge(merged, data)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _absolutize(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """An included recipe with its relative paths made absolute against its own folder (``base_dir``).

    Only the path fields of the schema are rewritten (model paths that are not hub ids, task YAMLs, heads,
    include paths, dataset paths, the output folder); everything else is left as written. Only a model
    reference can be a hub id: ``tasks/add.yaml`` or ``data/eurosat.npz`` is a path like ``../tasks/add.yaml``.
    """

    def fix(value: Any) -> Any:
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            return str((base_dir / value).resolve())
        return value

    def fix_model(ref: Any) -> Any:
        if isinstance(ref, str):
            return ref if (is_hub_id(ref) and not (base_dir / ref).exists()) else fix(ref)
        if isinstance(ref, dict) and "path" in ref:
            path = ref["path"]
            keep = isinstance(path, str) and is_hub_id(path) and not (base_dir / path).exists()
            return ref if keep else {**ref, "path": fix(path)}
        return ref

    out = dict(data)
    if "base_model" in out:
        out["base_model"] = fix_model(out["base_model"])
    if isinstance(out.get("models"), list):
        out["models"] = [fix_model(m) for m in out["models"]]
    if isinstance(out.get("objectives"), list):
        out["objectives"] = [_absolutize_objective(o, fix) for o in out["objectives"]]
    if isinstance(out.get("output"), dict) and isinstance(out["output"].get("dir"), str):
        out["output"] = {**out["output"], "dir": fix(out["output"]["dir"])}
    if isinstance(out.get("himole"), dict) and isinstance(out["himole"].get("train_data"), list):
        sources = [
            {k: fix(v) if k in ("path", "zoo") else v for k, v in s.items()} if isinstance(s, dict) else s
            for s in out["himole"]["train_data"]
        ]
        out["himole"] = {**out["himole"], "train_data": sources}
    return out


def _absolutize_objective(objective: Any, fix: Any) -> Any:
    if not isinstance(objective, dict):
        return objective
    out = dict(objective)
    if isinstance(out.get("task"), str) and out["task"].endswith(_TASK_YAML_SUFFIXES):
        out["task"] = fix(out["task"])
    for key in ("head", "include_path"):
        if isinstance(out.get(key), str) and out[key] != ZEROSHOT_HEAD:
            out[key] = fix(out[key])
    dataset = out.get("dataset")
    if isinstance(dataset, dict) and dataset.get("format") != "hf" and isinstance(dataset.get("path"), str):
        out["dataset"] = {**dataset, "path": fix(dataset["path"])}
    return out


def _problems_from(error: Any) -> list[tuple[str, str]]:
    """One ``(yaml_path, message)`` per pydantic error, phrased for someone editing YAML."""
    problems: list[tuple[str, str]] = []
    for item in error.errors(include_url=False):
        location = _yaml_path(item["loc"])
        kind, message = item["type"], item["msg"]
        if kind == "extra_forbidden":
            message = "unknown key" + _allowed_keys_hint(item["loc"])
        elif kind == "missing":
            message = "required"
        elif kind in ("value_error", "assertion_error"):
            message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        elif kind == "too_short":
            minimum = (item.get("ctx") or {}).get("min_length", 1)
            message = "must not be empty" if minimum == 1 else f"needs at least {minimum} items"
        elif kind == "literal_error":
            message = message.replace("Input should be", "must be")
        elif kind == "string_pattern_mismatch":
            pattern = (item.get("ctx") or {}).get("pattern")
            message = PATTERN_MEANINGS.get(pattern, f"must match {pattern}")
            message += f", not {item['input']!r}"
        else:
            message = message.replace("Input should be", "must be").replace("Input", "value")
        for part in message.split(" | "):
            field_path, _, detail = part.partition(": ")
            if location == "recipe" and detail and re.fullmatch(r"[\w.\[\]]+", field_path):
                problems.append((field_path, detail))
            else:
                problems.append((location, part))
    return problems


def _yaml_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for piece in loc:
        if isinstance(piece, int):
            parts.append(f"[{piece}]")
        elif str(piece).startswith("function-"):
            continue
        else:
            parts.append(("." if parts else "") + str(piece))
    return "".join(parts) or "recipe"


def _allowed_keys_hint(loc: tuple[Any, ...]) -> str:
    """`` (allowed: a, b, c)`` for the section an unknown key was found in."""
    model: type[BaseModel] | None = Recipe
    for piece in loc[:-1]:
        if isinstance(piece, int) or model is None:
            continue
        field = model.model_fields.get(str(piece))
        model = _model_of(field.annotation) if field else None
    if model is None:
        return ""
    return f" (allowed: {', '.join(model.model_fields)})"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def recipe_json_schema() -> dict[str, Any]:
    """The JSON schema of the recipe format (``hm3 schema``)."""
    schema = Recipe.model_json_schema()
    schema["properties"]["include"] = {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        "description": "Recipe file(s) this one extends; their keys are overridden by this file's.",
    }
    return schema
