"""The fused CPU kernels (hm3.merge.fused) against the op-by-op torch kernel they replace, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hm3.errors import UserError
from hm3.merge import fused, sparsify
from hm3.merge.registry import get_method
from hm3.merge.tensor_merge import TensorParameters, merge_tensor


@pytest.fixture
def one_thread():
    """The torch kernel on one thread, as merges run it (its half-precision sums round per thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torch_kernel(monkeypatch, *args, **kwargs) -> torch.Tensor:
    with monkeypatch.context() as patch:
        patch.setattr(fused, "supports", lambda tensors: False)
        return merge_tensor(*args, **kwargs)


def inputs(size: int, dtype: torch.dtype, seed: int, ties: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    base = (torch.randn(size, generator=generator) * 0.02).to(dtype)
    noise = [torch.randn(size, generator=generator) for _ in range(3)]
    if ties:  # few distinct task-vector magnitudes: many ties at the trim threshold, across blocks
        noise = [n.round() for n in noise]
    return base, [(base.float() + n * 0.002).to(dtype) for n in noise]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("method", ["ties", "dare_ties", "task_arithmetic", "dare_linear"])
def test_fused_merge_equals_the_torch_kernel(monkeypatch, one_thread, dtype, method) -> None:
    row = get_method(method)
    for size, ties in ((1, False), (7, True), (4097, False), (20_011, True)):
        base, tensors = inputs(size, dtype, size, ties)
        assert fused.supports([base, *tensors])
        for normalize in (False, True):
            for rescale in (False, True):
                params = TensorParameters(
                    weights=(0.5, 0.3, 0.25),
                    densities=(0.5, 0.4, 1.0),
                    normalize=normalize,
                    rescale=rescale,
                    scale=1.3,
                )
                got = merge_tensor(row, base, tensors, params, seed=1, tensor_name="t")
                want = torch_kernel(monkeypatch, row, base, tensors, params, seed=1, tensor_name="t")
                case = (size, normalize, rescale)
                if rescale and row.sparsification and dtype == torch.float32:
                    # the L1 norms are summed in float64 here, pairwise in float32 by torch: the rescale
                    # factor may differ in its last bit
                    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8, msg=str(case))
                else:
                    assert torch.equal(got, want), case


@pytest.mark.parametrize("density", [0.0, 1.0])
def test_fused_ties_at_the_density_limits(monkeypatch, one_thread, density) -> None:
    base, tensors = inputs(5000, torch.bfloat16, 0, False)
    params = TensorParameters(
        weights=(1.0, 1.0, 1.0), densities=(density,) * 3, normalize=True, rescale=False
    )
    row = get_method("ties")
    got = merge_tensor(row, base, tensors, params)
    assert torch.equal(got, torch_kernel(monkeypatch, row, base, tensors, params))
    if density == 0:
        assert torch.equal(got, base)


def test_dare_masks_are_the_same_in_torch_and_in_the_fused_kernels() -> None:
    from hm3.merge import _fused_kernels as kernels

    seed = 0x1234_5678_9ABC_DEF0
    low, high = sparsify.mask_keys(seed)
    words = np.empty(5000, dtype=np.uint32)
    kernels.fill_draws(words, 0, np.uint32(low), np.uint32(high))
    expected = sparsify.mask_draws(10_000, seed)
    assert np.array_equal(words.view(np.uint16).astype(np.int64), expected.numpy())
    kernels.fill_draws(words[:10], 2500, np.uint32(low), np.uint32(high))  # a block further on
    assert np.array_equal(words[:10].view(np.uint16).astype(np.int64), expected[5000:5020].numpy())
    draws = expected.float() / 65536
    assert abs(draws.mean().item() - 0.5) < 0.01 and abs(draws.var().item() - 1 / 12) < 0.005


def test_dare_masks_differ_between_models_and_tensors() -> None:
    masks = [sparsify.random_keep((10_000,), 0.5, seed) for seed in (1, 2, 2**32 + 1)]
    for a in range(3):
        for b in range(a + 1, 3):
            agreement = (masks[a] == masks[b]).float().mean().item()
            assert 0.45 < agreement < 0.55  # independent masks agree on about half the entries


def test_fused_merge_names_a_nan_input(one_thread) -> None:
    base, tensors = inputs(4097, torch.bfloat16, 0, False)
    tensors[1][4000] = float("nan")
    params = TensorParameters(weights=(1.0, 1.0, 1.0), densities=(0.5,) * 3, normalize=True, rescale=False)
    with pytest.raises(UserError, match="model second: tensor w contains NaN"):
        merge_tensor(
            get_method("ties"),
            base,
            tensors,
            params,
            tensor_name="w",
            check_inputs=["first", "second", "third", "base"],
        )


def test_an_overflowing_task_vector_falls_back_to_the_torch_kernel(monkeypatch, one_thread) -> None:
    base = torch.tensor([-3e38, 1.0, 2.0], dtype=torch.float32)
    tensors = [torch.tensor([3e38, 1.5, 2.0]), torch.tensor([0.0, 1.0, 2.5])]
    params = TensorParameters(weights=(0.5, 0.5), densities=(1.0, 1.0), normalize=False, rescale=False)
    row = get_method("task_arithmetic")
    got = merge_tensor(row, base, tensors, params, check_inputs=["a", "b", "base"])
    assert torch.equal(got, torch_kernel(monkeypatch, row, base, tensors, params))


def stored_as(dtype: str, folders: list, root, change=None) -> list:
    """Copies of model folders with their weights stored in ``dtype`` (``change(index, state)`` edits them)."""
    from safetensors.torch import load_file, save_file

    copies = []
    for index, folder in enumerate(folders):
        copy = root / dtype / folder.name
        copy.mkdir(parents=True)
        for file in folder.iterdir():
            if file.suffix == ".safetensors":
                state = {k: v.to(getattr(torch, dtype)) for k, v in load_file(file).items()}
                if change is not None:
                    change(index, state)
                save_file(state, copy / file.name, metadata={"format": "pt"})
            elif file.is_file():
                (copy / file.name).write_bytes(file.read_bytes())
        copies.append(copy)
    return copies


def mergekit_plan(method: str, folders: list, tmp_path):
    import yaml

    from hm3.merge.mergekit_export import to_mergekit_config
    from hm3.merge.mergekit_plan import plan_merge
    from hm3.merge.mergekit_schema import load_mergekit_config
    from hm3.merge.spec import MergeSpec

    spec = MergeSpec(method=method, weights=[0.3, 0.2, 0.5], density=0.5, seed=0)
    config = tmp_path / "c.yml"
    config.write_text(yaml.safe_dump(to_mergekit_config(spec, folders[1:], folders[0])))
    return config, plan_merge(load_mergekit_config(config), base_dir=tmp_path)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("method", ["ties", "dare_ties", "task_arithmetic", "dare_linear"])
def test_a_mergekit_run_without_torch_gives_the_torch_runs_tensors(
    tiny_llama, tmp_path, dtype, method
) -> None:
    """hm3 merge --mergekit on numpy arrays (no torch import) == the same plan merged on torch tensors."""
    from hm3.export import RawTensor
    from hm3.merge.mergekit_run import merged_arrays, merged_tensors, without_torch

    folders = stored_as(dtype, [tiny_llama.base, *tiny_llama.finetunes], tmp_path)
    _, plan = mergekit_plan(method, folders, tmp_path)
    assert without_torch(plan)
    kind = getattr(torch, dtype)
    for (name, raw), (other, tensor) in zip(
        merged_arrays(plan, workers=2), merged_tensors(plan), strict=True
    ):
        assert name == other and isinstance(raw, RawTensor) and raw.dtype == dtype
        values = torch.from_numpy(raw.data.view(np.int16) if dtype == "bfloat16" else raw.data)
        assert torch.equal(values.view(kind).reshape(raw.shape), tensor), name


def test_an_overflowing_merge_without_torch_falls_back_and_writes_the_same_checkpoint(
    tiny_llama, tmp_path
) -> None:
    from safetensors.torch import load_file

    from hm3.merge.mergekit_run import merged_tensors, run_mergekit_config

    name = "model.layers.0.mlp.up_proj.weight"

    def overflow(index: int, state: dict) -> None:  # base -3e38, first fine-tune +3e38: the delta is +inf
        if index in (0, 1):
            state[name][0, 0] = -3e38 if index == 0 else 3e38

    folders = stored_as("bfloat16", [tiny_llama.base, *tiny_llama.finetunes], tmp_path, overflow)
    config, plan = mergekit_plan("ties", folders, tmp_path)
    out = run_mergekit_config(config, tmp_path / "out", show_progress=False)
    written = load_file(out / "model.safetensors")
    expected = dict(merged_tensors(plan))
    assert all(torch.equal(written[key], tensor) for key, tensor in expected.items())
