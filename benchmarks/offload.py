"""Layer offload (issue 22): peak memory and candidates per minute with every model resident and with a bounded
device cache of layers, on a ~0.5B-parameter Llama-shaped stand-in; and what each shipped paper recipe keeps
on 24, 48 and 80 GB devices.

The stand-in (``benchmarks/gpu.py``'s: hidden 1280, 24 layers, MLP 3456, random weights generated on the fly in
bfloat16, three "fine-tunes" = base + small random task vectors) is written once to
``benchmarks/scratch/offload/`` and reused. Each configuration runs in a process of its own (so that peaks do
not mix) and takes the same candidates, one at a time as the search runs them: four merges in the upper
level's box, each followed by three routed paths that put 1-3 fine-tuned layers into the merge's identity path.
A candidate is merged (a new merge), built over the pool, and scored by one forward pass over a fixed batch of
4 x 64 tokens (its mean log-likelihood): the scoring that costs least, so the table gives offload's *largest*
relative cost (lm-eval scoring decodes for seconds to minutes per candidate on this size).

Memory: ``cache peak`` is the most the device cache held (:class:`hm3.routing.residency.DeviceLayerCache`); on
a CPU the process's own memory (``RssAnon``, sampled every 5 ms) is the device memory, and memory-mapped model
files (``RssFile``) are pages the kernel may drop; on CUDA the peak is ``torch.cuda.max_memory_allocated``.
The scores of every configuration are compared with the resident ones, bit for bit.

Run from the repository root (the small toy zoo supplies the tokenizer)::

    python benchmarks/offload.py [--device cpu|cuda] [--candidates-per-merge 3]

It writes ``benchmarks/results/offload.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from _bench import REPO, exit_with, offline, write_results

offline()

import torch  # noqa: E402

from hm3.errors import UserError  # noqa: E402
from hm3.placement import GIB, Placement, PoolSizes, plan_memory  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "offload.md"
SCRATCH = REPO / "benchmarks" / "scratch" / "offload"
MERGES = 4
DTYPES = ("bfloat16", "float32")
DEVICES_GB = (24, 48, 80)

# Published configurations of the models the shipped paper recipes name (config.json on the hub), so that the
# table needs no download: the tensors of one model are counted on the meta device.
PAPER_MODELS = {
    "llama2-7b-chat-math-code.yaml": (
        "llama",
        {
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "tie_word_embeddings": False,
        },
    ),
    "qwen2.5-1.5b-instruct-math-coder.yaml": (
        "qwen2",
        {
            "vocab_size": 151936,
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "tie_word_embeddings": True,
        },
    ),
    "clip-vit-b32-8tasks.yaml": (
        "clip_vision_model",
        {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "patch_size": 32,
            "image_size": 224,
        },
    ),
    "clip-vit-l14-8tasks.yaml": (
        "clip_vision_model",
        {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 224,
        },
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--candidates-per-merge", type=int, default=3, help="routed paths after each merge")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one configuration, in its own process (JSON)
    return parser.parse_args(argv)


# -- the stand-in --------------------------------------------------------------------------------------------


def standin_recipe() -> Path:
    """The stand-in's recipe, written (with its four models) on the first call."""
    from gpu import STANDIN, write_standin

    recipe = SCRATCH / "standin" / "standin.yaml"
    if not recipe.is_file():
        print(f"writing the stand-in {STANDIN} to {SCRATCH}", flush=True)
        write_standin(SCRATCH / "standin", STANDIN)
    return recipe


