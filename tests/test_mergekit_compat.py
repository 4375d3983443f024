"""Compatibility with mergekit: configurations in the shapes of mergekit's own ``examples/*.yml`` and
``tests/test_basic_merges.py``, written for tiny models (absolute paths), run through mergekit-yaml and through
``hm3 merge --mergekit``, and compared tensor by tensor.

mergekit-yaml's command runs every case in one subprocess (``run_mergekit_yaml``), so mergekit is imported
once. Deterministic methods must give equal tensors; DARE and DELLA draw their masks from different
generators, so their kept fractions and rescale statistics are compared. Together the cases use every key of
hm3's parameter table (checked), and the table itself is checked against mergekit's method specs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from hm3.arch import get_family
from hm3.errors import UserError
from hm3.merge.mergekit_parameters import PARAMETERS, TASK_VECTOR
from hm3.merge.mergekit_plan import plan_merge
from hm3.merge.mergekit_run import run_mergekit_config
from hm3.merge.mergekit_schema import load_mergekit_config
from hm3.merge.registry import METHODS
from tests.fixtures_models import TinyPool, build_tiny_model, hm3_in_process
from tests.test_merge_parity import run_mergekit_yaml

pytestmark = pytest.mark.slow

WORDS = ["<unk>", "<s>", "</s>"] + [f"tok{i}" for i in range(3, 128)]


def save_tokenizer(tokens: list[str], folder: Path) -> None:
    """A BPE tokenizer of exactly ``tokens`` (ids in order), as mergekit's own tokenizer tests build one."""
    import tokenizers
    import transformers

    data = {
        "version": "1.0",
        "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []},
        "added_tokens": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        file = os.path.join(scratch, "tokenizer.json")
        tokenizers.Tokenizer.from_str(json.dumps(data)).save(file)
        transformers.LlamaTokenizerFast(tokenizer_file=file).save_pretrained(folder)


@dataclass(frozen=True)
class Models:
    """The test's models: the session's tiny pools, and 3-layer llamas (vocabulary 128) with tokenizers.

    ``renamed`` has the base's tokenizer except ids 126-127; ``wider`` has 130 tokens, the base's and two more.
    """

    pools: dict[str, TinyPool]
    base: Path
    ft_a: Path
    ft_b: Path
    renamed: Path
    wider: Path
    tied_base: Path
    tied_a: Path


def tied_copy(model: Path, folder: Path) -> Path:
    """``model`` as a checkpoint that ties its output head to its embeddings: no ``lm_head.weight`` stored,
    ``tie_word_embeddings: true`` (how many small models ship)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(model, folder)
    weights = load_file(folder / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    return folder


@pytest.fixture(scope="module")
def models(tiny_pools, tmp_path_factory) -> Models:
    root = tmp_path_factory.mktemp("compat_models")
    base = build_tiny_model("llama", root / "base", seed=20, layers=3, vocab=128)
    folders = {"base": base}
    for i, (name, vocab) in enumerate((("ft_a", 128), ("ft_b", 128), ("renamed", 128), ("wider", 130))):
        folders[name] = build_tiny_model("llama", root / name, seed=21 + i, base=base, layers=3, vocab=vocab)
    tokens = {"renamed": WORDS[:126] + ["new_a", "new_b"], "wider": WORDS + ["new_a", "new_b"]}
    for name, folder in folders.items():
        save_tokenizer(tokens.get(name, WORDS), folder)
    tied = {
        "tied_base": tied_copy(base, root / "tied_base"),
        "tied_a": tied_copy(folders["ft_a"], root / "tied_a"),
    }
    return Models(tiny_pools, **folders, **tied)


def entry(model: Path, **parameters) -> dict:
    return {"model": str(model), **({"parameters": parameters} if parameters else {})}


# -- the cases: name -> config over the test's models -----------------------------------------------------


def linear_example(m: Models) -> dict:  # examples/linear.yml
    llama = m.pools["llama"]
    weights = (1.0, 0.3, 0.5)
    return {
        "models": [entry(path, weight=w) for path, w in zip(llama.finetunes, weights, strict=True)],
        "merge_method": "linear",
        "dtype": "float16",
    }


def ties_example(m: Models) -> dict:  # examples/ties.yml: gradients, a filter list, normalize and int8_mask
    return {
        "models": [
            entry(m.ft_a, density=[1, 0.7, 0.1], weight=1.0),
            entry(m.renamed, density=0.5, weight=[0, 0.3, 0.7, 1]),
            entry(m.ft_b, density=0.33, weight=[{"filter": "mlp", "value": 0.5}, {"value": 0}]),
        ],
        "merge_method": "ties",
        "base_model": str(m.base),
        "parameters": {"normalize": True, "int8_mask": True},
        "dtype": "float32",
    }


def bio_merge(m: Models) -> dict:  # examples/bio-merge.yml, on the mistral pool
    mistral = m.pools["mistral"]
    return {
        "models": [entry(path, density=0.5, weight=0.5) for path in mistral.finetunes[:2]],
        "merge_method": "ties",
        "base_model": str(mistral.base),
        "parameters": {"normalize": False, "int8_mask": True},
        "dtype": "float32",
    }


def passthrough_stack(m: Models) -> dict:  # examples/orcamini-platy-44layer.yml
    return {
        "slices": [
            {"sources": [{"model": str(m.ft_a), "layer_range": [0, 2]}]},
            {"sources": [{"model": str(m.ft_b), "layer_range": [1, 3]}]},
        ],
        "merge_method": "passthrough",
        "dtype": "float32",
    }


def passthrough_scale(m: Models) -> dict:  # test_basic_merges: test_passthrough_scale
    scale = [{"filter": "o_proj", "value": 0}, {"value": 1}]
    return {"merge_method": "passthrough", "models": [entry(m.pools["llama"].finetunes[0], scale=scale)]}


def two_model(method: str, pool: TinyPool, dtype: str = "float32", **parameters) -> dict:
    """test_basic_merges' two_model_config: weights 0.6 and 0.4, a third model as the base."""
    config = {
        "merge_method": method,
        "base_model": str(pool.base),
        "models": [entry(pool.finetunes[0], weight=0.6), entry(pool.finetunes[1], weight=0.4)],
        "dtype": dtype,
    }
    return {**config, "parameters": parameters} if parameters else config


def task_arithmetic_slices(m: Models) -> dict:
    """Per-source weights, a slice-level weight, normalize and lambda, and a slice-level base."""
    return {
        "merge_method": "task_arithmetic",
        "slices": [
            {
                "sources": [
                    {"model": str(m.ft_a), "layer_range": [0, 3], "parameters": {"weight": [0.2, 0.9]}},
                    {"model": str(m.ft_b), "layer_range": [0, 3]},
                    {"model": str(m.base), "layer_range": [0, 3]},
                ],
                "base_model": str(m.base),
                "parameters": {"weight": 0.5, "normalize": True, "lambda": [1.5, 0.5]},
            }
        ],
        "parameters": {"lambda": 0.7},
        "dtype": "float32",
    }


def breadcrumbs_gammas(m: Models) -> dict:
    """Per-model gamma (one a filter list), per-model densities, a top-level rescale."""
    return {
        "merge_method": "breadcrumbs",
        "base_model": str(m.base),
        "models": [
            entry(m.ft_a, weight=1.0, density=0.8, gamma=0.05),
            entry(
                m.ft_b,
                weight=0.5,
                density=[0.9, 0.6],
                gamma=[{"filter": "mlp", "value": 0.1}, {"value": 0.02}],
            ),
        ],
        "parameters": {"rescale": True},
        "dtype": "float32",
    }


def breadcrumbs_slices(m: Models) -> dict:
    """gamma on a slice source and at slice level; rescale at slice level."""
    return {
        "merge_method": "breadcrumbs",
        "slices": [
            {
                "sources": [
                    {
                        "model": str(m.ft_a),
                        "layer_range": [0, 3],
                        "parameters": {"weight": 1.0, "gamma": 0.08},
                    },
                    {"model": str(m.ft_b), "layer_range": [0, 3], "parameters": {"weight": 0.7}},
                    {"model": str(m.base), "layer_range": [0, 3]},
                ],
                "parameters": {"density": 0.7, "gamma": 0.03, "rescale": False},
            }
        ],
        "base_model": str(m.base),
        "dtype": "float32",
    }


def vocabulary(method: str, tokenizer_source: str, *models: tuple[Path, float]) -> Callable[[Models], dict]:
    def config(m: Models) -> dict:
        parameters = {} if method == "linear" else {"density": 0.6}
        return {
            "merge_method": method,
            "base_model": str(m.base),
            "models": [entry(getattr(m, name), weight=weight, **parameters) for name, weight in models]
            + ([entry(m.base, weight=0.3)] if method == "linear" else []),
            "tokenizer_source": str(getattr(m, tokenizer_source)) if tokenizer_source != "base" else "base",
            "dtype": "float32",
        }

    return config


EQUAL: dict[str, Callable[[Models], dict]] = {
    "linear_example": linear_example,
    "ties_example": ties_example,
    "bio_merge": bio_merge,
    "passthrough_stack": passthrough_stack,
    "passthrough_scale": passthrough_scale,
    "task_arithmetic": lambda m: two_model("task_arithmetic", m.pools["llama"], "bfloat16"),
    "task_arithmetic_slices": task_arithmetic_slices,
    "ties_density": lambda m: two_model("ties", m.pools["qwen2"], density=0.3, rescale=True),
    "breadcrumbs": lambda m: two_model("breadcrumbs", m.pools["llama"]),
    "breadcrumbs_gammas": breadcrumbs_gammas,
    "breadcrumbs_slices": breadcrumbs_slices,
    "linear_normalize_false": lambda m: {
        **linear_example(m),
        "parameters": {"normalize": False},
        "dtype": "float32",
    },
    "vocabulary_renamed_linear": vocabulary("linear", "base", ("renamed", 0.7)),
    "vocabulary_wider_ties": vocabulary("ties", "base", ("wider", 0.7), ("ft_a", 0.5)),
    "vocabulary_from_a_model": vocabulary("ties", "wider", ("wider", 0.7), ("renamed", 0.4)),
    # a model that ties its head stands in with its embeddings; the head is written when one source stores it
    # (an untied output without one would get a random head from transformers)
    "tied_input_untied_base": lambda m: tied("task_arithmetic", m.base, m.tied_a, m.ft_b),
    "tied_base_untied_inputs": lambda m: tied("ties", m.tied_base, m.ft_a, m.ft_b),
    "tied_all": lambda m: tied("task_arithmetic", m.tied_base, m.tied_a),
    "tied_first_linear": lambda m: tied("linear", None, m.tied_a, m.ft_b),
}
"""Cases whose tensors must equal mergekit's."""


def tied(method: str, base: Path | None, *models: Path) -> dict:
    return {
        "merge_method": method,
        **({"base_model": str(base)} if base else {}),
        "models": [
            entry(model, weight=0.6, density=0.5) if method == "ties" else entry(model, weight=0.6)
            for model in models
        ],
        "dtype": "float32",
    }


@dataclass(frozen=True)
class Statistics:
    """What a random-mask case is compared on, per layer (0, 1, 2; None: the shared tensors)."""

    density: dict[int | None, float]
    epsilon: float | None = None


def one_model(method: str, model: str, **parameters) -> Callable[[Models], dict]:
    def config(m: Models) -> dict:
        shared = {k: v for k, v in parameters.items() if k in ("rescale", "normalize", "lambda")}
        own = {k: v for k, v in parameters.items() if k not in shared}
        return {
            "merge_method": method,
            "base_model": str(m.base),
            "models": [entry(getattr(m, model), weight=1.0, **own)],
            **({"parameters": shared} if shared else {}),
            "dtype": "float32",
        }

    return config


RANDOM: dict[str, tuple[Callable[[Models], dict], Statistics]] = {
    "dare_linear_gradient": (
        one_model("dare_linear", "ft_a", density=[0.2, 0.8]),
        Statistics({None: 0.2, 0: 0.2, 1: 0.5, 2: 0.8}),
    ),
    "dare_ties": (
        one_model("dare_ties", "ft_b", density=0.66, rescale=False),
        Statistics({None: 0.66, 0: 0.66, 1: 0.66, 2: 0.66}),
    ),
    "della_epsilon": (
        one_model("della", "ft_a", density=0.5, epsilon=0.3, rescale=False, normalize=False),
        Statistics({None: 0.5, 0: 0.5, 1: 0.5, 2: 0.5}, epsilon=0.3),
    ),
    "della_filter": (
        one_model(
            "della",
            "ft_b",
            density=0.4,
            epsilon=[{"filter": "mlp", "value": 0.3}, {"value": 0.1}],
            **{"lambda": 0.5},
        ),
        Statistics({None: 0.4, 0: 0.4, 1: 0.4, 2: 0.4}),
    ),
}
"""DARE-family cases: kept fractions and rescale statistics must match mergekit's."""

REFUSED_BY_BOTH: dict[str, Callable[[Models], dict]] = {
    "della_epsilon_per_model": one_model("della", "ft_a", density=0.5, epsilon=0.6),
    "della_epsilon_top_level": lambda m: {
        **one_model("della", "ft_a", density=0.5)(m),
        "parameters": {"epsilon": 0.6},
    },
    "della_invalid_epsilon": lambda m: two_model(
        "della", m.pools["llama"], density=0.66, epsilon=1.35, **{"lambda": 0.5}
    ),
}
"""Configs mergekit fails on mid-merge (a traceback): hm3 refuses them up front in one line."""


@pytest.fixture(scope="module")
def mergekit(models, tmp_path_factory) -> dict:
    """Every case through mergekit-yaml: ``{"cases": name -> (config file, output), "status": config ->
    "ok" or the error, "specs": method -> {parameter: scope}}``."""
    root = tmp_path_factory.mktemp("mergekit_compat")
    builders = {**EQUAL, **{name: case for name, (case, _) in RANDOM.items()}, **REFUSED_BY_BOTH}
    cases = {}
    for name, build in builders.items():
        config = root / f"{name}.yml"
        config.write_text(yaml.safe_dump(build(models), sort_keys=False))
        cases[name] = (config, root / f"{name}-mergekit")
    report = run_mergekit_yaml(cases.values())
    return {"cases": cases, **report}


def read_all(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def ran(mergekit: dict, name: str, tmp_path: Path) -> tuple[dict, dict, Path, Path]:
    """hm3's and mergekit's tensors of a case, and both output folders."""
    config, theirs = mergekit["cases"][name]
    assert mergekit["status"][str(config)] == "ok", mergekit["status"][str(config)]
    ours = run_mergekit_config(config, tmp_path / "hm3", show_progress=False)
    return read_all(ours), read_all(theirs), ours, theirs


@pytest.mark.parametrize("name", list(EQUAL))
def test_deterministic_config_gives_mergekits_tensors(mergekit, tmp_path, name) -> None:
    ours, theirs, ours_dir, theirs_dir = ran(mergekit, name, tmp_path)
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    for key, tensor in ours.items():
        assert tensor.dtype == theirs[key].dtype and tensor.shape == theirs[key].shape, key
        assert torch.equal(tensor, theirs[key]), f"{key}: max difference {(tensor - theirs[key]).abs().max()}"
    our_config = json.loads((ours_dir / "config.json").read_text())
    their_config = json.loads((theirs_dir / "config.json").read_text())
    assert our_config["vocab_size"] == their_config["vocab_size"]
    assert our_config["num_hidden_layers"] == their_config["num_hidden_layers"]
    if name.startswith("vocabulary"):
        import transformers

        vocab = transformers.AutoTokenizer.from_pretrained(ours_dir).get_vocab()
        assert vocab == transformers.AutoTokenizer.from_pretrained(theirs_dir).get_vocab()
        assert our_config["vocab_size"] == len(vocab)


def test_tokenizer_source_base_keeps_the_base_rows_of_tokens_the_finetune_lacks(
    mergekit, models, tmp_path
) -> None:
    """Issue 18, defect 3: a linear merge with a fine-tune whose tokens 126-127 differ from the base's keeps
    the base's rows there (both tools); positions alone would have averaged the fine-tune's rows in."""
    ours, _, _, _ = ran(mergekit, "vocabulary_renamed_linear", tmp_path)
    base = read_all(models.base)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.allclose(ours[name][126:], base[name][126:], atol=1e-6)
        assert not torch.allclose(ours[name][:126], base[name][:126], atol=1e-4)


@pytest.mark.parametrize("name", list(RANDOM))
def test_random_mask_config_matches_mergekits_statistics(mergekit, models, tmp_path, name) -> None:
    ours, theirs, _, _ = ran(mergekit, name, tmp_path)
    config = yaml.safe_load(mergekit["cases"][name][0].read_text())
    expected = RANDOM[name][1]
    base = read_all(Path(config["base_model"]))
    tuned = read_all(Path(config["models"][0]["model"]))
    mine, its = _statistics(ours, base, tuned), _statistics(theirs, base, tuned)
    for layer, density in expected.density.items():
        assert abs(mine[layer]["kept"] - density) < 0.04, (layer, mine[layer])
        assert abs(mine[layer]["kept"] - its[layer]["kept"]) < 0.04, (layer, mine[layer], its[layer])
        # rescale: the L1 norm of the kept task vector against the whole one
        assert abs(mine[layer]["l1"] - its[layer]["l1"]) < 0.05 * its[layer]["l1"], (layer, mine, its)
        if expected.epsilon is not None:  # DELLA: keep probability density -/+ epsilon from small to large
            for spread in (mine[layer]["spread"], its[layer]["spread"]):
                assert abs(spread - expected.epsilon) < 0.06, (layer, mine[layer], its[layer])


def _statistics(merged: dict, base: dict, tuned: dict) -> dict[int | None, dict[str, float]]:
    """Per layer: the fraction of task-vector entries kept, the L1 ratio kept / whole, and (rows of at least
    8 entries) the kept fraction among the larger half of each row's magnitudes minus the smaller half's."""
    spec = get_family("llama")
    sums: dict[int | None, list[float]] = {}
    for name, out in merged.items():
        delta = (tuned[name] - base[name]).float()
        kept = (out.float() - base[name].float()) != 0
        rows = delta.abs().reshape(-1, delta.shape[-1])
        order = rows.argsort(dim=1).argsort(dim=1) >= rows.shape[1] // 2
        flat = kept.reshape(rows.shape)
        totals = sums.setdefault(spec.layer_of(name), [0.0] * 6)
        totals[0] += float(kept.sum())
        totals[1] += kept.numel()
        totals[2] += float((out.float() - base[name].float()).abs().sum())
        totals[3] += float(delta.abs().sum())
        totals[4] += float((flat & order).sum()) - float((flat & ~order).sum())
        totals[5] += rows.numel() / 2
    return {
        layer: {"kept": t[0] / t[1], "l1": t[2] / t[3], "spread": t[4] / t[5]} for layer, t in sums.items()
    }


def test_the_cases_use_every_key_of_the_parameter_table(mergekit) -> None:
    used: set[str] = set()

    def collect(node) -> None:
        if isinstance(node, dict):
            used.update(node.get("parameters") or {})
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    for name in (*EQUAL, *RANDOM):
        collect(yaml.safe_load(mergekit["cases"][name][0].read_text()))
    assert set(PARAMETERS) <= used, set(PARAMETERS) - used


def test_the_parameter_table_agrees_with_mergekits_method_specs(mergekit) -> None:
    """Every parameter hm3 honours is one mergekit's method takes, at the same scope; what else mergekit's
    spec lists for a supported method (density and rescale of task_arithmetic, which do nothing there) is
    refused by hm3."""
    specs = mergekit["specs"]
    for method in [*METHODS, "passthrough"]:
        theirs = specs[method]
        for rule in PARAMETERS.values():
            if method in rule.methods:
                assert rule.name in theirs, (method, rule.name)
                assert rule.per_model == (theirs[rule.name] != "shared"), (method, rule.name)
        refused = set(theirs) - {r.name for r in PARAMETERS.values() if method in r.methods}
        assert refused <= ({"density", "rescale"} if method == "task_arithmetic" else set()), (
            method,
            refused,
        )
    assert set(TASK_VECTOR) == {name for name, row in METHODS.items() if row.uses_base}


def test_methods_hm3_does_not_implement_are_refused_in_one_line(mergekit, models, tmp_path) -> None:
    missing = sorted(set(mergekit["specs"]) - {*METHODS, "passthrough"})
    assert {"slerp", "nuslerp", "model_stock", "breadcrumbs_ties", "della_linear"} <= set(missing)
    for method in missing:
        config = tmp_path / f"{method}.yml"
        config.write_text(
            yaml.safe_dump({**two_model("ties", models.pools["llama"]), "merge_method": method})
        )
        with pytest.raises(UserError) as refused:
            plan_merge(load_mergekit_config(config))
        assert f"merge_method {method!r} is not supported" in str(refused.value)
        assert "\n" not in str(refused.value)
    slerp = tmp_path / "gradient-slerp.yml"  # examples/gradient-slerp.yml, through the CLI
    slerp.write_text(
        yaml.safe_dump(
            {
                "slices": [
                    {
                        "sources": [
                            {"model": str(models.ft_a), "layer_range": [0, 3]},
                            {"model": str(models.ft_b), "layer_range": [0, 3]},
                        ]
                    }
                ],
                "merge_method": "slerp",
                "base_model": str(models.ft_a),
                "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 1]}, {"value": 0.5}]},
                "dtype": "float16",
            }
        )
    )
    assert_refused(
        hm3_in_process("merge", "--mergekit", slerp, "--out", tmp_path / "out"), tmp_path / "out", "slerp"
    )


def assert_refused(result: subprocess.CompletedProcess[str], out: Path, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert not out.exists()
    assert not any(p.name.startswith(f".{out.name}.partial") for p in out.parent.iterdir())


@pytest.mark.parametrize("name", list(REFUSED_BY_BOTH))
def test_della_epsilon_mergekit_fails_on_is_refused_in_one_line(mergekit, tmp_path, name) -> None:
    config, _ = mergekit["cases"][name]
    assert mergekit["status"][str(config)].startswith("ValueError"), mergekit["status"][str(config)]
    out = tmp_path / "out"
    assert_refused(hm3_in_process("merge", "--mergekit", config, "--out", out), out, "epsilon")


def _ties(m: Models, **changes) -> dict:
    return {**two_model("ties", m.pools["llama"], density=0.5), **changes}


BAD_VALUES: dict[str, tuple[Callable[[Models], dict], str]] = {
    "nan weight": (
        lambda m: _ties(m, models=[entry(m.ft_a, weight=float("nan"))]),
        "models[0].parameters.weight: must be a finite number",
    ),
    "1e308 weight": (
        lambda m: _ties(m, models=[entry(m.ft_a, weight="1e308")]),
        "models[0].parameters.weight: must be in [-1000, 1000]",
    ),
    "inf lambda": (
        lambda m: _ties(m, parameters={"lambda": float("inf")}),
        "parameters.lambda: must be a finite number",
    ),
    "density above 1": (
        lambda m: _ties(m, parameters={"density": [0.5, 1.5]}),
        "parameters.density[1]: must be in [0, 1]",
    ),
    "negative gamma": (
        lambda m: {
            **two_model("breadcrumbs", m.pools["llama"]),
            "parameters": {"gamma": [{"filter": "mlp", "value": -0.1}]},
        },
        "parameters.gamma[0].value: must be in [0, 1]",
    ),
    "epsilon 1": (
        lambda m: one_model("della", "ft_a", density=0.5, epsilon=1.0)(m),
        "epsilon: must be in [0, 1)",
    ),
    "nan scale": (
        lambda m: {**passthrough_scale(m), "models": [entry(m.ft_a, scale=float("nan"))]},
        "models[0].parameters.scale: must be a finite number",
    ),
    "not a boolean": (
        lambda m: _ties(m, parameters={"normalize": "maybe"}),
        "parameters.normalize: must be true or false",
    ),
    "legacy pattern key": (
        lambda m: _ties(m, models=[entry(m.ft_a, weight=[{"pattern": "mlp", "value": 0.2}, {"value": 1}])]),
        "models[0].parameters.weight[0].pattern: the legacy 'pattern' key is ignored by mergekit",
    ),
    "shared parameter per model": (
        lambda m: _ties(m, models=[entry(m.ft_a, weight=1, normalize=False)]),
        "models[0].parameters.normalize: 'normalize' is shared by all models",
    ),
    "weight of the base": (
        lambda m: _ties(m, models=[entry(m.ft_a, weight=1), entry(m.pools["llama"].base, weight=1)]),
        "models[1].parameters.weight: this is the base model",
    ),
    "density for linear": (
        lambda m: {**linear_example(m), "parameters": {"density": 0.5}},
        "linear does not take 'density'",
    ),
    "rescale for task_arithmetic": (
        lambda m: two_model("task_arithmetic", m.pools["llama"], rescale=True),
        "task_arithmetic does not take 'rescale'",
    ),
    "unknown parameter": (
        lambda m: _ties(m, parameters={"t": 0.5}),
        "parameters.t: not a parameter hm3 knows",
    ),
    "empty gradient": (lambda m: _ties(m, parameters={"density": []}), "parameters.density: an empty list"),
    "linear weights summing to zero": (
        lambda m: {**linear_example(m), "models": [entry(m.ft_a, weight=1), entry(m.ft_b, weight=-1)]},
        "the weights 1, -1 sum to 0",
    ),
    "linear weights summing to zero in float32 alone": (  # 0.1 + 0.2 - 0.3 is 5.6e-17 in float64, 0 in float32
        lambda m: {
            **linear_example(m),
            "models": [entry(m.ft_a, weight=0.1), entry(m.ft_b, weight=0.2), entry(m.base, weight=-0.3)],
        },
        "the weights 0.1, 0.2, -0.3 sum to 0",
    ),
    "union tokenizer": (
        lambda m: _ties(m, tokenizer_source="union"),
        "tokenizer_source: union is not supported",
    ),
    "base tokenizer without a base": (
        lambda m: {**linear_example(m), "models": [entry(m.ft_a, weight=1)], "tokenizer_source": "base"},
        "tokenizer_source: base needs base_model",
    ),
    "a model without a tokenizer": (
        lambda m: {**two_model("ties", m.pools["llama"], density=0.5), "tokenizer_source": "base"},
        "has no tokenizer hm3 can load",
    ),
    "different layer counts": (
        lambda m: _ties(m, models=[entry(m.ft_a, weight=1)]),
        "needs equal layer counts",
    ),
    "modules": (lambda m: {**_ties(m), "modules": {}}, "modules: not supported by hm3"),
    "chat_template": (lambda m: _ties(m, chat_template="chatml"), "chat_template: not supported by hm3"),
    "LoRA reference": (
        lambda m: _ties(m, models=[entry(f"{m.ft_a}+{m.ft_b}", weight=1)]),
        "LoRA references",
    ),
    "duplicate models": (
        lambda m: _ties(m, models=[entry(m.pools["llama"].finetunes[0], weight=w) for w in (1, 2)]),
        "is given twice",
    ),
    "one model spelled two ways": (  # mergekit would merge it in twice, as if it were two models
        lambda m: _ties(
            m,
            models=[
                entry(m.pools["llama"].finetunes[0], weight=1),
                entry(_spelled_again(m.pools["llama"].finetunes[0]), weight=1),
            ],
        ),
        "are one model",
    ),
}
"""Configs hm3 refuses (where mergekit would silently ignore a key or write NaN/Inf): one line naming the field."""


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_what_hm3_does_not_honour_is_refused_naming_the_field(models, tmp_path, name) -> None:
    build, fragment = BAD_VALUES[name]
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(build(models), sort_keys=False))
    out = tmp_path / "out"
    with pytest.raises(UserError) as refused:
        run_mergekit_config(config, out, show_progress=False)
    assert fragment in str(refused.value) and "\n" not in str(refused.value), str(refused.value)
    assert not out.exists()


def _spelled_again(folder: Path) -> Path:
    """The same folder through its parent's parent: another string, one model."""
    return folder.parent / ".." / folder.parent.name / folder.name


def test_a_thread_count_that_is_not_a_whole_number_is_one_line(models, tmp_path, monkeypatch) -> None:
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(linear_example(models), sort_keys=False))
    out = tmp_path / "out"
    for value in ("abc", "2.5", "0"):
        monkeypatch.setenv("HM3_NUM_THREADS", value)
        done = hm3_in_process("merge", "--mergekit", config, "--out", out)
        assert_refused(done, out, "HM3_NUM_THREADS must be a whole number of threads", repr(value))
    monkeypatch.setenv("HM3_NUM_THREADS", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")  # OpenMP's nested form: its first level
    assert hm3_in_process("merge", "--mergekit", config, "--out", out).returncode == 0


def test_a_nan_weight_is_refused_by_the_cli_with_exit_2(models, tmp_path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        "\n".join(
            [
                f"merge_method: ties\nbase_model: {models.base}\nmodels:",
                f"  - model: {models.ft_a}",
                "    parameters: {weight: .nan, density: 0.5}",
                "",
            ]
        )
    )
    out = tmp_path / "out"
    assert_refused(hm3_in_process("merge", "--mergekit", config, "--out", out), out, "weight", "finite")


def test_an_error_in_a_merge_worker_is_one_line_and_leaves_nothing_behind(models, tmp_path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(one_model("breadcrumbs", "ft_a", density=0.5)(models)))
    out = tmp_path / "out"
    script = (
        "import sys; from hm3.merge import mergekit_run;"
        "real = mergekit_run.merge_tensor\n"
        "def failing(method, base, tensors, params, **kw):\n"
        "    if kw['tensor_name'].startswith('model.layers.1.'): raise ValueError('kernel says no\\nsecond line')\n"
        "    return real(method, base, tensors, params, **kw)\n"
        "mergekit_run.merge_tensor = failing\n"
        "from cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "merge", "--mergekit", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HM3_NUM_THREADS": "2"},
    )
    assert_refused(result, out, "tensor model.layers.1.", "ValueError: kernel says no")


def test_a_parameter_given_twice_in_a_mergekit_config_is_refused(tmp_path) -> None:
    """mergekit (PyYAML) keeps the last of two ``weight:`` lines; hm3 says the config holds both."""
    config = tmp_path / "twice.yml"
    config.write_text(
        "merge_method: task_arithmetic\nbase_model: /m/base\nmodels:\n"
        "  - model: /m/a\n    parameters: {weight: 0.3, weight: 0.7}\n"
    )
    with pytest.raises(UserError) as refused:
        load_mergekit_config(config)
    assert "key 'weight' is given twice in one mapping" in str(refused.value)
    assert "\n" not in str(refused.value)
