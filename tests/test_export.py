"""The checkpoint writer: shards and index, config fixed for a new layer count, tokenizer, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch

from hm3.checkpoint import Checkpoint
from hm3.errors import UserError
from hm3.export import TensorLayout, fix_config, parse_size, write_hf_checkpoint


def test_sizes() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size(123) == 123
    with pytest.raises(UserError, match="not a size"):
        parse_size("five")


def test_streamed_tensors_are_sharded_with_an_index(tmp_path) -> None:
    tensors = {f"model.layers.{i}.w": torch.randn(64, 64, dtype=torch.bfloat16) for i in range(6)}
    config = {"model_type": "llama", "num_hidden_layers": 6}
    out = write_hf_checkpoint(
        iter(tensors.items()), config, tmp_path / "m", tokenizer_from=None, shard_size="20KB"
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3  # two 8 KB tensors per 20 KB shard
    checkpoint = Checkpoint(out)
    assert all(torch.equal(checkpoint.load(n), t) for n, t in tensors.items())
    single = write_hf_checkpoint(tensors, config, tmp_path / "one", tokenizer_from=None)
    assert sorted(p.name for p in single.iterdir()) == [
        ".hm3-output.json",
        "config.json",
        "model.safetensors",
    ]


def test_config_follows_the_new_layer_count() -> None:
    config = {"model_type": "qwen2", "num_hidden_layers": 3, "layer_types": ["a", "b", "c"]}
    assert fix_config(config, 2)["layer_types"] == ["a", "b"]
    assert fix_config(config, 5)["layer_types"] == ["a", "b", "c", "a", "b"]
    assert fix_config(config, 3, layer_origin=[2, 2, 0]) == {**config, "layer_types": ["c", "c", "a"]}
    clip = {"model_type": "clip", "vision_config": {"num_hidden_layers": 12}}
    assert fix_config(clip, 4)["vision_config"]["num_hidden_layers"] == 4
    assert config["layer_types"] == ["a", "b", "c"]  # the input is not modified


def test_routed_qwen2_checkpoint_loads_with_tokenizer_and_card(tiny_pools, tmp_path) -> None:
    import shutil

    import transformers

    source = shutil.copytree(tiny_pools["qwen2"].base, tmp_path / "source")
    (source / "tokenizer_config.json").write_text("{}")
    checkpoint = Checkpoint(source)
    spec_layers = [0, 1, 1]
    tensors = {}
    for name in checkpoint.tensors:
        if ".layers." not in name:
            tensors[name] = checkpoint.load(name)
    for new, old in enumerate(spec_layers):
        prefix = f"model.layers.{old}."
        for name in checkpoint.tensors:
            if name.startswith(prefix):
                tensors[f"model.layers.{new}." + name[len(prefix) :]] = checkpoint.load(name)
    out = write_hf_checkpoint(
        tensors,
        checkpoint.config,
        tmp_path / "routed",
        tokenizer_from=source,
        num_layers=3,
        model_card="# card\n",
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 3 and len(model.config.layer_types) == 3
    assert (out / "tokenizer_config.json").is_file() and (out / "generation_config.json").is_file()
    assert (out / "README.md").read_text() == "# card\n"


def test_interrupted_write_leaves_nothing(tmp_path) -> None:
    def tensors():
        yield "a", torch.zeros(4)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_hf_checkpoint(tensors(), {"model_type": "llama"}, tmp_path / "m", tokenizer_from=None)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_forced(tmp_path, capsys) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(UserError, match="not empty"):
        write_hf_checkpoint({"a": torch.zeros(2)}, {}, out, tokenizer_from=None)
    with pytest.raises(UserError, match="replaces only folders hm3 wrote"):  # not hm3's: never replaced
        write_hf_checkpoint({"a": torch.zeros(2)}, {}, out, tokenizer_from=None, force=True)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    (out / "old.txt").unlink()
    write_hf_checkpoint({"a": torch.zeros(2)}, {}, out, tokenizer_from=None)
    write_hf_checkpoint({"a": torch.ones(2)}, {}, out, tokenizer_from=None, force=True)  # hm3's: replaced
    assert "replacing the model folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".hm3-output.json", "config.json", "model.safetensors"]
    assert torch.equal(Checkpoint(out).load("a"), torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    with pytest.raises(UserError, match="not enough free disk"):
        write_hf_checkpoint(
            {"a": torch.zeros(2)}, {}, tmp_path / "n", tokenizer_from=None, expected_bytes=10**18
        )


def test_known_layout_streams_straight_into_shards(tmp_path) -> None:
    tensors = [(f"t{i}", torch.full((100,), float(i))) for i in range(5)]
    layout = [TensorLayout(name, (100,), "float32") for name, _ in tensors]
    out = write_hf_checkpoint(
        iter(tensors), {}, tmp_path / "m", tokenizer_from=None, shard_size=900, layout=layout
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["t0"] == "model-00001-of-00003.safetensors"
    checkpoint = Checkpoint(out)
    assert all(torch.equal(checkpoint.load(n), t) for n, t in tensors)
    shuffled = write_hf_checkpoint(  # tensors may come in any order: each is written at its offset
        iter(tensors[::-1]), {}, tmp_path / "r", tokenizer_from=None, shard_size=900, layout=layout
    )
    assert all(torch.equal(Checkpoint(shuffled).load(n), t) for n, t in tensors)
    assert (shuffled / "model-00002-of-00003.safetensors").read_bytes() == (
        out / "model-00002-of-00003.safetensors"
    ).read_bytes()
    with pytest.raises(ValueError, match="the tensors ended before t0"):
        write_hf_checkpoint(iter(tensors[1:]), {}, tmp_path / "n", tokenizer_from=None, layout=layout)
    with pytest.raises(ValueError, match="does not follow the layout"):
        write_hf_checkpoint(iter(tensors[:1] * 2), {}, tmp_path / "n", tokenizer_from=None, layout=layout)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "r"]
