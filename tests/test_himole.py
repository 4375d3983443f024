"""HiMoLE: gating math, the mixture on llama/qwen2 (padding, cached generation), stage 1, parameter matching,
save/load, the CLI end to end on the micro zoo, and one-line errors for bad recipe sections."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from hm3.himole.experts import causal_mean_pool, diversity_loss, gating_weights, load_balancing_loss
from tests.fixtures_models import hm3_in_process, run_hm3, write_recipe
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Models this small run fastest on one thread (two threads on a busy machine spin-wait); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- gating math ---------------------------------------------------------------------------------------------


def test_gating_keeps_top2_of_sentence_times_token_scores_renormalised() -> None:
    torch.manual_seed(0)
    token, sentence = torch.randn(7, 6), torch.randn(7, 3)  # N = 3 groups, M = 2 experts each
    weights, experts, probabilities = gating_weights(token, sentence, experts_per_group=2, top_k=2)
    expected = torch.softmax(token * sentence.repeat_interleave(2, dim=-1), dim=-1)
    assert torch.allclose(probabilities, expected)
    assert torch.allclose(weights.sum(-1), torch.ones(7))
    for row in range(7):
        best = set(expected[row].argsort(descending=True)[:2].tolist())
        assert set(experts[row].tolist()) == best
        kept = expected[row, experts[row]]
        assert torch.allclose(weights[row], kept / kept.sum())


def test_gating_sentence_scores_are_shared_within_a_group() -> None:
    token = torch.ones(1, 6)
    sentence = torch.tensor([[0.0, 5.0, 1.0]])
    _, experts, probabilities = gating_weights(token, sentence, experts_per_group=2, top_k=2)
    assert sorted(experts[0].tolist()) == [2, 3]  # both experts of group 1
    assert torch.allclose(probabilities[0, 2], probabilities[0, 3])


def test_gating_token_only_ignores_groups() -> None:
    token = torch.tensor([[0.0, 3.0, 2.0, -1.0]])
    weights, experts, _ = gating_weights(token, None, experts_per_group=4, top_k=2)
    assert experts[0].tolist() == [1, 2]
    assert torch.allclose(weights[0], torch.softmax(torch.tensor([3.0, 2.0]), 0))


def test_causal_mean_pool_masks_padding_and_continues() -> None:
    x = torch.arange(1, 7, dtype=torch.float32).reshape(1, 6, 1)  # states 1..6
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])  # two left pads
    pooled, total, count = causal_mean_pool(x, mask)
    assert pooled[0, :2, 0].tolist() == [0.0, 0.0]
    assert torch.allclose(pooled[0, 2:, 0], torch.tensor([3.0, 3.5, 4.0, 4.5]))
    nxt, _, _ = causal_mean_pool(torch.tensor([[[7.0]]]), torch.ones(1, 1), total, count)
    assert torch.allclose(nxt[0, 0, 0], torch.tensor((3 + 4 + 5 + 6 + 7) / 5))


def test_auxiliary_losses() -> None:
    uniform = torch.full((8, 4), 0.25)
    balanced = torch.tensor([[0, 1], [2, 3]] * 4)
    real = torch.ones(8, dtype=torch.bool)
    assert load_balancing_loss(uniform, balanced, real).item() == pytest.approx(1.0)
    skewed = torch.tensor([[0, 1]] * 8)
    peaked = torch.tensor([[0.5, 0.5, 0.0, 0.0]] * 8)
    assert load_balancing_loss(peaked, skewed, real).item() == pytest.approx(2.0)
    same = torch.ones(2, 5, 3)
    assert diversity_loss(same, torch.ones(5, dtype=torch.bool)).item() == pytest.approx(1.0)
    opposite = torch.stack([torch.ones(5, 3), -torch.ones(5, 3)])
    assert diversity_loss(opposite, torch.ones(5, dtype=torch.bool)).item() == pytest.approx(-1.0)


# -- the mixture on real model classes ----------------------------------------------------------------------


def _tiny_mixture(tiny_pools, family: str, variant: str = "himole", seed: int = 0):
    from transformers import AutoModelForCausalLM

    from hm3.himole.model import AdapterShape, attach_mixture

    model = AutoModelForCausalLM.from_pretrained(tiny_pools[family].base)
    reference = AutoModelForCausalLM.from_pretrained(tiny_pools[family].base).eval()
    shape = (
        AdapterShape(variant, 3, 2, 4, 8.0, 0.0, 2)
        if variant != "lora"
        else AdapterShape("lora", 1, 1, 4, 8.0, 0.0, 1)
    )
    attach_mixture(model, shape, seed=seed)
    return model.eval(), reference


class CharTokenizer:
    """One token per character (enough for the tiny models' 64-token vocabularies)."""

    pad_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[1 + (ord(c) % 60) for c in text] for text in texts]}


def _save_tiny(folder: Path, model, shape, base: Path, centroids=None) -> None:
    from hm3.himole.storage import save_adapter

    manifest = {"variant": shape.variant, "adapter": shape.to_json(), "base_model": str(base)}
    save_adapter(folder, model, manifest, centroids)


