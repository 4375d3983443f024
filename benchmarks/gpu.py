"""Candidates per minute on a CUDA GPU (issue 19): the small and deep toy LM zoos and a ~0.5B-parameter stand-in.

A candidate is what the search pays for: its merge (in the upper level's box, ``coefficients_merge``), its model
built over the pool (a routed path for path candidates), and its scoring on the search split with the scoring
hm3 uses (``Evaluator.score``: the exact greedy shortcut, lm-eval's decoding where it cannot decide). The same
candidates — merges drawn in [0, w_max]^K and paths that change 1-3 slots of a merge's identity path — are
timed on each device, one candidate at a time as the search runs them; the table gives candidates per minute,
what a candidate's time is spent on, and the largest score difference between CUDA and the CPU (the CPU runs
the search's one-thread policy, :mod:`hm3.evaluate.threads`).

The stand-in is Llama-shaped (hidden 1280, 24 layers, MLP 3456: ~0.48B parameters with the zoo's small
vocabulary), random weights generated on the fly in bfloat16, with three "fine-tunes" that are the base plus
small random task vectors; it is scored on the small zoo's tasks (its answers are wrong: every document runs
to its stop or length limit, the broken-candidate case). CUDA only: one candidate of it takes minutes on one
CPU thread.

Run from the repository root on a machine with a GPU (the toy zoos must be built)::

    python benchmarks/gpu.py [--candidates 16] [--skip-standin]

It writes ``benchmarks/results/gpu.md`` (``--out``). Without a GPU it says so and exits 0 (``make bench``). ``--device cpu``
runs the whole thing on the CPU with a tiny stand-in (a check of the script itself, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import REPO, exit_with, offline, write_results

offline()

import torch  # noqa: E402

from hm3.recipe import load_recipe  # noqa: E402
from hm3.routing.path import InferencePath  # noqa: E402
from hm3.search.candidate import Candidate  # noqa: E402
from hm3.search.models import CandidateModels  # noqa: E402
from hm3.search.session import load_inputs  # noqa: E402
from hm3.search.upper_level import coefficients_merge  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "gpu.md"
ZOOS = {
    "toy LM (small, 4 layers)": REPO / "recipes" / "toy-lm.yaml",
    "toy LM (deep, 12 layers)": REPO / "recipes" / "toy-lm-deep.yaml",
}
STANDIN = {"hidden": 1280, "layers": 24, "heads": 20, "intermediate": 3456}
TINY_STANDIN = {"hidden": 64, "layers": 4, "heads": 4, "intermediate": 128}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=16, help="candidates per model set and device")
    parser.add_argument(
        "--device", default="cuda", help="cuda (the measurement) or cpu (a check of the script)"
    )
    parser.add_argument("--skip-standin", action="store_true", help="only the toy zoos")
    parser.add_argument("--skip-search", action="store_true", help="no end-to-end hm3 merge on the device")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def draw_candidates(
    recipe, models: CandidateModels, count: int, seed: int = 0
) -> list[tuple[str, Candidate]]:
    """Half merges in the upper level's box, half routed paths (1-3 slots changed) over those merges."""
    rng = random.Random(seed)
    k = len(recipe.models)
    merges = []
    for _ in range(max(1, count // 2)):
        x = [rng.uniform(0.0, recipe.parameter_level.w_max) for _ in range(k * recipe.parameter_level.blocks)]
        merges.append(coefficients_merge(recipe, x, sparse=False))
    drawn: list[tuple[str, Candidate]] = [("merge", Candidate.of_merge(spec)) for spec in merges]
    for index in range(count - len(drawn)):
        spec = merges[index % len(merges)]
        routing = models.routing_pool(spec)
        slots = list(InferencePath.identity(routing.merged_index, routing.num_layers))
        for _ in range(rng.randint(1, 3)):
            slot = rng.randrange(len(slots))
            slots[slot] = (rng.randrange(routing.num_models), rng.randrange(routing.num_layers))
        drawn.append(("path", Candidate.routed(spec, InferencePath(tuple(slots)), "none", routing)))
    return drawn


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_candidates(recipe_file: Path, device: str, count: int, dtype: str | None = None) -> dict:
    """Merge, build and score ``count`` candidates of a recipe on ``device``; seconds per stage, the scores."""
    update = {"device": device} | ({"dtype": dtype} if dtype else {})
    recipe = load_recipe(recipe_file).model_copy(update=update)
    start = time.perf_counter()
    inputs = load_inputs(recipe)
    models = CandidateModels(inputs.pool, recipe, inputs.calibration)
    load = time.perf_counter() - start
    drawn = draw_candidates(recipe, models, count)
    # the first scoring builds the split's requests once per run: not a per-candidate cost
    inputs.evaluator.score(models.build(drawn[0][1]), split="search")
    models._merged_key = None  # noqa: SLF001 - time every merge from scratch, as the search meets them
    models._routing = None  # noqa: SLF001
    stages = {"merge": 0.0, "build": 0.0, "score": 0.0}
    scores, parameters = [], inputs.pool.parameters_per_model
    wall = time.perf_counter()
    for _, candidate in drawn:
        t0 = time.perf_counter()
        spec = candidate.merge_spec()
        if spec is not None:
            models.routing_pool(spec)
        synchronize(device)
        t1 = time.perf_counter()
        model = models.build(candidate)
        synchronize(device)
        t2 = time.perf_counter()
        scores.append(inputs.evaluator.score(model, split="search"))
        synchronize(device)
        t3 = time.perf_counter()
        stages["merge"] += t1 - t0
        stages["build"] += t2 - t1
        stages["score"] += t3 - t2
        print(f"  {device} {recipe_file.stem}: {candidate.content_key()[:8]} {t3 - t0:.2f} s", flush=True)
    wall = time.perf_counter() - wall
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    del inputs, models
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {
        "candidates": len(drawn),
        "wall": wall,
        "per_minute": 60 * len(drawn) / wall,
        "stages": {k: v / len(drawn) for k, v in stages.items()},
        "load": load,
        "scores": scores,
        "parameters": parameters,
        "peak": peak,
        "dtype": recipe.dtype,
    }


def write_standin(folder: Path, shape: dict[str, int], seed: int = 0) -> Path:
    """A Llama-shaped base with random weights and three fine-tunes (base + small random task vectors), in
    bfloat16, saved with the small zoo's tokenizer; and a recipe over them scored on the small zoo's tasks."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    small = load_recipe(ZOOS["toy LM (small, 4 layers)"])
    tokenizer = AutoTokenizer.from_pretrained(small.base_model.path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    base = LlamaForCausalLM(config).to(torch.bfloat16)
    base.generation_config.pad_token_id = 0
    state = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    names = ["standin_a", "standin_b", "standin_c"]
    base.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    for index, name in enumerate(names):
        generator = torch.Generator().manual_seed(seed * 100 + index + 1)
        with torch.no_grad():
            for parameter_name, parameter in base.named_parameters():
                noise = torch.randn(parameter.shape, generator=generator) * 0.02 * parameter.float().std()
                parameter.copy_(state[parameter_name].float() + noise)
        base.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
    recipe = {
        "base_model": {"path": str(folder / "base")},
        "models": [{"name": name, "path": str(folder / name)} for name in names],
        "objectives": [o.model_dump(mode="json", exclude_none=True) for o in small.objectives],
        "split": small.split.model_dump(mode="json"),
        "parameter_level": {"method": "task_arithmetic"},
        "dtype": "bfloat16",
        "output": {"dir": str(folder / "run")},
    }
    path = folder / "standin.yaml"
    path.write_text(json.dumps(recipe, indent=1))  # JSON is YAML
    return path


def end_to_end(device: str, folder: Path) -> dict:
    """A short ``hm3 merge`` of the small zoo on ``device``: that the device path runs, and its pace."""
    recipe = load_recipe(ZOOS["toy LM (small, 4 layers)"])
    data = json.loads(recipe.model_dump_json(exclude_none=True))
    data.update(device=device, output={"dir": str(folder / "search")})
    data["preferences"] = {"count": 2, "scalarization": "weighted_sum"}
    data["parameter_level"]["budget"] = 8
    data["agent"] = {**data.get("agent", {}), "iterations": 24}
    recipe_file = folder / "search.yaml"
    recipe_file.write_text(json.dumps(data, indent=1))
    command = [
        *(sys.executable, "-c", "import sys; from cli.main import main; sys.exit(main())"),
        *("merge", "--recipe", str(recipe_file), "--out", str(folder / "search")),
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    summary_file = folder / "search" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    candidates = summary.get("candidates_scored_this_session")
    return {"rc": result.returncode, "wall": wall, "candidates": candidates, "tail": result.stderr[-600:]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        # make bench runs every script: without a GPU this one is skipped, and gpu.md keeps its last measurement
        print("benchmarks/gpu.py: skipped, no CUDA GPU is visible (--device cpu checks the script)")
        return 0
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none (--device cpu: a check)"
    rows, runs = [], {}
    for zoo, recipe_file in ZOOS.items():
        if not Path(load_recipe(recipe_file).base_model.path).is_dir():
            print(f"skipping {zoo}: its zoo is not built")
            continue
        for device in dict.fromkeys([args.device, "cpu"]):
            print(f"{zoo} on {device}", flush=True)
            runs[(zoo, device)] = time_candidates(recipe_file, device, args.candidates)
    with tempfile.TemporaryDirectory(prefix="hm3-gpu-") as scratch:
        if not args.skip_standin:
            shape = STANDIN if args.device.startswith("cuda") else TINY_STANDIN
            print(f"writing the stand-in {shape}", flush=True)
            standin = write_standin(Path(scratch) / "standin", shape)
            name = f"Llama-shaped stand-in ({shape['layers']} layers, hidden {shape['hidden']})"
            runs[(name, args.device)] = time_candidates(standin, args.device, args.candidates)
            shutil.rmtree(Path(scratch) / "standin")
        search = None if args.skip_search else end_to_end(args.device, Path(scratch))
    for (zoo, device), run in runs.items():
        cpu = runs.get((zoo, "cpu"))
        difference = "-"
        if cpu is not None and device != "cpu":
            difference = f"{max(abs(a[k] - b[k]) for a, b in zip(run['scores'], cpu['scores'], strict=True) for k in a):.3g}"
        stages = run["stages"]
        peak = f"{run['peak'] / 2**30:.2f}" if run["peak"] is not None else "-"
        rows.append(
            f"| {zoo} | {device} | {run['parameters'] / 1e6:.2f} M | {run['dtype']} | {run['candidates']} | "
            f"{run['per_minute']:.1f} | {stages['merge']:.3f} | {stages['build']:.3f} | {stages['score']:.3f} | "
            f"{peak} | {difference} |"
        )
    lines = [
        "# Candidates per minute on a GPU (issue 19)",
        "",
        f"`python benchmarks/gpu.py --candidates {args.candidates}` on {platform.machine()}, GPU: {gpu}, torch "
        f"{torch.__version__}, {time.strftime('%Y-%m-%d')}. Each candidate is merged (in the upper level's box), "
        "built (half of them routed paths that change 1-3 slots of the merge's identity path) and scored on the "
        "search split with `Evaluator.score`, one at a time as the search runs them; the same candidates on each "
        "device. CPU rows: the same machine's CPU under the search's one-thread policy. Seconds are per "
        "candidate; the score difference is the largest between the GPU and the CPU over every candidate and "
        "objective (float kernels differ between devices; on one device scores are identical run to run).",
        "",
        "| models | device | parameters per model | dtype | candidates | candidates per minute | merge s | build s "
        "| score s | peak GPU memory GiB | max score difference vs CPU |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    if search is not None:
        lines += [
            "",
            f"End to end: `hm3 merge` of `recipes/toy-lm.yaml` with `device: {args.device}` (2 preferences, upper "
            f"level budget 8, 24 paths per preference): exit {search['rc']}, {search['wall']:.0f} s wall, "
            f"{search['candidates']} candidates scored.",
        ]
        if search["rc"] != 0:
            lines += ["", "```", search["tail"], "```"]
    write_results(args.out, lines)
    return 0


if __name__ == "__main__":
    exit_with(main, "benchmarks/gpu.py")
