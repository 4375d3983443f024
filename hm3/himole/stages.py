"""HiMoLE's training schedule (Algorithm 1) and the single-phase schedule of the baselines, over phases.

* :meth:`Schedule.two_stage`: stage 1 trains expert ``g·M`` of every block on cluster g's pairs alone (the
  blocks forced to that expert, gates unused) and copies it into the group's other experts; stage 2 trains
  every expert and the gates (still at their fresh initialisation) on all pairs with the auxiliary losses.
* :meth:`Schedule.single_phase`: ``lora``, ``moe-lora``, ``hydra-lora`` and ``--no-two-stage`` train everything
  at once, at stage 1's learning rate, for N × stage-1 steps + stage-2 steps (the batches HiMoLE sees in both
  stages).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console

from hm3.errors import UserError
from hm3.himole.config import HiMoLEConfig
from hm3.himole.data import Pair
from hm3.himole.training import (
    PhaseResult,
    PhaseSettings,
    copy_into_group,
    enable_grads,
    expert_parameters,
    force_expert,
    gate_parameters,
    train_phase,
)
from hm3.zoo.progress import training_bar

if TYPE_CHECKING:
    from torch import nn

    from hm3.himole.clustering import Clustering
    from hm3.himole.model import AdapterShape


@dataclass
class Schedule:
    """Runs training phases on one model with a mixture attached.

    Attributes:
        model: The model (its mixture attached).
        tokenizer: Its tokenizer.
        config: The recipe's ``himole:`` section.
        shape: The adapter's shape.
        seed: Seed of the batch order.
        console: Where progress bars go.
    """

    model: nn.Module
    tokenizer: Any
    config: HiMoLEConfig
    shape: AdapterShape
    seed: int
    console: Console

    def settings(self, lr: float, steps: int, auxiliary: bool) -> PhaseSettings:
        """A phase's settings; ``auxiliary`` adds the load-balancing (and, for HiMoLE, diversity) losses."""
        config = self.config
        return PhaseSettings(
            lr,
            steps,
            batch_size=config.batch_size,
            eval_every=config.eval_every,
            patience=config.patience,
            aux_weight=config.aux_loss_weight if auxiliary else 0.0,
            diversity_weight=config.diversity_loss_weight
            if auxiliary and self.shape.variant == "himole"
            else 0.0,
            answer_suffix=config.answer_suffix,
            seed=self.seed,
            warmup=config.warmup_steps,
        )

    def phase(
        self,
        name: str,
        parameters: list[Any],
        train: list[Pair],
        validation: list[Pair],
        settings: PhaseSettings,
    ) -> PhaseResult:
        """Train only ``parameters`` (every other adapter tensor frozen), with a progress bar."""
        for parameter in expert_parameters(self.model) + gate_parameters(self.model):
            parameter.requires_grad_(False)
        with training_bar(self.console, name, settings.steps) as on_step:
            return train_phase(
                name,
                self.model,
                self.tokenizer,
                enable_grads(parameters),
                train,
                validation,
                settings,
                on_step,
            )

    def single_phase(self, train: list[Pair], validation: list[Pair]) -> list[PhaseResult]:
        """Every expert and gate at once (``lora``, ``moe-lora``, ``hydra-lora``, HiMoLE without two-stage
        training)."""
        config = self.config
        steps = config.stage1.steps * config.clusters + config.stage2.steps
        label = self.shape.variant if self.shape.variant != "himole" else "himole (one stage)"
        everything = expert_parameters(self.model) + gate_parameters(self.model)
        return [
            self.phase(label, everything, train, validation, self.settings(config.stage1.lr, steps, True))
        ]

    def two_stage(
        self, pairs: list[Pair], train_rows: list[int], validation_rows: list[int], clustering: Clustering
    ) -> list[PhaseResult]:
        """Stage 1 per cluster, the copies into each group, then stage 2."""
        config, per_group = self.config, self.shape.experts_per_group
        results: list[PhaseResult] = []
        stage1 = self.settings(config.stage1.lr, config.stage1.steps, False)
        validation = [pairs[i] for i in validation_rows]
        for group in range(config.clusters):
            members = set(clustering.members(group))
            group_train = [pairs[i] for i in train_rows if i in members]
            group_validation = [pairs[i] for i in validation_rows if i in members] or validation
            if not group_train:
                raise UserError(
                    f"himole.clusters: cluster {group} has no training rows; use fewer clusters or more data"
                )
            first = group * per_group
            force_expert(self.model, first)
            parameters = expert_parameters(self.model, first)
            results.append(
                self.phase(f"stage 1, cluster {group}", parameters, group_train, group_validation, stage1)
            )
            copy_into_group(self.model, group, per_group)
        force_expert(self.model, None)
        everything = expert_parameters(self.model) + gate_parameters(self.model)
        stage2 = self.settings(config.stage2.lr, config.stage2.steps, True)
        train = [pairs[i] for i in train_rows]
        results.append(self.phase("stage 2", everything, train, validation, stage2))
        return results