def _randomise_experts(model, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("_B"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fresh_mixture_is_the_base_model_and_padding_is_masked(tiny_pools, family) -> None:
    model, reference = _tiny_mixture(tiny_pools, family)
    ids = torch.tensor([[5, 9, 3, 7, 11], [0, 0, 4, 8, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        assert torch.allclose(
            model(input_ids=ids, attention_mask=mask).logits,
            reference(input_ids=ids, attention_mask=mask).logits,
            atol=1e-5,
        )
        _randomise_experts(model)
        changed = model(input_ids=ids, attention_mask=mask).logits
        assert not torch.allclose(changed, reference(input_ids=ids, attention_mask=mask).logits, atol=1e-3)
        alone = model(input_ids=ids[1:, 2:], attention_mask=mask[1:, 2:]).logits
    # the left-padded row is gated exactly as the same sentence without padding
    assert torch.allclose(changed[1, 2:], alone[0], atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_cached_generation_matches_full_forward(tiny_pools, family) -> None:
    model, _ = _tiny_mixture(tiny_pools, family)
    _randomise_experts(model)
    ids = torch.tensor([[5, 9, 3, 7], [0, 4, 8, 2]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=6,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
        sequences = out.sequences
        full_mask = torch.cat([mask, torch.ones(2, 6, dtype=torch.long)], dim=1)
        full = model(input_ids=sequences, attention_mask=full_mask).logits
    assert sequences.shape == (2, 10)
    for step, logits in enumerate(out.logits):
        assert torch.allclose(logits, full[:, 3 + step], atol=1e-4), step


def test_gating_weights_sum_to_one_over_the_kept_experts(tiny_pools) -> None:
    model, _ = _tiny_mixture(tiny_pools, "llama")
    model.himole_context.record_gating = True
    from hm3.himole.model import mixture_blocks

    with torch.no_grad():
        model(input_ids=torch.tensor([[3, 4, 5, 6]]), attention_mask=torch.ones(1, 4, dtype=torch.long))
    for block in mixture_blocks(model):
        gating = block.last_gating
        assert gating["experts"].shape == (4, 2)
        assert torch.allclose(gating["weights"].sum(-1), torch.ones(4))
        assert (gating["experts"][:, 0] != gating["experts"][:, 1]).all()


@pytest.mark.parametrize("variant", ["himole", "hydra-lora"])
def test_a_block_is_the_gated_sum_of_its_experts_ffns_in_value_gradient_and_group_outputs(
    tiny_pools, variant
) -> None:
    """The batched dispatch against the definition, expert by expert: o = FFN(h) + Σ_i G_i (FFN_i(h) − FFN(h))."""
    from hm3.himole.model import mixture_blocks

    model, _ = _tiny_mixture(tiny_pools, "llama", variant)
    _randomise_experts(model)
    model.train()
    model.himole_context.record_gating = True
    block = mixture_blocks(model)[1]
    x = torch.randn(2, 5, block.base.gate_proj.in_features, generator=torch.Generator().manual_seed(3))
    model.himole_context.begin((torch.ones(2, 5, dtype=torch.long),), {})
    out = block(x).reshape(10, -1)
    chosen, weights = block.last_gating["experts"], block.last_gating["weights"]
    assert len(set(chosen.flatten().tolist())) > 2  # the tokens do not all keep the same experts

    flat = x.reshape(10, -1)
    gate_out, up_out = block.base.gate_proj(flat), block.base.up_proj(flat)
    base_out = block.base.down_proj(block.base.act_fn(gate_out) * up_out)
    expected, groups = [], torch.zeros(block.groups, 10, flat.shape[1])
    for token in range(10):
        row = base_out[token]
        for slot in range(chosen.shape[1]):
            index, keep = int(chosen[token, slot]), slice(token, token + 1)
            delta = block.expert_delta(index, flat[keep], gate_out[keep], up_out[keep], base_out[keep])[0]
            row = row + weights[token, slot] * delta
            groups[index // block.experts_per_group, token] += (weights[token, slot] * delta).detach()
        expected.append(row)
    expected = torch.stack(expected)
    assert torch.allclose(out, expected, atol=1e-5)
    if block.groups > 1:
        reference = diversity_loss(groups, torch.ones(10, dtype=torch.bool))
        assert block.last_diversity.item() == pytest.approx(reference.item(), abs=1e-5)

    experts = [p for n, p in block.named_parameters() if n.startswith("experts.")]
    got = torch.autograd.grad(out.square().sum(), experts, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(expected.square().sum(), experts, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None or torch.count_nonzero(g) == 0
        else:
            assert torch.allclose(g, w, atol=1e-4, rtol=1e-4)


def test_lora_variant_matches_the_trainable_parameters(tiny_pools) -> None:
    from transformers import AutoConfig

    from hm3.himole.config import HiMoLEConfig
    from hm3.himole.model import trainable_parameter_count
    from hm3.himole.pipeline import adapter_shape

    config = AutoConfig.from_pretrained(tiny_pools["llama"].base)
    section = HiMoLEConfig(train_data=[{"path": "/x.jsonl"}], clusters=3, experts_per_group=4, rank=8)
    counts = {}
    for variant in ("himole", "lora", "moe-lora"):
        from transformers import AutoModelForCausalLM

        from hm3.himole.model import attach_mixture

        model = AutoModelForCausalLM.from_pretrained(tiny_pools["llama"].base)
        shape = adapter_shape(section, variant, config)
        attach_mixture(model, shape)
        counts[variant] = trainable_parameter_count(model)
        assert all(
            not p.requires_grad
            for n, p in model.named_parameters()
            if ".experts." not in n and "_gate." not in n
        )
    per_rank = 2 * 3 * (config.hidden_size + config.intermediate_size)  # one rank step, in every block
    assert abs(counts["lora"] - counts["himole"]) <= per_rank / 2
    assert counts["moe-lora"] < counts["himole"]  # no sentence gate


def _randomised_mixture(tiny_pools):
    """A tiny qwen2 mixture whose experts and gates are all non-trivial (a round trip has something to keep)."""
    model, _ = _tiny_mixture(tiny_pools, "qwen2")
    _randomise_experts(model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "_gate." in name:
                parameter.add_(torch.randn_like(parameter))
    return model


def _assert_same_logits(model, loaded) -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5], [0, 6, 7, 8, 9]])
    mask = (ids != 0).long()
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids, attention_mask=mask).logits,
            loaded(input_ids=ids, attention_mask=mask).logits,
        )


def test_save_load_round_trip_gives_identical_logits(tiny_pools, tmp_path) -> None:
    from hm3.himole.model import AdapterShape
    from hm3.himole.storage import load_adapter, load_centroids

    model = _randomised_mixture(tiny_pools)
    centroids = torch.randn(3, 5).numpy()
    shape = AdapterShape("himole", 3, 2, 4, 8.0, 0.0, 2)
    folder = tmp_path / "adapter"
    _save_tiny(folder, model, shape, tiny_pools["qwen2"].base, centroids)
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter.safetensors",
        "centroids.safetensors",
        "himole.json",
    ]
    assert not list(tmp_path.glob(".adapter*"))  # no staging left behind
    loaded, _, manifest = load_adapter(folder)
    _assert_same_logits(model, loaded)
    assert manifest["variant"] == "himole"
    assert (load_centroids(folder) == centroids).all()


def test_an_adapter_saved_with_the_old_router_names_still_loads(tiny_pools, tmp_path) -> None:
    """Format 1 named the gates ``token_router`` / ``sentence_router``; such folders load as they are."""
    from safetensors.torch import load_file, save_file

    from hm3.himole.model import AdapterShape
    from hm3.himole.storage import FORMAT, UserError, load_adapter, read_manifest, save_adapter

    model = _randomised_mixture(tiny_pools)
    shape = AdapterShape("himole", 3, 2, 4, 8.0, 0.0, 2)
    folder = tmp_path / "adapter"
    base = str(tiny_pools["qwen2"].base)
    save_adapter(folder, model, {"variant": "himole", "adapter": shape.to_json(), "base_model": base})
    manifest = json.loads((folder / "himole.json").read_text())
    assert manifest["format"] == FORMAT == 2
    weights = folder / "adapter.safetensors"
    old = {name.replace("_gate.", "_router."): t for name, t in load_file(str(weights)).items()}
    assert sum(".token_router." in n for n in old) == sum(".sentence_router." in n for n in old) > 0
    save_file(old, str(weights), metadata={"format": "pt"})
    (folder / "himole.json").write_text(json.dumps({**manifest, "format": 1}))
    loaded, _, _ = load_adapter(folder)
    _assert_same_logits(model, loaded)
    (folder / "himole.json").write_text(json.dumps({**manifest, "format": 3}))
    with pytest.raises(UserError, match="adapter format 3, this hm3 reads 1 or 2"):
        read_manifest(folder)


def test_stage1_trains_one_distinct_adapter_per_cluster_and_copies_it(tiny_pools) -> None:
    from hm3.himole.data import Pair
    from hm3.himole.model import mixture_blocks
    from hm3.himole.training import (
        PhaseSettings,
        copy_into_group,
        enable_grads,
        expert_parameters,
        force_expert,
        train_phase,
    )

    model, _ = _tiny_mixture(tiny_pools, "llama")
    data = {
        0: [Pair("ab>", "ba", "r")] * 4,
        1: [Pair("12+3=", "15", "a")] * 4,
        2: [Pair("321:", "123", "s")] * 4,
    }
    settings = PhaseSettings(lr=1e-2, steps=4, batch_size=2, eval_every=2, patience=5)
    for group in range(3):
        force_expert(model, group * 2)
        enable_grads(expert_parameters(model, group * 2))
        result = train_phase(
            f"c{group}",
            model,
            CharTokenizer(),
            expert_parameters(model, group * 2),
            data[group],
            data[group],
            settings,
        )
        assert result.best_validation_loss < result.history[0][1]
        copy_into_group(model, group, 2)
    force_expert(model, None)
    block = mixture_blocks(model)[0]
    firsts = [torch.cat([p.flatten() for p in block.experts[g * 2].parameters()]) for g in range(3)]
    for g in range(3):
        twin = torch.cat([p.flatten() for p in block.experts[g * 2 + 1].parameters()])
        assert torch.equal(firsts[g], twin)
        assert firsts[g][-10:].abs().sum() > 0  # B moved from zero
    assert not torch.allclose(firsts[0], firsts[1]) and not torch.allclose(firsts[1], firsts[2])


# -- recipes and the CLI ------------------------------------------------------------------------------------


def _micro_recipe(folder: Path, zoo: Path, himole_extra: str = "", objectives: str | None = None) -> Path:
    objectives = objectives or "".join(
        f"  - {{name: {n}, task: {zoo}/tasks/toy_{n}.yaml, batch_size: 32}}\n"
        for n in ("reversal", "sorting", "reversal_ood", "sorting_ood")
    )
    return write_recipe(
        folder,
        f"base_model: {zoo}/base\n"
        f"objectives:\n{objectives}"
        "device: cpu\n"
        "himole:\n"
        "  train_data:\n"
        f"    - {{zoo: {zoo}, task: reversal, count: 32}}\n"
        f"    - {{zoo: {zoo}, task: sorting, count: 32}}\n"
        "  ood_objectives: [reversal_ood, sorting_ood]\n"
        "  clusters: 2\n"
        "  experts_per_group: 2\n"
        "  validation_fraction: 0.25\n"
        "  stage1: {lr: 3.0e-3, steps: 4}\n"
        "  stage2: {lr: 1.0e-3, steps: 4}\n"
        "  eval_every: 2\n"
        "  batch_size: 8\n" + himole_extra,
    )


def _hm3(*args) -> tuple[int, str, str]:
    """``hm3 ARGS`` in this process (:func:`tests.fixtures_models.hm3_in_process`): exit code, stdout, stderr."""
    done = hm3_in_process(*args)
    return done.returncode, done.stdout, done.stderr


def test_cli_train_and_eval_on_the_micro_zoo(lm_zoo_micro, tmp_path) -> None:  # noqa: F811
    from hm3.validation import validate_recipe_file

    recipe = _micro_recipe(tmp_path, lm_zoo_micro)
    assert validate_recipe_file(recipe).family == "llama"
    out = tmp_path / "adapter"
    code, stdout, stderr = _hm3("himole", "train", "--recipe", recipe, "--out", out)
    assert code == 0, stderr
    assert f"saved {out}: himole" in stdout
    manifest = json.loads((out / "himole.json").read_text())
    assert manifest["clusters"]["purity"] > 0.9  # MiniLM + K-means separate the two formats
    assert [p["name"] for p in manifest["phases"]] == ["stage 1, cluster 0", "stage 1, cluster 1", "stage 2"]
    assert (out / "centroids.safetensors").is_file()
    scores = tmp_path / "scores.json"
    code, stdout, stderr = _hm3(
        "himole", "eval", "--recipe", recipe, "--adapter", out, "--limit", "8", "--json", scores
    )
    assert code == 0, stderr
    report = json.loads(scores.read_text())
    assert list(report["scores"]) == ["reversal", "sorting", "reversal_ood", "sorting_ood"]
    assert report["trainable_parameters"] == manifest["trainable_parameters"] > 0
    assert all(0 < loss < 20 for loss in report["losses"].values())
    assert "OOD mean" in stdout
    assert 0.0 <= report["max_violation"] <= 4 / 2 - 1 and "MaxVio" in stdout  # 4 experts, top 2
    assert manifest["steps"] == sum(p["steps"] for p in manifest["phases"])
    assert manifest["converged"] == all(p["stopped_by"] == "patience" for p in manifest["phases"])


def test_the_recipe_dtype_is_honoured_and_threads_are_fixed(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
    monkeypatch,
) -> None:
    """``dtype: bfloat16`` trains and evaluates in bfloat16 (it was ignored: float32 always), the adapter is
    saved in it and the manifest says so; the CPU thread count is the fixed one, whatever the load average."""
    from safetensors.torch import load_file

    from hm3.evaluate.threads import SCORING_THREADS
    from hm3.himole import pipeline

    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine: no longer consulted
    seen = []
    schedule = pipeline.Schedule

    def recording(model, *args, **kwargs):
        seen.append((next(model.parameters()).dtype, torch.get_num_threads()))
        return schedule(model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "Schedule", recording)
    torch.set_num_threads(2)
    recipe = _micro_recipe(tmp_path, lm_zoo_micro)
    recipe.write_text(recipe.read_text().replace("device: cpu\n", "device: cpu\ndtype: bfloat16\n"))
    out = tmp_path / "adapter"
    code, _, stderr = _hm3("himole", "train", "--recipe", recipe, "--out", out, "--variant", "lora")
    assert code == 0, stderr
    assert seen == [(torch.bfloat16, SCORING_THREADS)]
    assert json.loads((out / "himole.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(str(out / "adapter.safetensors")).values()} == {torch.bfloat16}
    code, _, stderr = _hm3("himole", "eval", "--recipe", recipe, "--adapter", out, "--limit", "4")
    assert code == 0, stderr


def test_cli_lora_variant_and_errors(lm_zoo_micro, tmp_path) -> None:  # noqa: F811
    recipe = _micro_recipe(tmp_path, lm_zoo_micro)
    out = tmp_path / "lora"
    code, _, stderr = _hm3("himole", "train", "--recipe", recipe, "--out", out, "--variant", "lora")
    assert code == 0, stderr
    manifest = json.loads((out / "himole.json").read_text())
    assert manifest["adapter"]["variant"] == "lora" and manifest["clusters"] is None
    assert manifest["phases"][0]["steps"] <= 2 * 4 + 4
    hydra = tmp_path / "hydra"
    code, _, stderr = _hm3("himole", "train", "--recipe", recipe, "--out", hydra, "--variant", "hydra-lora")
    assert code == 0, stderr
    manifest = json.loads((hydra / "himole.json").read_text())
    assert manifest["adapter"]["variant"] == "hydra-lora" and [p["name"] for p in manifest["phases"]] == [
        "hydra-lora"
    ]
    scores = tmp_path / "hydra.json"
    code, _, stderr = _hm3(
        "himole", "eval", "--recipe", recipe, "--adapter", hydra, "--limit", "4", "--json", scores
    )
    assert code == 0, stderr
    assert json.loads(scores.read_text())["max_violation"] is not None
    code, _, stderr = _hm3(
        "himole",
        "train",
        "--recipe",
        recipe,
        "--out",
        tmp_path / "x",
        "--variant",
        "lora",
        "--no-two-stage",
    )
    assert code == 2 and stderr.strip().count("\n") == 0 and "--no-two-stage" in stderr
    code, _, stderr = _hm3("himole", "eval", "--recipe", recipe, "--adapter", tmp_path / "nowhere")
    assert code == 2 and "no HiMoLE adapter" in stderr
    assert not (tmp_path / "x").exists()
    subprocess = run_hm3("himole", "train", "--recipe", tmp_path / "missing.yaml")  # the real entry point
    assert (
        subprocess.returncode == 2
        and "file not found" in subprocess.stderr
        and "Traceback" not in subprocess.stderr
    )


def _not_reached(*args, **kwargs):
    raise AssertionError("a refused command reached the expensive work")


def test_eval_json_never_lands_on_an_input_and_is_checked_before_scoring(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
    monkeypatch,
) -> None:
    """``--json`` over the adapter's own manifest replaced it with the scores (the README's ``--json
    himole.json`` from inside the adapter folder did the same); a folder failed only after scoring, naming a
    temporary file and leaving it behind; a link was written through."""
    from hm3.himole import evaluation

    monkeypatch.setattr(evaluation, "evaluate_adapter", _not_reached)
    recipe = _micro_recipe(tmp_path, lm_zoo_micro)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    manifest = adapter / "himole.json"
    manifest.write_text('{"format": "himole"}\n')
    precious = tmp_path / "precious.json"
    precious.write_text("keep")
    (tmp_path / "link.json").symlink_to(precious)
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "file").write_text("")
    cases = [
        (manifest, f"lies inside the adapter folder {adapter}"),
        (adapter, f"is the adapter folder {adapter}"),
        (recipe, f"is the recipe file {recipe}"),
        (lm_zoo_micro / "tasks" / "toy_sorting.yaml", "is the task file"),
        (lm_zoo_micro / "data" / "scores.json", f"lies inside the training data {lm_zoo_micro}"),
        (tmp_path / "link.json", "is a symbolic link"),
        (tmp_path / "dir.json", f"--json {tmp_path / 'dir.json'}: is a folder; name a .json file"),
        (tmp_path / "file" / "x" / "scores.json", f"{tmp_path / 'file'} is not a folder"),
    ]
    for target, expected in cases:
        code, _, stderr = _hm3("himole", "eval", "--recipe", recipe, "--adapter", adapter, "--json", target)
        assert code == 2 and stderr.count("\n") == 1 and expected in stderr, (target, stderr)
    inside = hm3_in_process(
        "himole", "eval", "--recipe", recipe, "--adapter", ".", "--json", "himole.json", cwd=adapter
    )
    assert inside.returncode == 2 and "lies inside the adapter folder ." in inside.stderr, inside.stderr
    assert manifest.read_text() == '{"format": "himole"}\n' and precious.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter",
        "dir.json",
        "file",
        "link.json",
        "precious.json",
        "recipe.yaml",
    ]


def test_a_failed_json_write_names_the_file_and_leaves_no_temporary(tmp_path) -> None:
    from cli.himole import _write_json
    from hm3.errors import UserError

    target = tmp_path / "scores.json"
    (tmp_path / f".scores.json.tmp-{os.getpid()}").symlink_to(tmp_path / "elsewhere")  # a leftover, or a trap
    _write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and not (tmp_path / "elsewhere").exists()
    target.unlink()
    target.mkdir()  # became a folder after the check
    with pytest.raises(UserError, match=f"cannot write --json {target}: Is a directory$"):
        _write_json(target, {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]


def test_train_out_inside_the_training_data_or_a_bad_seed_is_refused_before_training(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
    monkeypatch,
) -> None:
    """Only the base model was checked: ``--out ZOO/data/x`` wrote an adapter into the zoo the data came from."""
    from hm3.himole import pipeline

    monkeypatch.setattr(pipeline, "train_himole", _not_reached)
    zoo = tmp_path / "zoo"
    shutil.copytree(lm_zoo_micro, zoo)
    recipe = _micro_recipe(tmp_path, zoo)
    for out, expected in [
        (zoo / "data" / "x", f"lies inside the training data {zoo}"),
        (zoo / "tasks" / "toy_sorting.yaml", "is the task file"),
        (tmp_path, f"contains the recipe file {recipe}"),
    ]:
        code, _, stderr = _hm3("himole", "train", "--recipe", recipe, "--out", out)
        assert code == 2 and stderr.count("\n") == 1 and expected in stderr, (out, stderr)
    for seed in ("-1", str(2**32)):  # K-means' traceback before
        code, _, stderr = _hm3("himole", "train", "--recipe", recipe, "--out", tmp_path / "a", "--seed", seed)
        assert (
            code == 2
            and stderr
            == f"hm3 himole: --seed must be an integer in [0, 2^31) like the recipe's seed, not {seed}\n"
        )
    assert not (zoo / "data" / "x").exists()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("  gates: 3\n", "himole.gates: unknown key"),
        ("  top_k: 9\n", "himole: top_k: 9 is more than the 4 experts"),
        ("  clusters: 0\n", "himole.clusters:"),
        ("  stage1: {lr: -1, steps: 4}\n", "himole.stage1.lr:"),
    ],
)
def test_bad_himole_sections_are_one_line_errors(lm_zoo_micro, tmp_path, extra, field) -> None:  # noqa: F811
    recipe = _micro_recipe(tmp_path, lm_zoo_micro, extra)
    text = recipe.read_text()
    key = extra.split(":")[0].strip()
    recipe.write_text(
        "\n".join(
            line
            for line in text.splitlines()
            if not line.startswith(f"  {key}:") or line == extra.rstrip("\n")
        )
        + "\n"
    )
    result = hm3_in_process("himole", "train", "--recipe", recipe, "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], lines


def test_recipe_cross_checks_and_validate(lm_zoo_micro, tmp_path) -> None:  # noqa: F811
    from hm3.errors import RecipeError
    from hm3.recipe import load_recipe

    recipe = _micro_recipe(tmp_path, lm_zoo_micro)
    recipe.write_text(
        recipe.read_text().replace("ood_objectives: [reversal_ood, sorting_ood]", "ood_objectives: [nope]")
    )
    with pytest.raises(RecipeError, match=r"himole.ood_objectives\[0\]: 'nope' is not an objective"):
        load_recipe(recipe)
    recipe = _micro_recipe(tmp_path, lm_zoo_micro)
    recipe.write_text(
        recipe.read_text().replace(
            f"{{zoo: {lm_zoo_micro}, task: sorting", f"{{zoo: {tmp_path}, task: sorting"
        )
    )
    result = hm3_in_process("validate", recipe)
    assert result.returncode == 2 and "himole.train_data[1].zoo: " in result.stderr
    no_models = write_recipe(
        tmp_path, f"base_model: {lm_zoo_micro}/base\nobjectives: [{{name: o, task: sst2}}]\n", "plain.yaml"
    )
    with pytest.raises(RecipeError, match="models: required"):
        load_recipe(no_models)


def test_toy_recipe_validates_against_the_schema() -> None:
    from hm3.recipe import load_recipe

    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / "himole-toy.yaml")
    assert recipe.models == [] and recipe.himole is not None
    assert set(recipe.himole.ood_objectives) < set(recipe.objective_names)
    assert all(Path(s.zoo).name == "lm-llama-small" for s in recipe.himole.train_data)
    deep = load_recipe(Path(__file__).parent.parent / "recipes" / "himole-toy-deep.yaml")
    assert Path(deep.base_model.path).parent.name == "lm-llama-deep"
    assert all(Path(s.zoo).name == "lm-llama-deep" for s in deep.himole.train_data)
    assert all(Path(o.task).parent.parent.name == "lm-llama-deep" for o in deep.objectives)
    assert deep.himole.patience == 10  # the paper's early stopping


def test_interrupted_save_keeps_the_previous_adapter(tiny_pools, tmp_path, monkeypatch) -> None:
    from hm3.himole import storage
    from hm3.himole.model import AdapterShape

    model, _ = _tiny_mixture(tiny_pools, "llama")
    shape = AdapterShape("himole", 3, 2, 4, 8.0, 0.0, 2)
    folder = tmp_path / "adapter"
    storage.save_adapter(folder, model, {"variant": "first", "adapter": shape.to_json()})

    def interrupted(staging: Path, target: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "move_into_place", interrupted)
    with pytest.raises(KeyboardInterrupt):
        storage.save_adapter(folder, model, {"variant": "second", "adapter": shape.to_json()})
    assert storage.read_manifest(folder)["variant"] == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging folder left
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(storage.UserError, match="not a HiMoLE adapter folder"):
        storage.save_adapter(tmp_path / "other", model, {"variant": "x", "adapter": shape.to_json()})
    (folder / "my-notes.txt").write_text("mine")  # an adapter folder a user put a file into is not replaced
    with pytest.raises(storage.UserError, match="not a HiMoLE adapter folder"):
        storage.save_adapter(folder, model, {"variant": "third", "adapter": shape.to_json()})
    assert (folder / "my-notes.txt").read_text() == "mine"
    with pytest.raises(storage.UserError, match="hm3 never writes over its inputs"):
        storage.check_adapter_target(tmp_path / "other" / "adapter", [("base model", tmp_path / "other")])


def test_an_included_himole_recipe_keeps_its_relative_paths(tmp_path) -> None:
    from hm3.recipe import load_recipe

    (tmp_path / "sub").mkdir()
    write_recipe(
        tmp_path / "sub",
        "base_model: base\nobjectives: [{name: a, task: t.yaml}]\n"
        "himole: {train_data: [{path: data.jsonl}, {zoo: ../zoo, task: addition, count: 5}]}\n",
        "base.yaml",
    )
    recipe = load_recipe(write_recipe(tmp_path, "include: sub/base.yaml\nseed: 3\n"))
    sources = recipe.himole.train_data
    assert sources[0].path == str(tmp_path / "sub" / "data.jsonl")
    assert sources[1].zoo == str(tmp_path / "zoo")


# -- HydraLoRA, load balance, early stopping, the diversity ablation -----------------------------------------


def test_hydra_lora_experts_share_one_a_and_differ_by_their_b_heads(tiny_pools, tmp_path) -> None:
    from transformers import AutoConfig

    from hm3.himole.model import AdapterShape, mixture_blocks, trainable_parameter_count
    from hm3.himole.storage import load_adapter

    model, reference = _tiny_mixture(tiny_pools, "qwen2", "hydra-lora")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():  # fresh B heads: the base model exactly
        assert torch.allclose(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5)
    config = AutoConfig.from_pretrained(tiny_pools["qwen2"].base)
    hidden, intermediate, experts, rank = config.hidden_size, config.intermediate_size, 6, 4
    a_matrices = rank * (2 * hidden + intermediate)  # gate_A, up_A: r × H; down_A: r × I
    b_heads = rank * (2 * intermediate + hidden)
    per_block = a_matrices + experts * b_heads + hidden * experts  # one A, six B heads, the token gate
    assert trainable_parameter_count(model) == config.num_hidden_layers * per_block
    block = mixture_blocks(model)[0]
    for expert in block.experts[1:]:
        assert "gate_A" not in dict(expert.named_parameters())  # only its B heads are its own
        assert expert.down_projection("up") is block.experts[0].up_A
    # every head's gradient reaches the one shared A
    _randomise_experts(model)
    model.train()
    x = torch.randn(3, hidden)
    block.experts[4].update("gate", x).sum().backward()
    assert block.experts[0].gate_A.grad is not None and block.experts[0].gate_A.grad.abs().sum() > 0
    model.eval()
    shape = AdapterShape("hydra-lora", 3, 2, 4, 8.0, 0.0, 2)
    folder = tmp_path / "hydra"
    _save_tiny(folder, model, shape, tiny_pools["qwen2"].base)
    loaded, _, _ = load_adapter(folder)
    _assert_same_logits(model, loaded)


def test_max_violation_is_zero_when_balanced_and_e_minus_one_when_one_expert_takes_all(
    tiny_pools, monkeypatch
) -> None:
    from hm3.himole import evaluation
    from hm3.himole.data import Pair
    from hm3.himole.evaluation import expert_loads, max_violation

    model, _ = _tiny_mixture(tiny_pools, "llama", "moe-lora")
    pairs = [Pair("ab>", "ba", "r"), Pair("12+3=", "15", "a"), Pair("4321:", "1234", "s")]
    loads = expert_loads(model, CharTokenizer(), pairs, "\n")
    tokens = sum(len(p.prompt) + len(p.target) + 1 for p in pairs)  # padding is not counted
    assert len(loads) == len(model.model.layers) and all(sum(load) == 2 * tokens for load in loads)
    assert model.himole_context.record_gating is False  # restored
    monkeypatch.setattr(evaluation, "expert_loads", lambda *args: [[4, 4, 4, 4], [8, 0, 0, 0]])
    assert max_violation(model, CharTokenizer(), pairs, "\n") == pytest.approx((0.0 + 3.0) / 2)
    lora, _ = _tiny_mixture(tiny_pools, "llama", "lora")
    monkeypatch.undo()
    assert max_violation(lora, CharTokenizer(), pairs, "\n") is None  # no gate, no balance


def test_early_stopping_keeps_the_best_state_and_says_what_ended_the_phase(tiny_pools, monkeypatch) -> None:
    from dataclasses import replace

    from hm3.himole import training
    from hm3.himole.data import Pair
    from hm3.himole.training import PhaseSettings, enable_grads, expert_parameters, train_phase

    model, _ = _tiny_mixture(tiny_pools, "llama", "lora")
    parameters = enable_grads(expert_parameters(model))
    losses = iter([5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8])  # the start, then every 2 steps: best at step 4
    kept = {}

    def scripted(model, tokenizer, pairs, suffix, batch_size=64):
        loss = next(losses)
        if loss == 3.0:
            kept["state"] = [p.detach().clone() for p in parameters]
        return loss

    monkeypatch.setattr(training, "validation_loss", scripted)

    data = [Pair("ab>", "ba", "r")] * 4
    settings = PhaseSettings(lr=1e-2, steps=100, batch_size=2, eval_every=2, patience=3)
    result = train_phase("joint", model, CharTokenizer(), parameters, data, data, settings)
    assert (result.best_step, result.best_validation_loss, result.steps) == (4, 3.0, 10)
    assert result.stopped_by == "patience"
    assert all(
        torch.equal(p, k) for p, k in zip(parameters, kept["state"], strict=True)
    )  # the best state back
    losses = iter([5.0, 4.0, 3.0])
    capped = train_phase("joint", model, CharTokenizer(), parameters, data, data, replace(settings, steps=4))
    assert capped.stopped_by == "cap" and capped.steps == 4


def test_the_diversity_loss_ablation_switch_reaches_the_phase_settings(tiny_pools) -> None:
    from rich.console import Console

    from hm3.himole.config import HiMoLEConfig
    from hm3.himole.model import AdapterShape
    from hm3.himole.stages import Schedule

    model, _ = _tiny_mixture(tiny_pools, "llama")
    shape = AdapterShape("himole", 3, 2, 4, 8.0, 0.0, 2)
    section = {"train_data": [{"path": "/x.jsonl"}], "aux_loss_weight": 0.02}
    for beta, expected in ((0.05, 0.05), (0.0, 0.0)):
        config = HiMoLEConfig(**section, diversity_loss_weight=beta)
        schedule = Schedule(model, None, config, shape, 0, Console(quiet=True))
        assert schedule.settings(1e-3, 10, auxiliary=True).diversity_weight == expected
        assert schedule.settings(1e-3, 10, auxiliary=True).aux_weight == 0.02
    moe = Schedule(
        model, None, HiMoLEConfig(**section), AdapterShape("moe-lora", 3, 2, 4, 8.0, 0.0, 2), 0, Console()
    )
    assert moe.settings(1e-3, 10, auxiliary=True).diversity_weight == 0.0  # HiMoLE's loss only


def test_the_warm_up_is_the_recipe_s_fixed_steps_or_five_percent_of_the_cap(tiny_pools, monkeypatch) -> None:
    from rich.console import Console

    from hm3.himole import training
    from hm3.himole.config import HiMoLEConfig
    from hm3.himole.data import Pair
    from hm3.himole.model import AdapterShape
    from hm3.himole.stages import Schedule
    from hm3.himole.training import enable_grads, expert_parameters, train_phase
    from hm3.recipe import load_recipe

    model, _ = _tiny_mixture(tiny_pools, "llama", "lora")
    shape = AdapterShape("lora", 1, 1, 4, 8.0, 0.0, 1)
    section = {"train_data": [{"path": "/x.jsonl"}]}
    default = Schedule(model, None, HiMoLEConfig(**section), shape, 0, Console(quiet=True))
    assert default.settings(1e-3, 600, auxiliary=False).warmup_steps == 30  # 5% of the cap
    assert default.settings(1e-3, 10, auxiliary=False).warmup_steps == 1
    fixed = Schedule(model, None, HiMoLEConfig(**section, warmup_steps=4), shape, 0, Console(quiet=True))
    assert [fixed.settings(1e-3, cap, auxiliary=False).warmup_steps for cap in (600, 10_000)] == [4, 4]

    rates = []
    original = training.torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(training.torch.optim.AdamW, "step", recording)
    monkeypatch.setattr(training, "validation_loss", lambda *args, **kwargs: 1.0)
    parameters = enable_grads(expert_parameters(model))
    data = [Pair("ab>", "ba", "r")] * 4
    settings = fixed.settings(1e-2, 6, auxiliary=False)
    train_phase("joint", model, CharTokenizer(), parameters, data, data, settings)
    assert rates == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])
    deep = Path(__file__).parent.parent / "recipes" / "himole-toy-deep.yaml"
    assert load_recipe(deep).himole.warmup_steps == 150
