"""Tiny models built once per test session: llama, qwen2, mistral causal LMs and CLIP vision towers.

Each family gets a base and three "fine-tunes" (the base plus small random task vectors), saved as real
Hugging Face folders with safetensors weights. Shapes: 2-4 layers, hidden 32.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

LM_FAMILIES = ("llama", "qwen2", "mistral")


@dataclass(frozen=True)
class TinyPool:
    """Folders of one tiny family: ``base`` and the fine-tunes ``ft0``, ``ft1``, ``ft2``."""

    family: str
    root: Path
    base: Path
    finetunes: tuple[Path, ...]


def tiny_config(family: str, layers: int = 2, vocab: int = 64):
    """A transformers config of a tiny model of ``family``."""
    import transformers

    if family == "clip_vision":
        return transformers.CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            image_size=8,
            patch_size=4,
            num_channels=3,
        )
    config_class = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "mistral": transformers.MistralConfig,
    }[family]
    return config_class(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )


def build_tiny_model(family: str, folder: Path, seed: int, base: Path | None = None, **config_kwargs):
    """Save a tiny model of ``family`` into ``folder``: random (seed), or ``base`` plus a small task vector."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = tiny_config(family, **config_kwargs)
    if family == "clip_vision":
        model = transformers.CLIPVisionModel(config)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config)
    if base is not None:
        reference = type(model).from_pretrained(base)
        with torch.no_grad():
            for param, ref in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
                if param.shape == ref.shape:
                    param.copy_(ref + 0.02 * torch.randn_like(ref))
    model.save_pretrained(folder)
    return folder


def _build_pool(root: Path, family: str) -> TinyPool:
    base = build_tiny_model(family, root / "base", seed=0)
    finetunes = tuple(build_tiny_model(family, root / f"ft{i}", seed=i + 1, base=base) for i in range(3))
    return TinyPool(family, root, base, finetunes)


@pytest.fixture(scope="session")
def tiny_pools(tmp_path_factory) -> dict[str, TinyPool]:
    """One tiny pool per family (llama, qwen2, mistral, clip_vision)."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: _build_pool(root / family, family) for family in (*LM_FAMILIES, "clip_vision")}


@pytest.fixture(scope="session")
def tiny_llama(tiny_pools) -> TinyPool:
    return tiny_pools["llama"]


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    """Write a recipe file into ``folder`` and return its path."""
    path = folder / name
    path.write_text(text)
    return path


def run_hm3(
    *args: str, cwd: Path | None = None, timeout: int = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``hm3`` command in a subprocess and capture its output (``env``: laid over this one's)."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def hm3_in_process(
    *args: str, cwd: Path | None = None, timeout: int | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``hm3`` through its entry point (:func:`cli.main.main`) inside this process and capture what it prints
    and its exit code, as :func:`run_hm3` does, without the ~7 s a new interpreter spends importing torch,
    transformers and lm-eval. For refusals and quick commands; an exception that escapes the command fails the
    test (where a subprocess would print a traceback). Restores the working directory, the environment and
    torch's thread count; ``timeout`` is accepted for the same signature and not enforced."""
    import contextlib
    import io

    import torch

    from cli.main import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit:  # argparse's refusals and --help
                code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["hm3", *map(str, args)], code, out.getvalue(), err.getvalue())


def merge_killed_once_logged(recipe: Path, run: Path, lines: int) -> None:
    """Start ``hm3 merge --recipe RECIPE --out RUN --quiet`` (offline, from the repository) in a subprocess and
    SIGKILL it once the run's log holds ``lines`` lines (:func:`kill_once_logged`)."""
    args = ("merge", "--recipe", recipe, "--out", run, "--quiet")
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    kill_once_logged(process, run / "candidates.jsonl", lines)


def kill_once_logged(process: subprocess.Popen, log: Path, lines: int, timeout: float = 900) -> None:
    """SIGKILL ``process`` once its run log holds ``lines`` lines (it must still be running then)."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and len(log.read_bytes().splitlines()) >= lines:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the search ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
