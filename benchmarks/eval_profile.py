"""Where one candidate's scoring time goes, and what the machine's load does to it.

Two measurements on the toy zoos (``recipes/toy-lm.yaml``, ``recipes/toy-vit.yaml``), for a *good* candidate
(the centre merge) and a *broken* one (the merged model's layers run in reverse, which decodes to the end of
``max_gen_toks`` where a good model stops after a few tokens):

* **Profile** (language zoo): one ``Evaluator.score(model, split="search")`` under cProfile, with the
  cumulative time of lm-eval's request building, tokenisation, the generation loop, the model's forward passes
  (inside generation and log-likelihood alike), filters and metrics. The parts overlap (the generation loop
  holds forward passes and tokenisation); the table also gives their share of the total.
* **Threads under load**: seconds per candidate with torch's intra-op threads at 1 (hm3's scoring policy,
  :mod:`hm3.evaluate.threads`) and at 2 (torch's default on this machine), on an idle machine and with two
  busy-loop processes beside it, side by side in one run; the scores of both thread counts are compared.

Run from the repository root (``make bench`` does)::

    python benchmarks/eval_profile.py [--repeats 3]

The Markdown lands in ``benchmarks/results/eval_profile.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import subprocess
import sys
import time
from pathlib import Path

from _bench import REPO, kept_notes, offline

offline()

import torch  # noqa: E402

import hm3.evaluate.threads as thread_policy  # noqa: E402
from hm3.merge.spec import MergeSpec  # noqa: E402
from hm3.recipe import load_recipe  # noqa: E402
from hm3.routing.path import InferencePath  # noqa: E402
from hm3.search.candidate import Candidate  # noqa: E402
from hm3.search.models import CandidateModels  # noqa: E402
from hm3.search.session import load_inputs  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "eval_profile.md"
PARTS = {
    "request building (lm-eval)": ("build_all_requests",),
    "tokenisation": ("tok_encode", "tok_batch_encode"),
    "generation loop": ("_model_generate",),
    "forward passes": ("_call_impl",),
    "filters": ("apply_filters",),
    "metrics": ("process_results", "aggregation"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="scorings per cell (the fastest is kept)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def candidates(recipe_file: Path):
    """The evaluator and the good and broken candidates' models of a recipe."""
    recipe = load_recipe(recipe_file)
    inputs = load_inputs(recipe)
    models = CandidateModels(inputs.pool, recipe, inputs.calibration)

    centre = [1.0 / len(recipe.objectives)] * len(recipe.objectives)
    spec = MergeSpec.from_recipe(recipe.parameter_level, recipe.model_weights(centre), recipe.seed)
    routing = models.routing_pool(spec)
    reverse = InferencePath(
        tuple((routing.merged_index, layer) for layer in reversed(range(routing.num_layers)))
    )
    good = models.build(Candidate.of_merge(spec))
    broken = models.build(Candidate.routed(spec, reverse, "none", routing))
    return inputs.evaluator, {"good": good, "broken": broken}


def profile(evaluator, model) -> dict[str, float]:
    """Cumulative seconds of each part of one search-split scoring (and ``total``)."""
    evaluator.score(model, split="search")  # warm: lazily built caches do not count
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    evaluator.score(model, split="search")
    profiler.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    out = {"total": total}
    for part, names in PARTS.items():
        out[part] = max(
            (cumulative for (_, _, name), (_, _, _, cumulative, _) in stats.items() if name in names),
            default=0.0,
        )
    return out


def timed(evaluator, model, threads: int, repeats: int) -> tuple[float, dict[str, float]]:
    """Fastest seconds per scoring with ``threads`` intra-op threads, and the scores."""
    thread_policy.SCORING_THREADS = threads
    best, scores = float("inf"), {}
    for _ in range(repeats):
        start = time.perf_counter()
        scores = evaluator.score(model, split="search")
        best = min(best, time.perf_counter() - start)
    thread_policy.SCORING_THREADS = 1
    return best, scores


def busy_loops(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    lines = [
        "# Where a candidate's scoring time goes",
        "",
        f"`python benchmarks/eval_profile.py --repeats {args.repeats}`; {platform.processor() or platform.machine()},"
        f" {torch.get_num_threads()} torch threads by default, torch {torch.__version__}. Seconds of one "
        "search-split scoring (fastest of the repeats), measured side by side in one run.",
        "",
    ]
    zoos = {
        "toy LM (small)": REPO / "recipes" / "toy-lm.yaml",
        "toy ViT (small)": REPO / "recipes" / "toy-vit.yaml",
    }
    loaded_rows, profile_rows = [], []
    for zoo, recipe_file in zoos.items():
        evaluator, models = candidates(recipe_file)
        for name, model in models.items():
            if not evaluator.is_vision:
                parts = profile(evaluator, model)
                profile_rows.append(
                    f"| {zoo} | {name} | {parts['total']:.2f} | "
                    + " | ".join(f"{parts[p]:.2f} ({100 * parts[p] / parts['total']:.0f}%)" for p in PARTS)
                    + " |"
                )
            cells, scores = {}, {}
            for load in (0, 2):
                loops = busy_loops(load)
                try:
                    time.sleep(1.0 if load else 0.0)
                    for threads in (1, 2):
                        cells[(load, threads)], scores[threads] = timed(
                            evaluator, model, threads, args.repeats
                        )
                finally:
                    for loop in loops:
                        loop.kill()
            difference = max(abs(scores[1][k] - scores[2][k]) for k in scores[1])
            loaded_rows.append(
                f"| {zoo} | {name} | {cells[(0, 1)]:.2f} | {cells[(2, 1)]:.2f} | "
                f"{cells[(2, 1)] / cells[(0, 1)]:.1f}x | {cells[(0, 2)]:.2f} | {cells[(2, 2)]:.2f} | "
                f"{cells[(2, 2)] / cells[(0, 2)]:.1f}x | {difference:.3g} |"
            )
            print(loaded_rows[-1], flush=True)
    lines += [
        "## Profile of one scoring (language zoo, 1 thread, idle)",
        "",
        "| zoo | candidate | total s | " + " | ".join(PARTS) + " |",
        "|---|---|---:|" + "---:|" * len(PARTS),
        *profile_rows,
        "",
        "Parts overlap: the generation loop holds forward passes and tokenisation.",
        "",
        "## Seconds per candidate: threads and load",
        "",
        "| zoo | candidate | 1 thread idle | 1 thread, 2 busy loops | slowdown | 2 threads idle | "
        "2 threads, 2 busy loops | slowdown | max score difference 1 vs 2 threads |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *loaded_rows,
        *kept_notes(args.out),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
