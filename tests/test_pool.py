"""The model pool: families, layer/shared tensor split, vocabulary rule, lazy reads."""

from __future__ import annotations

import pytest
import torch

from hm3.arch import FAMILIES, detect_family
from hm3.checkpoint import Checkpoint
from hm3.errors import UserError
from hm3.pool import BASE, ModelPool
from tests.fixtures_models import build_tiny_model


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