def draw(models, recipe, per_merge: int) -> list:
    """MERGES merges in the upper level's box, each followed by ``per_merge`` paths changing 1-3 slots."""
    import random

    from hm3.routing.path import InferencePath
    from hm3.search.candidate import Candidate
    from hm3.search.upper_level import coefficients_merge

    rng = random.Random(0)
    k = len(recipe.models)
    out = []
    for _ in range(MERGES):
        spec = coefficients_merge(recipe, [rng.uniform(0, 1) for _ in range(k)], sparse=False)
        out.append(Candidate.of_merge(spec))
        pool = models.routing_pool(spec)
        for _ in range(per_merge):
            steps = list(InferencePath.identity(pool.merged_index, pool.num_layers).steps)
            for slot in rng.sample(range(len(steps)), rng.randint(1, 3)):
                steps[slot] = (rng.randrange(k), steps[slot][1])
            out.append(Candidate.routed(spec, steps, "none", pool))
    models._merged_key = None  # noqa: SLF001 - the timed loop merges from scratch, as the search meets them
    models._routing = None  # noqa: SLF001
    return out


class AnonPeak:
    """The process's peak anonymous resident memory (RssAnon), sampled every 5 ms in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss()["RssAnon"])
            time.sleep(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def rss() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("RssAnon:", "RssFile:", "VmHWM:")):
                name, value, _ = line.split()
                out[name.rstrip(":")] = int(value) * 1024
    return out


def run_configuration(device: str, dtype: str, bound: int | None, per_merge: int) -> dict:
    """Merge, build and score the drawn candidates under one memory configuration (in this process)."""
    from hm3.recipe import load_recipe
    from hm3.search.models import CandidateModels
    from hm3.search.session import load_inputs

    torch.set_num_threads(2)
    torch.manual_seed(0)
    update = {"device": device, "dtype": dtype, "device_memory": bound}
    recipe = load_recipe(standin_recipe()).model_copy(update=update)
    peak = AnonPeak()
    inputs = load_inputs(recipe)
    models = CandidateModels(inputs.pool, recipe, None)
    candidates = draw(models, recipe, per_merge)
    vocab = int(inputs.pool.vocab_size or 64)
    batch = torch.randint(3, vocab, (4, 64), generator=torch.Generator().manual_seed(0)).to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    stages = {"merge": 0.0, "build": 0.0, "score": 0.0}
    scores = []
    wall = time.perf_counter()
    for candidate in candidates:
        t0 = time.perf_counter()
        spec = candidate.merge_spec()
        models.routing_pool(spec)
        _sync(device)
        t1 = time.perf_counter()
        model = models.build(candidate)
        _sync(device)
        t2 = time.perf_counter()
        with torch.no_grad():
            logits = model(batch).logits.float()
            score = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch[:, 1:, None]).mean().item()
        scores.append(score)
        del model, logits
        _sync(device)
        t3 = time.perf_counter()
        stages["merge"] += t1 - t0
        stages["build"] += t2 - t1
        stages["score"] += t3 - t2
        print(f"  {'resident' if bound is None else f'{bound / GIB:.2f} GiB'}: {t3 - t0:.2f} s", flush=True)
    wall = time.perf_counter() - wall
    cache = models.cache
    sizes = PoolSizes.of(inputs.pool, recipe.dtype)
    return {
        "bound": bound,
        "candidates": len(candidates),
        "per_minute": 60 * len(candidates) / wall,
        "stages": {k: v / len(candidates) for k, v in stages.items()},
        "scores": scores,
        "anon_peak": peak.stop(),
        "rss": rss(),
        "cuda_peak": torch.cuda.max_memory_allocated() if device.startswith("cuda") else None,
        "cache_peak": cache.stats.peak_bytes if cache else None,
        "moved_per_candidate": cache.stats.bytes_moved / len(candidates) if cache else 0,
        "hits": cache.stats.hits if cache else 0,
        "moves": cache.stats.moves if cache else 0,
        "sizes": vars(sizes),
        "parameters": inputs.pool.parameters_per_model,
    }


def table_row(dtype: str, run: dict, resident: dict) -> str:
    stages = run["stages"]
    same = "yes" if run["scores"] == resident["scores"] else "NO"
    cache = f"{run['cache_peak'] / GIB:.2f}" if run["cache_peak"] is not None else "-"
    device_peak = run["cuda_peak"] if run["cuda_peak"] is not None else run["anon_peak"]
    bound = "resident (K + 2 models)" if run["bound"] is None else f"{run['bound'] / GIB:.2f} GiB"
    return (
        f"| {dtype} | {bound} | {cache} | {device_peak / GIB:.2f} | {run['rss']['RssFile'] / GIB:.2f} | "
        f"{run['per_minute']:.1f} | {stages['merge']:.2f} | {stages['build']:.2f} | {stages['score']:.2f} | "
        f"{run['moved_per_candidate'] / GIB:.2f} | {run['hits']}/{run['moves']} | {same} |"
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child(device: str, dtype: str, bound: int | None, per_merge: int) -> dict:
    """One configuration in a fresh process (its peak memory is its own)."""
    print(
        f"{dtype} on {device}: {'resident' if bound is None else f'offload at {bound / GIB:.2f} GiB'}",
        flush=True,
    )
    command = [sys.executable, __file__, "--child", json.dumps([device, dtype, bound, per_merge])]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={**os.environ})
    if done.returncode != 0:
        raise UserError(f"configuration {bound}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the paper recipes ---------------------------------------------------------------------------------------


def paper_rows() -> list[str]:
    """What each shipped paper recipe keeps on a 24, 48 and 80 GB device (resident, offloaded, or nothing)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

    from hm3.arch import detect_family
    from hm3.placement import HEADROOM, candidate_length
    from hm3.recipe import load_recipe

    rows = []
    for file, (model_type, fields) in PAPER_MODELS.items():
        recipe = load_recipe(REPO / "recipes" / file)
        if model_type == "clip_vision_model":
            config = CLIPVisionConfig(**fields)
            with init_empty_weights():
                model = CLIPVisionModel(config)
            raw = {"model_type": "clip", "vision_config": fields}
        else:
            config = AutoConfig.for_model(model_type, **fields)
            with init_empty_weights():
                model = AutoModelForCausalLM.from_config(config)
            raw = {"model_type": model_type, **fields}
        backbone = detect_family(raw, where=file)
        tied = fields.get("tie_word_embeddings") and "lm_head.weight"  # not stored: the embedding is the head
        shapes = {n: t.shape for n, t in model.state_dict().items() if backbone.belongs(n) and n != tied}
        size = {"float32": 4, "bfloat16": 2, "float16": 2}[recipe.dtype]
        layer = sum(s.numel() for n, s in shapes.items() if backbone.layer_of(n) == 0) * size
        shared = sum(s.numel() for n, s in shapes.items() if backbone.layer_of(n) is None) * size
        total = sum(s.numel() for s in shapes.values())
        k, layers = len(recipe.models), fields["num_hidden_layers"]
        sizes = PoolSizes(total * size, layer, shared, k + 2, k + 1, layers)
        length = candidate_length(recipe, layers)
        cells = []
        for gb in DEVICES_GB:
            free = int(gb * 1e9 * 0.95)  # what a CUDA context and the driver leave
            try:
                plan = plan_memory(sizes, length, Placement("cuda", recipe.dtype), None, free)
            except UserError:
                cells.append("does not fit")
                continue
            if not plan.offload:
                cells.append(f"resident ({sizes.model * sizes.models * HEADROOM / 1e9:.0f} GB)")
            else:
                held = min((plan.device_memory - shared) // layer, sizes.members * layers)
                cells.append(f"offload: {held} of {sizes.members * layers} layers")
        smallest = DEVICES_GB[0] * 1e9 * 0.95 / HEADROOM
        longest = min(int((smallest - shared) // layer), sizes.members * layers)
        cells.append(f"{longest}" if longest >= layers else f"none (< L = {layers})")
        rows.append(
            f"| `{file}` | {k} + base + merge | {total / 1e9:.2f} B | {recipe.dtype} | "
            f"{sizes.model * sizes.models / 1e9:.1f} | {sizes.candidate(length) * HEADROOM / 1e9:.1f} (T_max {length}) | "
            + " | ".join(cells)
            + " |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_configuration(*json.loads(args.child))))
        return 0
    if not (REPO / "zoo" / "lm-llama-small" / "base").is_dir():
        print("benchmarks/offload.py: skipped, the small toy zoo (the stand-in's tokenizer) is not built")
        return 0
    standin_recipe()
    rows, facts, first = [], [], None
    for dtype in DTYPES:
        resident = child(args.device, dtype, None, args.candidates_per_merge)
        first = first or resident
        sizes = PoolSizes(**resident["sizes"])
        one = sizes.candidate(sizes.layers * 3 // 2)
        every_layer = sizes.members * (sizes.shared + sizes.layers * sizes.layer)
        runs = [resident]
        for bound in (every_layer, (every_layer + one) // 2, int(one * 1.1)):
            runs.append(child(args.device, dtype, bound, args.candidates_per_merge))
        for run in runs:
            rows.append(table_row(dtype, run, resident))
        facts.append(
            f"- {dtype}: one layer {sizes.layer / 2**20:.0f} MiB, shared tensors {sizes.shared / 2**20:.1f} MiB, "
            f"the K + 1 models' {sizes.members * sizes.layers} layers {every_layer / GIB:.2f} GiB, one candidate "
            f"(T_max {sizes.layers * 3 // 2}) at most {one / GIB:.2f} GiB."
        )
    peak_name = (
        "peak CUDA memory GiB" if args.device.startswith("cuda") else "peak process memory (RssAnon) GiB"
    )
    lines = [
        "# Layer offload (issue 22)",
        "",
        f"`python benchmarks/offload.py --device {args.device}` on {platform.machine()} "
        f"({platform.processor() or 'cpu'}, {os.cpu_count()} cores, 2 torch threads), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}. Stand-in: Llama-shaped, {first['parameters'] / 1e9:.2f} B parameters "
        "per model stored in bfloat16, 3 fine-tunes + base + merge, run in bfloat16 (the stored dtype: resident "
        "tensors are the memory-mapped files) and in float32 (cast on loading: resident tensors are copies). "
        f"{first['candidates']} candidates per configuration ({MERGES} merges, each followed by "
        f"{args.candidates_per_merge} paths changing 1-3 slots), each in a process of its own; scoring is one "
        "forward pass over 4 x 64 tokens (the cheapest scoring, so offload's largest relative cost). Seconds are "
        "per candidate; moved = bytes the cache copied to the device per candidate; hits/moves = cache groups "
        "found / copied.",
        "",
        f"| run dtype | device memory bound | cache peak GiB | {peak_name} | mapped model files resident GiB | "
        "candidates per minute | merge s | build s | score s | moved GiB | hits/moves | scores identical to "
        "resident |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        *facts,
        "",
        "## What the shipped paper recipes keep on one GPU",
        "",
        "From the models' published configurations (counted on the meta device) and `hm3.placement.plan_memory` "
        "with 95% of the device free and `device_memory` unset: resident when the K + 2 models fit (with 15% "
        "headroom for activations), else offloaded with what is free — the cell gives how many of the K + 1 "
        "models' layers the device cache holds at once; a candidate needs its distinct layers (up to T_max) and "
        "one model's shared tensors.",
        "",
        "| recipe | models | parameters per model | dtype | resident GB | one candidate GB | "
        + " | ".join(f"{gb} GB" for gb in DEVICES_GB)
        + f" | longest T_max offloaded on {DEVICES_GB[0]} GB |",
        "|---|---|---:|---|---:|---:|" + "---|" * len(DEVICES_GB) + "---:|",
        *paper_rows(),
    ]
    from _bench import kept_notes

    lines += kept_notes(args.out)
    write_results(args.out, lines)
    return 0


if __name__ == "__main__":
    exit_with(main, "benchmarks/offload.py")
