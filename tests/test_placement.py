"""The recipe's device and dtype: resolution, the up-front memory check, and the pool's placement."""

from __future__ import annotations

import pytest

from hm3.errors import UserError
from hm3.placement import Placement, PoolSizes, plan_memory, resolve_device


def test_auto_resolves_to_what_is_visible() -> None:
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


def test_cuda_without_a_gpu_is_a_user_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        resolve_device("cuda")


def test_a_pool_that_does_not_fit_is_refused_before_loading() -> None:
    free = 10 * 1024**3
    small = PoolSizes(
        model=2_000_000_000, layer=50_000_000, shared=200_000_000, models=2, members=1, layers=32
    )
    assert not plan_memory(
        small, 48, Placement("cpu", "bfloat16"), None, free
    ).offload  # 2 x 2 GB x 1.15 fits in 10 GiB
    large = PoolSizes(
        model=5_400_000_000, layer=10_000_000_000, shared=400_000_000, models=5, members=4, layers=1
    )
    with pytest.raises(UserError, match=r"about 28\.9 GiB on cuda in float32, but 10\.0 GiB are free"):
        plan_memory(large, 1, Placement("cuda", "float32"), None, free)


def test_pool_places_tensors_in_the_recipe_dtype(tiny_pools) -> None:
    import torch

    from hm3.checkpoint import Checkpoint
    from hm3.merge.engine import merge_state_dict
    from hm3.merge.spec import MergeSpec
    from hm3.pool import ModelPool

    tiny = tiny_pools["llama"]
    fresh = ModelPool(Checkpoint(tiny.base), [Checkpoint(f) for f in tiny.finetunes])
    fresh.place("cpu", torch.bfloat16)
    assert {t.dtype for t in fresh.state_dict(0).values()} == {torch.bfloat16}
    spec = MergeSpec(method="task_arithmetic", weights=(0.5,) * len(tiny.finetunes))
    merged = merge_state_dict(fresh, spec, cached=True)
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}
    assert fresh.parameters_per_model == sum(t.numel() for t in fresh.state_dict(0).values())


def test_ray_workers_get_a_gpu_each_when_the_recipe_runs_on_one() -> None:
    from types import SimpleNamespace

    from hm3.search.distributed import actor_placement

    class Recipe(SimpleNamespace):
        def model_copy(self, update):
            return Recipe(**{**vars(self), **update})

    on_cpu, recipe = actor_placement(Recipe(device="cpu"), {"CPU": 2.0, "GPU": 4.0})
    assert on_cpu == {"num_cpus": 1} and recipe.device == "cpu"
    options, recipe = actor_placement(Recipe(device="auto"), {"CPU": 16.0, "GPU": 2.0})
    assert options == {"num_cpus": 1, "num_gpus": 1} and recipe.device == "cuda"
    assert actor_placement(Recipe(device="auto"), {"CPU": 2.0})[0] == {"num_cpus": 1}
    with pytest.raises(UserError, match="the Ray cluster has no GPU"):
        actor_placement(Recipe(device="cuda"), {"CPU": 2.0})


def test_fixed_layers_that_fill_a_t_max_below_the_depth_are_refused_in_one_line() -> None:
    """Below the depth the edit agent edits the merge fitted into T_max; fixed first and last steps that fill
    all T_max of them leave it nothing to edit (it would score the merge alone)."""
    from hm3.placement import check_frame
    from hm3.recipe import Recipe

    def recipe(length: int) -> Recipe:
        return Recipe.model_validate(
            {
                "base_model": {"path": "/m/base"},
                "models": [{"name": "a", "path": "/m/a"}],
                "objectives": [{"name": "a", "task": "t"}],
                "architecture_level": {"max_path_length": length, "fixed_first": 1, "fixed_last": 1},
                "agent": {"actions": "edit"},
            }
        )

    with pytest.raises(
        UserError, match=r"^architecture_level.fixed_first \+ fixed_last: 1 \+ 1 fill every step"
    ):
        check_frame(recipe(2), 4)
    check_frame(recipe(3), 4)  # one step between them to edit


def test_more_blocks_per_model_than_layers_are_refused_in_one_line() -> None:
    """``block:4`` on a 2-layer pool: two of each model's four coefficients would decide no layer, searched for
    nothing by the upper level."""
    from hm3.placement import check_frame
    from hm3.recipe import Recipe

    def recipe(granularity: str) -> Recipe:
        return Recipe.model_validate(
            {
                "base_model": {"path": "/m/base"},
                "models": [{"name": "a", "path": "/m/a"}],
                "objectives": [{"name": "a", "task": "t"}],
                "parameter_level": {"granularity": granularity},
            }
        )

    with pytest.raises(
        UserError, match=r"^parameter_level.granularity: block:4 gives each model 4 coefficients"
    ):
        check_frame(recipe("block:4"), 2)
    check_frame(recipe("block:2"), 2)
    check_frame(recipe("model"), 1)
