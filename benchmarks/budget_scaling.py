"""Does the path level's cost shrink with the budget? HM3 against its own `param_only` ablation at the search
quality benchmark's budget and at twice (or more) of it.

`search_quality.md` measures HM3 and every baseline at one budget, the paper configuration's (112 full scorings on
the toy zoos), where HM3 trails `param_only` by about 1% and the difference is what the path level spends
finding out that its paths do not pay (its probe window and one window per other preference: ~8-20 full
scorings, set by its patience, not by the budget). This study runs the same two recipes (`hm3`: half the budget
for the upper level's first round, the rest for paths, what they do not spend given back; `param_only`: every
candidate a merge of the same optimiser) at ``BUDGET_FACTORS`` times that budget, on the same seeds, and reports
the held-out hypervolume of both, one normalisation per zoo over every front of both methods at every budget and
the zoo's reference models. The factor-1 runs are the search quality benchmark's own (reused from its scratch,
run there if missing); the others live in ``benchmarks/scratch/budget_scaling``, reused when finished.

It is an analysis of one question, not the head-to-head: the issue's comparison stays at the paper
configuration's budget (`search_quality.md`).

    .venv/bin/python benchmarks/budget_scaling.py                    # lm zoo, factors 1 and 2, seeds 0-2
    BENCH_ZOOS=lm,deep BENCH_FACTORS=1,2 .venv/bin/python benchmarks/budget_scaling.py

Writes ``benchmarks/results/budget_scaling.md`` (its notes under "## Analysis" are kept).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_quality as quality  # noqa: E402
from _bench import REPO, cpu_name, kept_notes, marked_sections  # noqa: E402

METHODS = ("hm3", "param_only")
SCRATCH = REPO / "benchmarks" / "scratch" / "budget_scaling"
RESULTS = REPO / "benchmarks" / "results" / "budget_scaling.md"


def factors() -> list[int]:
    return [int(v) for v in os.environ.get("BENCH_FACTORS", "1,2").split(",")]


def scratch_for(factor: int) -> Path:
    """The factor-1 runs are the search quality benchmark's."""
    return quality.SCRATCH if factor == 1 else SCRATCH / f"x{factor}"


def path_spend(summary: dict) -> float:
    """Full scorings' worth of documents the path level spent (0 for `param_only`)."""
    allocation = summary.get("allocation") or {}
    return float(sum(allocation.get("paths_per_preference", [])))


def zoo_section(kind: str, seeds: list[int], started: float) -> list[str]:
    from hm3.baselines import hm3_budget
    from hm3.moo.hypervolume import Normalization

    quality.ensure_bench_zoo(kind)
    runs: dict[tuple[int, str, int], dict] = {}
    for factor in factors():
        for seed in seeds:
            budget = factor * hm3_budget(quality.recipe_for(kind, seed))
            for method in METHODS:
                print(
                    f"[{time.perf_counter() - started:7.0f} s] {kind} x{factor} seed {seed} {method} ({budget})"
                )
                runs[(factor, method, seed)] = quality.run_one(
                    kind, seed, method, budget, scratch_for(factor)
                )
    fronts = [run["front"] for run in runs.values()]
    names = fronts[0]["objectives"]
    signs = np.array([1.0 if up else -1.0 for up in fronts[0]["higher_is_better"]])
    references = [
        np.array([r["scores"]["heldout"][o] for o in names]) * signs for f in fronts for r in f["references"]
    ]
    normalization = Normalization.fit(*[quality.heldout_points(f) for f in fronts], *references)
    volume = {
        key: normalization.hypervolume(quality.heldout_points(run["front"])) for key, run in runs.items()
    }
    key = quality.section_key(kind)
    lines = [
        f"<!-- zoo {key}: start -->",
        f"## {kind} zoo ({quality.ZOOS[kind].describe()}), build `{quality.recipe_zoo_build(kind)}`",
        "",
        f"Measured on {cpu_name()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; seeds {seeds}.",
        "",
        "| budget | hm3 held-out HV | `param_only` | hm3 − `param_only` per seed | hm3 path spend per seed "
        "| hm3 merges per seed | wall s (hm3 / `param_only`) |",
        "|---:|---:|---:|---|---|---|---:|",
    ]
    for factor in factors():
        budget = factor * hm3_budget(quality.recipe_for(kind, seeds[0]))
        ours = [volume[(factor, "hm3", s)] for s in seeds]
        theirs = [volume[(factor, "param_only", s)] for s in seeds]
        spend = [path_spend(runs[(factor, "hm3", s)]["summary"]) for s in seeds]
        merges = [merge_count(runs[(factor, "hm3", s)]["summary"]) for s in seeds]
        seconds = [np.mean([runs[(factor, m, s)]["seconds"] for s in seeds]) for m in METHODS]
        lines.append(
            f"| {budget} | {np.mean(ours):.4f} ± {np.std(ours):.4f} | {np.mean(theirs):.4f} ± {np.std(theirs):.4f} "
            f"| {' / '.join(f'{a - b:+.4f}' for a, b in zip(ours, theirs, strict=True))} "
            f"| {' / '.join(f'{v:.2f}' for v in spend)} | {' / '.join(str(m) for m in merges)} "
            f"| {seconds[0]:.0f} / {seconds[1]:.0f} |"
        )
    return [*lines, f"<!-- zoo {key}: end -->", ""]


def merge_count(summary: dict) -> int:
    """Merges the upper level scored: its first round and what the paths gave back."""
    allocation = summary.get("allocation") or {}
    return int(allocation.get("upper_level_first_round", 0) + allocation.get("given_back", 0))


def main() -> None:
    started = time.perf_counter()
    seeds = quality.selected("BENCH_SEEDS", quality.SEEDS)
    kinds = quality.selected("BENCH_ZOOS", list(quality.ZOOS)) if os.environ.get("BENCH_ZOOS") else ["lm"]
    measured = {quality.section_key(kind): zoo_section(kind, seeds, started)[:-1] for kind in kinds}
    # a run of some zoos keeps the other zoos' and builds' sections as the file holds them now (a run beside it)
    every = {**marked_sections(RESULTS, "zoo"), **measured}
    ordered = [
        line
        for kind in quality.ZOOS
        for key in sorted(every)
        if key.split()[0] == kind
        for line in every[key]
    ]
    lines = [
        "# Budget scaling: HM3 against its `param_only` ablation at 1x and more of the benchmark's budget",
        "",
        "Command: `BENCH_ZOOS=lm,deep BENCH_FACTORS=1,2 .venv/bin/python benchmarks/budget_scaling.py` (default: "
        "lm, factors 1 and 2)  ",
        f"Last invocation: {cpu_name()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}; zoos "
        f"{', '.join(kinds)}, factors {factors()}; wall time {time.perf_counter() - started:.0f} s (reused runs "
        "are not re-timed)  ",
        "Budget: the search quality benchmark's (the paper configuration's, in full scorings of the search "
        "split) times the factor; `hm3` and `param_only` run exactly as there (`benchmarks/search_quality.py`: "
        f"{quality.UPPER_SHARE:.0%} for the upper level's first round, the rest for paths, what they leave "
        "given back to the upper level, at most its first round again). Held-out hypervolume: one min-max "
        "normalisation per zoo over every front in its table and the zoo's reference models (so the 1x figures "
        "may differ from `search_quality.md`'s, whose normalisation also holds the baselines). Path spend: full "
        "scorings the path level spent (`summary.json` allocation). One section per zoo build.",
        "",
        *ordered,
        "",
    ]
    RESULTS.write_text("\n".join(lines + kept_notes(RESULTS)) + "\n")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
