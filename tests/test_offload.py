"""Layer offload: a bounded device cache of layers gives the scores of the all-resident search, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hm3.errors import UserError
from hm3.placement import GIB, Placement, PoolSizes, plan_memory
from hm3.routing.residency import DeviceLayerCache
from tests.fixtures_models import write_recipe
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401

SPECIALISTS = ("addition", "reversal", "sorting")


def micro_recipe(zoo: Path, folder: Path, extra: str = "") -> Path:
    models = "".join(f"  - {{name: {name}, path: {zoo / name}}}\n" for name in SPECIALISTS)
    objectives = "".join(
        f"  - {{name: {name}, task: {zoo / 'tasks' / f'toy_{name}.yaml'}, model: {name}, limit: 12}}\n"
        for name in SPECIALISTS
    )
    text = (
        f"base_model: {zoo / 'base'}\nmodels:\n{models}objectives:\n{objectives}"
        f"parameter_level: {{method: dare_ties, density: 0.6}}\ndevice: cpu\n{extra}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return write_recipe(folder, text)


def candidates(recipe, models) -> list:
    """Fine-tuned models, two merges and paths over each (repeats, skips, other models' layers), in an order
    that goes back to layers the cache dropped."""
    from hm3.merge.spec import MergeSpec
    from hm3.search.candidate import Candidate

    first = MergeSpec(method="dare_ties", weights=(0.5, 0.3, 0.4), density=0.6, seed=1)
    second = MergeSpec(method="task_arithmetic", weights=(0.2, 0.6, 0.3))
    pool = models.routing_pool(first)
    merged, layers = pool.merged_index, pool.num_layers
    paths = [
        [(0, 0), (merged, 1), (2, 0), (merged, 1), (1, layers - 1)],
        [(merged, i) for i in range(layers)] + [(merged, layers - 1)],
        [(1, i) for i in range(layers)],
        [(2, 0), (0, 1), (2, 1)],
    ]
    out = [Candidate.finetuned_model(name) for name in SPECIALISTS]
    for spec in (first, second, first):
        out.append(Candidate.of_merge(spec))
        out += [Candidate.routed(spec, path, "none", pool) for path in paths]
    return out


def score_all(recipe_file: Path) -> tuple[list[dict[str, float]], object]:
    from hm3.recipe import load_recipe
    from hm3.search.models import CandidateModels
    from hm3.search.session import load_inputs

    recipe = load_recipe(recipe_file)
    inputs = load_inputs(recipe)
    models = CandidateModels(inputs.pool, recipe, inputs.calibration)
    scores = []
    for candidate in candidates(recipe, models):
        scores.append(dict(inputs.evaluator.score(models.build(candidate), split="search")))
    return scores, models


@pytest.mark.parametrize(
    "dtype", ["float32", "bfloat16"]
)  # the zoo stores float32: bfloat16 casts on the move
def test_offloaded_scores_are_bit_identical_to_resident_ones(lm_zoo_micro, tmp_path, dtype) -> None:  # noqa: F811
    resident, resident_models = score_all(
        micro_recipe(lm_zoo_micro, tmp_path / "resident", f"dtype: {dtype}\n")
    )
    assert resident_models.cache is None
    pool = resident_models.pool
    sizes = PoolSizes.of(pool, dtype)
    bound = sizes.shared * 2 + 4 * sizes.layer  # well under the K + 1 models the paths draw on
    assert bound < sizes.members * (sizes.shared + sizes.layers * sizes.layer) / 1.5
    extra = f"dtype: {dtype}\ndevice_memory: {bound}\n"
    offloaded, models = score_all(micro_recipe(lm_zoo_micro, tmp_path / "offload", extra))
    assert offloaded == resident  # every objective's score, to the last bit
    assert len(set(map(str, resident))) > 3  # the candidates differ: a broken path would not pass unnoticed
    cache = models.cache
    assert cache is not None and cache.limit_bytes == bound
    assert cache.stats.peak_bytes <= bound
    assert cache.stats.hits > 0
    assert cache.stats.moves > sizes.members * sizes.layers  # layers were dropped and moved again
    host = models.pool.state_dict(0)[pool.layer_tensor_names(0)[0]]
    assert host.dtype == torch.float32 and mapped_from(host).endswith(".safetensors")  # as stored, mapped
    model = models.build(candidates(None, models)[4])  # a routed path over the merge
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    # what the agent observes and what an export says are the resident ones too
    from hm3.routing.summary import layer_summaries

    spec = candidates(None, models)[3].merge_spec()
    ours, theirs = models.routing_pool(spec), resident_models.routing_pool(spec)
    assert (layer_summaries(ours) == layer_summaries(theirs)).all()
    assert ours.dtype == theirs.dtype == getattr(torch, dtype)


def mapped_from(tensor: torch.Tensor) -> str:
    """The file whose memory map holds ``tensor``'s data ("" if none does), from ``/proc/self/maps``."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(part, 16) for part in fields[0].split("-"))
        if low <= address < high:
            return fields[5] if len(fields) > 5 else ""
    return ""


def test_cache_keeps_a_candidates_groups_and_evicts_least_recently_used() -> None:
    cache = DeviceLayerCache("cpu", limit_bytes=3 * 400)
    host = {key: [torch.full((100,), float(i))] for i, key in enumerate("abcde")}
    got = cache.fetch([("a", host["a"], None), ("b", host["b"], None)])
    assert torch.equal(got["a"][0], host["a"][0]) and got["a"][0].data_ptr() != host["a"][0].data_ptr()
    cache.fetch([("c", host["c"], None)])
    cache.fetch([("a", host["a"], None)])  # a is now the most recent; b the least
    cache.fetch([("d", host["d"], None)])
    assert "b" not in cache and {"a", "c", "d"} <= {k for k in "abcde" if k in cache}
    assert cache.stats.peak_bytes <= 3 * 400 and cache.stats.hits == 1
    halves = cache.fetch([("h", [torch.zeros(100)], torch.bfloat16)])  # cast on the move: 200 bytes
    assert halves["h"][0].dtype == torch.bfloat16 and cache.held_bytes <= 3 * 400
    with pytest.raises(UserError, match=r"^device_memory: a candidate needs"):
        cache.fetch([(k, host[k], None) for k in "abcd"])


def test_forget_drops_one_members_groups() -> None:
    cache = DeviceLayerCache("cpu", limit_bytes=10_000)
    tensor = [torch.zeros(4)]
    cache.fetch([(("merged", 0), tensor, None), (("merged", "shared"), tensor, None), ((0, 0), tensor, None)])
    cache.forget("merged")
    assert len(cache) == 1 and (0, 0) in cache


def sizes(**overrides) -> PoolSizes:
    # a LLaMA-2-7B group in bfloat16: 32 layers of 202M parameters, 262M shared, 3 fine-tunes
    base = {
        "model": 13_476_000_000,
        "layer": 404_750_000,
        "shared": 524_300_000,
        "models": 5,
        "members": 4,
        "layers": 32,
    }
    return PoolSizes(**(base | overrides))


def test_plan_is_resident_when_everything_fits() -> None:
    free = 140 * GIB
    plan = plan_memory(sizes(), 48, Placement("cuda", "bfloat16"), None, free)
    assert not plan.offload and plan.line.startswith("resident: 5 models")


def test_plan_offloads_with_what_is_free_when_the_pool_does_not_fit() -> None:
    free = 23 * GIB
    plan = plan_memory(sizes(), 48, Placement("cuda", "bfloat16"), None, free)
    assert plan.offload and plan.device_memory == int(23 * GIB / 1.15)
    assert "do not fit the 23.0 GiB free" in plan.line and "a candidate uses up to 48" in plan.line


def test_plan_takes_the_recipes_bound_and_refuses_one_too_small() -> None:
    free = 23 * GIB
    plan = plan_memory(sizes(), 48, Placement("cuda", "bfloat16"), 20 * GIB, free)
    assert plan.device_memory == 20 * GIB
    with pytest.raises(UserError, match=r"^device_memory: 10\.00 GiB cannot hold one candidate"):
        plan_memory(sizes(), 48, Placement("cuda", "bfloat16"), 10 * GIB, free)
    with pytest.raises(UserError, match=r"^device_memory: 30\.00 GiB .* is more than the 23\.0 GiB free"):
        plan_memory(sizes(), 48, Placement("cuda", "bfloat16"), 30 * GIB, free)


def test_plan_refuses_when_not_even_one_candidate_fits() -> None:
    free = 8 * GIB
    with pytest.raises(UserError, match=r"offloading needs .* for one candidate of up to 48 layers"):
        plan_memory(sizes(), 48, Placement("cuda", "bfloat16"), None, free)


def test_recipe_reads_device_memory_with_units(tmp_path) -> None:
    from hm3.errors import RecipeError
    from hm3.recipe import load_recipe

    base = "base_model: /m/base\nmodels: [{name: a, path: /m/a}]\nobjectives: [{name: a, task: t}]\n"
    recipe = load_recipe(write_recipe(tmp_path, base + "device_memory: 20GiB\n"))
    assert recipe.device_memory == 20 * GIB
    with pytest.raises(RecipeError, match="device_memory"):
        load_recipe(write_recipe(tmp_path, base + "device_memory: lots\n"))


def test_a_candidate_is_sized_for_the_merges_depth_when_t_max_is_below_it() -> None:
    """A T_max below the depth L bounds the routed paths only: a merge (the merged model's identity path) runs
    all L layers, so a bound that holds T_max layers but not L is refused up front, without advice to lower
    T_max (which cannot help), instead of failing at the first merge with the run folder made."""
    micro = sizes(model=200_000, layer=40_000, shared=120_000, models=5, members=4, layers=2)
    placement = Placement("cpu", "float32")
    assert micro.candidate(1) == micro.candidate(2) == 120_000 + 2 * 40_000
    with pytest.raises(UserError, match=r"up to 2 distinct layers") as refused:
        plan_memory(micro, 1, placement, 170_000, None)  # shared + 1 layer fits, shared + 2 do not
    assert "lower architecture_level.max_path_length" not in str(refused.value)
    assert "a merge runs all 2 layers" in str(refused.value)
    assert "a candidate uses up to 2" in plan_memory(micro, 1, placement, 250_000, None).line


def test_memory_messages_of_a_small_model_show_its_numbers_in_a_unit_that_fits() -> None:
    """A bound of a few hundred KB read "0.00 GiB cannot hold … 0.00 GiB"."""
    micro = sizes(model=200_000, layer=40_000, shared=120_000, models=5, members=4, layers=2)
    with pytest.raises(UserError, match=r"^device_memory: 146\.48 KiB cannot hold .* take 195\.31 KiB"):
        plan_memory(micro, 1, Placement("cpu", "float32"), 150_000, None)
    assert (
        "at most 244.14 KiB of layers"
        in plan_memory(micro, 1, Placement("cpu", "float32"), 250_000, None).line
    )
    cache = DeviceLayerCache("cpu", limit_bytes=1000)
    with pytest.raises(UserError, match=r"needs 1\.56 KiB of layers .* device_memory is 1000\.00 B"):
        cache.fetch([("a", [torch.zeros(400)], None)])


def test_a_recipe_whose_t_max_is_below_the_depth_plans_for_the_depth() -> None:
    from hm3.placement import candidate_length
    from hm3.recipe import Recipe

    def recipe(length: int | None) -> Recipe:
        return Recipe.model_validate(
            {
                "base_model": {"path": "/m/base"},
                "models": [{"name": "a", "path": "/m/a"}],
                "objectives": [{"name": "a", "task": "t"}],
                "architecture_level": {"max_path_length": length},
            }
        )

    assert candidate_length(recipe(1), 2) == 2  # the merges run both layers
    assert candidate_length(recipe(5), 2) == 5
    assert candidate_length(recipe(None), 4) == 6  # 1.5 x L
