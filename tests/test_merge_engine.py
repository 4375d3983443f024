"""The in-memory merge the search uses: MergeSpec as data, merge_state_dict, every method, DARE masks."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from hm3.checkpoint import Checkpoint
from hm3.errors import UserError
from hm3.merge import METHODS, MergeSpec
from hm3.merge.engine import export_merge, merge_state_dict
from hm3.merge.mergekit_run import run_mergekit_config
from hm3.merge.sparsify import kth_largest, magnitude, random_drop
from hm3.pool import ModelPool
from hm3.recipe import MERGE_METHODS, ParameterLevel


def make_pool(tiny) -> ModelPool:
    return ModelPool(Checkpoint(tiny.base, "base"), [Checkpoint(f) for f in tiny.finetunes])


def test_registry_matches_the_recipe_methods() -> None:
    assert tuple(METHODS) == MERGE_METHODS


def test_spec_is_frozen_deterministic_data() -> None:
    spec = MergeSpec(method="dare_ties", weights=[0.2, [0.1, 0.5], 0.7], density=0.4, seed=3)
    again = MergeSpec(method="dare_ties", weights=(0.2, (0.1, 0.5), 0.7), density=(0.4, 0.4, 0.4), seed=3)
    assert spec == again and hash(spec) == hash(again)
    assert spec.model_dump() == again.model_dump()
    assert MergeSpec.model_validate(spec.model_dump()) == spec
    with pytest.raises(ValidationError):
        spec.seed = 4  # type: ignore[misc]
    assert MergeSpec(method="ties", weights=[1.0]).effective_normalize is True
    assert MergeSpec(method="dare_ties", weights=[1.0]).effective_rescale is True
    # methods that do not trim ignore density, so equal merges are equal specs (one score cache entry)
    assert MergeSpec(method="task_arithmetic", weights=[1.0], density=0.3) == MergeSpec(
        method="task_arithmetic", weights=[1.0]
    )
    with pytest.raises(ValueError, match="density has 1 entries for 2 models"):
        MergeSpec(method="ties", weights=[1.0, 1.0], density=[0.5])


def test_spec_from_recipe() -> None:
    level = ParameterLevel(method="dare_ties", drop_rate=0.3, normalize=True)
    spec = MergeSpec.from_recipe(level, [0.25, 0.75], seed=7)
    assert spec.method == "dare_ties" and spec.density == (pytest.approx(0.7),) * 2
    assert spec.weights == (0.25, 0.75) and spec.normalize is True and spec.seed == 7
    assert MergeSpec.from_recipe(ParameterLevel(seed=1), [1.0], seed=7).seed == 1
    assert MergeSpec.from_recipe(level, [1.0, 1.0], seed=0, density=0.9).density == (0.9, 0.9)


@pytest.mark.parametrize("method", MERGE_METHODS)
def test_every_method_merges_in_memory(tiny_pools, method) -> None:
    pool = make_pool(tiny_pools["qwen2"])
    spec = MergeSpec(method=method, weights=[0.5, 0.3, 0.2], density=0.6)
    merged = merge_state_dict(pool, spec)
    assert list(merged) == pool.tensor_names
    for name, tensor in merged.items():
        assert tensor.shape == pool.base.tensors[name].shape and torch.isfinite(tensor).all()
    assert not torch.equal(merged[pool.tensor_names[1]], pool.tensor(-1, pool.tensor_names[1]))


def test_in_memory_merge_equals_the_mergekit_config_run(tiny_llama, tmp_path) -> None:
    import yaml

    pool = make_pool(tiny_llama)
    spec = MergeSpec(method="ties", weights=[0.3, (0.2, 0.9), 0.5], density=[0.5, 0.6, 0.7])
    ours = merge_state_dict(pool, spec)
    held = merge_state_dict(pool, spec, cached=True)  # inputs from whole models kept in memory
    from hm3.merge.mergekit_export import to_mergekit_config

    config = tmp_path / "c.yml"
    config.write_text(yaml.safe_dump(to_mergekit_config(spec, tiny_llama.finetunes, tiny_llama.base)))
    written = Checkpoint(run_mergekit_config(config, tmp_path / "out", show_progress=False))
    for name, tensor in ours.items():
        assert torch.equal(tensor, held[name]) and torch.equal(tensor, written.load(name))


def test_dare_masks_are_reproducible_from_the_seed(tiny_llama) -> None:
    pool = make_pool(tiny_llama)
    spec = MergeSpec(method="dare_ties", weights=[1.0, 1.0, 1.0], density=0.5, seed=1)
    first, again = merge_state_dict(pool, spec), merge_state_dict(pool, spec)
    other = merge_state_dict(pool, spec.model_copy(update={"seed": 2}))
    name = pool.layer_tensor_names(0)[1]
    assert torch.equal(first[name], again[name])
    assert not torch.equal(first[name], other[name])


def test_dare_keeps_the_density_and_rescales_survivors() -> None:
    delta = torch.randn(1000, 1000)
    for density in (0.1, 0.5, 0.9):
        dropped = random_drop(delta, density, seed=0)
        kept = dropped != 0
        assert abs(kept.float().mean().item() - density) < 0.02 * density
        factor = dropped[kept] / delta[kept]
        assert torch.allclose(factor, factor[0]) and abs(factor[0].item() * density - 1) < 0.02


def test_magnitude_trim_keeps_the_largest_entries() -> None:
    delta = torch.tensor([0.1, -5.0, 0.5, 2.0, -0.25, 0.0])
    assert magnitude(delta, 0.5).tolist() == [0.0, -5.0, 0.5, 2.0, 0.0, 0.0]
    ties = torch.tensor([1.0, -1.0, 1.0, 1.0])
    assert (magnitude(ties, 0.5) != 0).sum() == 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_kth_largest_by_bit_counting_equals_kthvalue(dtype) -> None:
    """The radix select behind TIES trimming is exact: every k, with ties, zeros, tiny and large magnitudes."""
    generator = torch.Generator().manual_seed(0)
    for size in (1, 2, 9, 4097):
        for case in range(4):
            scale = 10.0 ** float(torch.randint(-9, 3, (1,), generator=generator))
            values = (torch.randn(size, generator=generator) * scale).to(dtype).abs()
            if case == 1:
                values = values.div(scale).round()  # many exact ties
            elif case == 2:
                values[: size // 2] = 0
            for k in {1, size, int(torch.randint(1, size + 1, (1,), generator=generator))}:
                expected = torch.kthvalue(values.double(), size - k + 1).values
                found = kth_largest(values, k)
                assert found.dtype == dtype and float(found) == float(expected), (size, case, k)


def test_nan_input_is_refused_in_memory(tiny_llama, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    name = "model.layers.0.self_attn.q_proj.weight"
    tensors = load_file(tiny_llama.finetunes[1] / "model.safetensors")
    tensors[name][1, 1] = float("inf")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_llama.finetunes[1] / "config.json").read_text())
    save_file(tensors, bad / "model.safetensors")
    pool = ModelPool(
        Checkpoint(tiny_llama.base, "base"), [Checkpoint(tiny_llama.finetunes[0]), Checkpoint(bad)]
    )
    with pytest.raises(UserError, match=f"model bad: tensor {name} contains Inf"):
        merge_state_dict(pool, MergeSpec(method="task_arithmetic", weights=[0.5, 0.5]))


def test_export_merge_writes_a_loadable_checkpoint_and_its_mergekit_yaml(tiny_pools, tmp_path) -> None:
    import transformers
    import yaml

    pool = make_pool(tiny_pools["clip_vision"])
    spec = MergeSpec(method="dare_linear", weights=[0.4, 0.4, 0.2], density=0.8, dtype="bfloat16")
    out = export_merge(pool, spec, tmp_path / "merged")
    model = transformers.CLIPVisionModel.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    config = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert config["merge_method"] == "dare_linear" and config["dtype"] == "bfloat16"
    assert "dare_linear" in (out / "README.md").read_text()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_magnitude_trim_breaks_ties_at_the_threshold_by_lowest_index(dtype) -> None:
    """Exactly the top ``density`` share by magnitude, ties at the threshold resolved lowest index first."""
    generator = torch.Generator().manual_seed(0)
    delta = (torch.randn(50_000, generator=generator) * 4).round().div(4).to(dtype)  # heavy ties
    for density in (0.1, 0.37, 0.5, 0.93):
        keep = max(1, int(density * delta.numel()))
        order = sorted(range(delta.numel()), key=lambda i: (-abs(float(delta[i])), i))[:keep]
        expected = torch.zeros_like(delta)
        expected[order] = delta[order]
        trimmed = magnitude(delta.clone(), density, inplace=True)
        assert torch.equal(trimmed, expected), density
        assert int((trimmed != 0).sum()) == int((expected != 0).sum())


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_merged_tensors_do_not_depend_on_the_worker_count(tiny_llama, tmp_path, method) -> None:
    """Tensors are merged in parallel, each on one thread: the bits are the same for 1 and 3 workers."""
    import yaml

    from hm3.merge.mergekit_export import to_mergekit_config
    from hm3.merge.mergekit_plan import plan_merge
    from hm3.merge.mergekit_run import merged_tensors
    from hm3.merge.mergekit_schema import load_mergekit_config

    spec = MergeSpec(method=method, weights=[0.3, 0.2, 0.5], density=0.5, seed=3)
    config = tmp_path / "c.yml"
    config.write_text(yaml.safe_dump(to_mergekit_config(spec, tiny_llama.finetunes, tiny_llama.base)))
    plan = plan_merge(load_mergekit_config(config), base_dir=tmp_path)
    one = list(merged_tensors(plan, workers=1))
    three = list(merged_tensors(plan, workers=3))
    assert [name for name, _ in one] == [name for name, _ in three] == [t.name for t in plan.tensors]
    for (_, a), (_, b) in zip(one, three, strict=True):
        assert torch.equal(a, b)


def test_outsized_tensors_are_merged_first_and_the_lookahead_never_blocks_the_writer(
    tiny_llama, tmp_path, monkeypatch
) -> None:
    import yaml

    from hm3.merge import mergekit_run, streaming
    from hm3.merge.mergekit_export import to_mergekit_config
    from hm3.merge.mergekit_plan import plan_merge
    from hm3.merge.mergekit_schema import load_mergekit_config

    assert streaming.merge_order([100, 10, 10, 10, 900, 10]) == [4, 0, 1, 2, 3, 5]
    assert streaming.merge_order([10, 10, 40]) == [0, 1, 2]
    spec = MergeSpec(method="ties", weights=[0.3, 0.2, 0.5], density=0.5)
    config = tmp_path / "c.yml"
    config.write_text(yaml.safe_dump(to_mergekit_config(spec, tiny_llama.finetunes, tiny_llama.base)))
    plan = plan_merge(load_mergekit_config(config), base_dir=tmp_path)
    one = list(mergekit_run.merged_tensors(plan, workers=1))
    monkeypatch.setattr(streaming, "LOOKAHEAD_ENTRIES", 1)  # the writer's next tensor is always submitted
    two = list(mergekit_run.merged_tensors(plan, workers=2))
    assert [name for name, _ in two] == [name for name, _ in one]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(one, two, strict=True))
    unordered = list(mergekit_run.merged_tensors(plan, workers=2, ordered=False))  # as they are done
    assert sorted(name for name, _ in unordered) == sorted(name for name, _ in one)
    expected = dict(one)
    assert all(torch.equal(tensor, expected[name]) for name, tensor in unordered)


@pytest.mark.parametrize("normalize", [False, True])
def test_sign_consensus_stays_on_the_task_vectors_device(normalize: bool) -> None:
    """The consensus merge makes its accumulators where the task vectors are (a GPU search: ``device: cuda``
    once died here with its sums on the CPU); ``meta`` stands in for a device other than the CPU."""
    from hm3.merge.consensus import elect_and_merge

    weighted = torch.empty((3, 4, 5), device="meta")
    mixed, divisor = elect_and_merge(weighted, torch.tensor([0.5, 0.3, 0.2]), with_divisor=normalize)
    assert mixed.device.type == "meta" and mixed.shape == (4, 5)
    assert divisor is None if not normalize else divisor.device.type == "meta"
