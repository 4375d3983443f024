"""The model pool: families, layer/shared tensor split, vocabulary rule, lazy reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hm3.arch import FAMILIES, detect_family
from hm3.checkpoint import Checkpoint
from hm3.errors import ModelError, UserError
from hm3.pool import BASE, ModelPool
from tests.fixtures_models import build_tiny_model
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401


def _pool(tiny) -> ModelPool:
    return ModelPool(Checkpoint(tiny.base, "base"), [Checkpoint(f) for f in tiny.finetunes])


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "clip_vision"])
def test_pool_splits_layer_and_shared_tensors(tiny_pools, family) -> None:
    pool = _pool(tiny_pools[family])
    assert pool.backbone.family == family and pool.num_layers == 2
    layer0, layer1, shared = (
        pool.layer_tensor_names(0),
        pool.layer_tensor_names(1),
        pool.shared_tensor_names(),
    )
    assert layer0 and len(layer0) == len(layer1)
    assert sorted(layer0 + layer1 + shared) == sorted(pool.tensor_names)
    renamed = [pool.backbone.layer_tensor_name(n, 1) for n in layer0]
    assert renamed == layer1


def test_layer_of_handles_full_clip_prefix() -> None:
    backbone = next(s for s in FAMILIES if s.family == "clip_vision")
    assert backbone.layer_of("vision_model.encoder.layers.11.mlp.fc1.weight") == 11
    assert backbone.layer_of("encoder.layers.3.self_attn.q_proj.bias") == 3
    assert backbone.layer_tensor_name("vision_model.encoder.layers.11.mlp.fc1.weight", 2) == (
        "vision_model.encoder.layers.2.mlp.fc1.weight"
    )
    assert not backbone.belongs("text_model.encoder.layers.0.mlp.fc1.weight")


def test_unsupported_model_type() -> None:
    with pytest.raises(UserError, match="model_type 'gpt2' is not supported"):
        detect_family({"model_type": "gpt2"})


def test_tensors_are_read_lazily_and_match_the_file(tiny_llama) -> None:
    pool = _pool(tiny_llama)
    assert not pool.models[0]._handles  # nothing opened to build and check the pool
    from safetensors.torch import load_file

    expected = load_file(tiny_llama.finetunes[0] / "model.safetensors")
    name = pool.layer_tensor_names(1)[0]
    assert torch.equal(pool.tensor(0, name), expected[name])
    assert pool.state_dict(0) is pool.state_dict(0)  # cached whole models for the search


def test_vocabulary_rule_drops_and_borrows_rows(tiny_llama, tmp_path) -> None:
    bigger = build_tiny_model("llama", tmp_path / "bigger", seed=7, vocab=72)
    base = Checkpoint(tiny_llama.base, "base")
    pool = ModelPool(base, [Checkpoint(tiny_llama.finetunes[0], "a"), Checkpoint(bigger, "big")])
    embed = "model.embed_tokens.weight"
    assert pool.vocab_size == 64 and pool.vocab_mismatches == {"big": 72}
    assert torch.equal(pool.tensor(1, embed), pool.models[1].load(embed)[:64])  # extra rows dropped

    wide = ModelPool(
        base, [Checkpoint(tiny_llama.finetunes[0], "a"), Checkpoint(bigger, "big")], tokenizer_source="big"
    )
    assert wide.vocab_size == 72
    grown = wide.tensor(0, embed)  # 64 own rows, 8 borrowed from the tokenizer source
    assert grown.shape[0] == 72
    assert torch.equal(grown[:64], wide.models[0].load(embed))
    assert torch.equal(grown[64:], wide.models[1].load(embed)[64:])
    assert wide.tensor(BASE, embed).shape[0] == 72


def _tied_copy(source, folder, scramble_head: bool):
    """``source`` saved again with ``tie_word_embeddings: true`` in its config, its stored head kept (or replaced
    by noise): transformers runs such a model with its embeddings as its head, whatever the file stores."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    tensors = load_file(str(folder / "model.safetensors"))
    if scramble_head:
        tensors["lm_head.weight"] = torch.randn_like(tensors["lm_head.weight"])
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_a_tied_model_runs_its_embeddings_as_its_head_as_lm_eval_does(tiny_llama, tmp_path) -> None:
    """A specialist whose config ties its head while the base's does not: its head in merges and as itself is
    its embeddings, as lm-eval runs it (the stored head is ignored), so its reference score is lm-eval's."""
    import transformers

    from hm3.routing.builder import build_routed_model
    from hm3.routing.path import InferencePath
    from hm3.routing.pool import RoutingPool

    tied = _tied_copy(tiny_llama.finetunes[1], tmp_path / "tied", scramble_head=True)
    pool = ModelPool(
        Checkpoint(tiny_llama.base, "base"), [Checkpoint(tiny_llama.finetunes[0], "a"), Checkpoint(tied, "t")]
    )
    assert torch.equal(pool.tensor(1, "lm_head.weight"), pool.tensor(1, "model.embed_tokens.weight"))
    assert "lm_head.weight" in pool.tensor_names
    routing = RoutingPool.from_model_pool(pool, pool.state_dict(BASE))
    as_itself = build_routed_model(
        routing, InferencePath.identity(1, pool.num_layers), shared_source=1, own_config=pool.own_config(1)
    )
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tied).eval()
    loaded.tie_weights()  # what lm-eval runs: its HFLM ties after loading (bare from_pretrained keeps the head)
    tokens = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(as_itself(tokens).logits, loaded(tokens).logits, atol=1e-6)


