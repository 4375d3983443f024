"""Candidates per minute before and after issue 19's scoring, side by side in one run, with the scores compared.

On the toy zoos (``recipes/toy-lm.yaml``, ``recipes/toy-lm-deep.yaml``, ``recipes/toy-vit.yaml``), for good candidates (the specialists at
the simplex corners, the centre merge) and broken ones (the centre merge's layers backwards, random inference
paths), each candidate's search-split scoring is timed two ways, alternating:

* **before**: every objective through one ``lm_eval.evaluator.evaluate`` call per scoring
  (``LanguageObjective.score_with_lm_eval``: requests rebuilt, every document decoded token by token) — the
  in-memory path hm3 had;
* **after**: ``Evaluator.score`` (requests built once per split, the exact greedy shortcut with lm-eval's own
  decoding for any document it cannot decide, one exact-match call per objective).

Both run on one intra-op thread (:mod:`hm3.evaluate.threads`); the table gives the fastest of ``--repeats``
scorings, the largest score difference between the two, and how many documents the shortcut decided. Then
both again with two busy-loop processes beside them (the slowdown under load). Vision objectives have no
shortcut: their "before" and "after" are the same code, timed for the record.

Run from the repository root (``make bench`` does)::

    python benchmarks/scoring_speed.py [--repeats 2]

The tables replace the ``scoring speed`` section of ``benchmarks/results/eval_overhead.md``.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from pathlib import Path

from _bench import REPO, SCORING_SPEED, cpu_name, offline, zoo_build

offline()

import torch  # noqa: E402
from eval_profile import busy_loops  # noqa: E402

from hm3.evaluate.quiet import quiet_libraries  # noqa: E402
from hm3.evaluate.threads import scoring_threads  # noqa: E402
from hm3.merge.spec import MergeSpec  # noqa: E402
from hm3.recipe import load_recipe  # noqa: E402
from hm3.routing.path import InferencePath  # noqa: E402
from hm3.search.candidate import Candidate  # noqa: E402
from hm3.search.models import CandidateModels  # noqa: E402
from hm3.search.session import load_inputs  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "eval_overhead.md"
START, END = SCORING_SPEED


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="scorings per cell (the fastest is kept)")
    parser.add_argument("--random-paths", type=int, default=3, help="random inference paths per zoo")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def candidates(recipe_file: Path, random_paths: int):
    """The evaluator and named good and broken candidate models of a recipe."""
    recipe = load_recipe(recipe_file)
    inputs = load_inputs(recipe)
    models = CandidateModels(inputs.pool, recipe, inputs.calibration)
    count = len(recipe.objectives)

    def merge(weights: list[float]) -> MergeSpec:
        return MergeSpec.from_recipe(recipe.parameter_level, recipe.model_weights(weights), recipe.seed)

    named = {
        f"corner {i}": Candidate.of_merge(merge([float(i == j) for j in range(count)])) for i in range(count)
    }
    centre = merge([1.0 / count] * count)
    named["centre"] = Candidate.of_merge(centre)
    routing = models.routing_pool(centre)
    layers = routing.num_layers
    backwards = tuple((routing.merged_index, layer) for layer in reversed(range(layers)))
    named["backwards (broken)"] = Candidate.routed(centre, InferencePath(backwards), "none", routing)
    rng = random.Random(0)
    for index in range(random_paths):
        path = tuple((rng.randrange(routing.num_models), rng.randrange(layers)) for _ in range(layers))
        named[f"random path {index} (broken)"] = Candidate.routed(
            centre, InferencePath(path), "none", routing
        )
    return inputs.evaluator, {name: models.build(candidate) for name, candidate in named.items()}


def score_before(evaluator, model) -> dict[str, float]:
    """The pre-issue-19 in-memory path: one lm-eval ``evaluate`` per objective."""
    if evaluator.is_vision:
        return evaluator.score(model, split="search")
    lm = evaluator._lm_for(model, evaluator.tokenizer)
    with scoring_threads(model), quiet_libraries():  # as Evaluator.score ran it
        return {o.name: o.score_with_lm_eval(lm, "search") for o in evaluator.objectives}


def fastest(function, repeats: int) -> tuple[float, dict[str, float]]:
    best, scores = float("inf"), {}
    for _ in range(repeats):
        start = time.perf_counter()
        scores = function()
        best = min(best, time.perf_counter() - start)
    return best, scores


def shortcut_share(evaluator, model) -> str:
    if evaluator.is_vision:
        return "-"
    lm = evaluator._lm_for(model, evaluator.tokenizer)
    greedy = lm_eval = 0
    for objective in evaluator.objectives:
        use = objective.prepared(lm, "search").use
        greedy, lm_eval = greedy + use.greedy, lm_eval + use.lm_eval
        use.greedy = use.lm_eval = 0
    return f"{100 * greedy / max(1, greedy + lm_eval):.0f}%"


def measure(evaluator, models, repeats: int, load: int) -> dict[str, dict]:
    rows = {}
    loops = busy_loops(load)
    try:
        time.sleep(1.0 if load else 0.0)
        for name, model in models.items():
            evaluator.score(model, split="search")  # first use builds the split's requests: not per candidate
            shortcut_share(evaluator, model)
            after, after_scores = fastest(lambda m=model: evaluator.score(m, split="search"), repeats)
            share = shortcut_share(evaluator, model)
            before, before_scores = fastest(lambda m=model: score_before(evaluator, m), repeats)
            difference = max(abs(after_scores[k] - before_scores[k]) for k in after_scores)
            rows[name] = {"before": before, "after": after, "difference": difference, "share": share}
            print(load, name, rows[name], flush=True)
    finally:
        for loop in loops:
            loop.kill()
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    zoos = {
        "toy LM (small)": REPO / "recipes" / "toy-lm.yaml",
        "toy LM (deep)": REPO / "recipes" / "toy-lm-deep.yaml",
        "toy ViT (small)": REPO / "recipes" / "toy-vit.yaml",
    }
    builds = {
        zoo: zoo_build(Path(load_recipe(recipe).base_model.path).parent) for zoo, recipe in zoos.items()
    }
    table = [
        "| zoo | candidate | before s | after s | speed-up | max score difference | documents decided by the "
        "shortcut | before, 2 busy loops | after, 2 busy loops | slowdown after under load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = [
        "| zoo | candidates per minute before | after | ratio | after, 2 busy loops | slowdown under load |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for zoo, recipe_file in zoos.items():
        evaluator, models = candidates(recipe_file, args.random_paths)
        idle = measure(evaluator, models, args.repeats, load=0)
        loaded = measure(evaluator, models, args.repeats, load=2)
        for name in models:
            i, b = idle[name], loaded[name]
            table.append(
                f"| {zoo} | {name} | {i['before']:.3f} | {i['after']:.3f} | {i['before'] / i['after']:.1f}x | "
                f"{max(i['difference'], b['difference']):.3g} | {i['share']} | {b['before']:.3f} | "
                f"{b['after']:.3f} | {b['after'] / i['after']:.1f}x |"
            )
        before = sum(r["before"] for r in idle.values()) / len(idle)
        after = sum(r["after"] for r in idle.values()) / len(idle)
        after_loaded = sum(r["after"] for r in loaded.values()) / len(loaded)
        summary.append(
            f"| {zoo} | {60 / before:.0f} | {60 / after:.0f} | {before / after:.1f}x | {60 / after_loaded:.0f} | "
            f"{after_loaded / after:.1f}x |"
        )
    section = [
        START,
        "## Scoring speed: before and after issue 19 (in memory, one thread)",
        "",
        f"`python benchmarks/scoring_speed.py --repeats {args.repeats}` on {cpu_name()} ({platform.machine()}), "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; zoo builds "
        + ", ".join(f"{zoo} `{build}`" for zoo, build in builds.items())
        + ". Seconds of one search-split scoring (fastest of "
        f"{args.repeats}), before (lm-eval `evaluate` per objective) and after (`Evaluator.score`), alternating "
        "per candidate, idle and beside two busy-loop processes.",
        "",
        *summary,
        "",
        *table,
        "",
        END,
    ]
    text = args.out.read_text() if args.out.is_file() else ""
    if START in text and END in text:
        text = text[: text.index(START)] + "\n".join(section) + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(section) + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
