"""Scoring on the CPU runs on one intra-op thread whatever the machine's load, and gives the count back."""

from __future__ import annotations

import torch

from hm3.evaluate.threads import SCORING_THREADS, scoring_threads


def test_a_cpu_model_is_scored_on_one_thread_and_the_count_is_restored() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = torch.nn.Linear(4, 4)
        seen = []

        class Probe(torch.nn.Module):
            def forward(self, x):
                seen.append(torch.get_num_threads())
                return model(x)

        with scoring_threads(model):
            Probe()(torch.ones(1, 4))
        assert seen == [SCORING_THREADS] == [1]
        assert torch.get_num_threads() == 2
        # an error inside gives the count back too
        try:
            with scoring_threads(model):
                raise RuntimeError
        except RuntimeError:
            pass
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