def test_a_tied_pool_builds_every_merge_tied_and_refuses_a_model_with_its_own_head(
    tiny_llama, tmp_path
) -> None:
    """A base whose config ties: the head is not a tensor of the pool (a stored copy is ignored), merges are built
    tied; a specialist with a head of its own has nowhere to go and is refused in one line."""
    base = _tied_copy(tiny_llama.base, tmp_path / "base", scramble_head=True)
    tied = [
        _tied_copy(f, tmp_path / f"t{i}", scramble_head=False) for i, f in enumerate(tiny_llama.finetunes[:2])
    ]
    pool = ModelPool(Checkpoint(base, "base"), [Checkpoint(t, t.name) for t in tied])
    assert "lm_head.weight" not in pool.tensor_names
    with pytest.raises(UserError) as refused:
        ModelPool(
            Checkpoint(base, "base"), [Checkpoint(tied[0], "t0"), Checkpoint(tiny_llama.finetunes[2], "own")]
        )
    text = str(refused.value)
    assert "own" in text and "tie_word_embeddings false" in text and "\n" not in text


def _zoo_model_copy(zoo, name, folder):
    import shutil

    return Path(shutil.copytree(zoo / name, folder))


def test_a_model_whose_tokenizer_gives_an_id_to_another_token_is_refused(lm_zoo_micro, tmp_path) -> None:  # noqa: F811
    """Rows are merged by id: a specialist whose tokenizer swaps two tokens' ids would be merged row by row
    with other tokens' rows (and scored with the base's tokenizer as its reference) — refused in one line."""
    import json

    swapped = _zoo_model_copy(lm_zoo_micro, "sorting", tmp_path / "swapped")
    data = json.loads((swapped / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["1"], vocab["2"] = vocab["2"], vocab["1"]
    (swapped / "tokenizer.json").write_text(json.dumps(data))
    models = [Checkpoint(lm_zoo_micro / "addition", "addition"), Checkpoint(swapped, "sorting")]
    with pytest.raises(ModelError) as refused:
        ModelPool(Checkpoint(lm_zoo_micro / "base", "base"), models)
    assert refused.value.model == "sorting"
    assert "its tokenizer gives 2 of the merged vocabulary's ids to other tokens" in refused.value.detail
    assert "\n" not in refused.value.detail
    same = [
        Checkpoint(lm_zoo_micro / "addition", "addition"),
        Checkpoint(lm_zoo_micro / "sorting", "sorting"),
    ]
    ModelPool(Checkpoint(lm_zoo_micro / "base", "base"), same)  # the zoo's own tokenizers agree


def test_a_config_whose_vocab_size_contradicts_the_embeddings_is_refused(lm_zoo_micro, tmp_path) -> None:  # noqa: F811
    """transformers refuses such a model; the pool took the rows and scored it as no one can run it."""
    import json

    edited = _zoo_model_copy(lm_zoo_micro, "sorting", tmp_path / "edited")
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 41}))
    with pytest.raises(ModelError) as refused:
        ModelPool(Checkpoint(lm_zoo_micro / "base", "base"), [Checkpoint(edited, "sorting")])
    assert f"says vocab_size {config['vocab_size'] + 41} but its model.embed_tokens.weight has" in str(
        refused.value.detail
    )
