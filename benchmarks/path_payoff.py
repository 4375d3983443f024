"""Would a longer path search pay? HM3's path level around the optimised merge, searched far past its patience.

`search_quality.md` finds HM3 0.4-2.1% below its `param_only` ablation on every zoo: the path level's searches
(stopped by their patience after 4-30 paths) never add to the upper level's front as much as the merges their
budget would have bought. `agent_learning.md` finds the edit agent improving its best path over 100-200 paths.
So either the patience window cuts off path searches that would pay later — and a larger budget, as in the
paper (1000 iterations per preference), would let HM3 win — or there is nothing around the optimised merge
that pays. This study tells which.

It runs ``hm3`` exactly as the search quality benchmark does (same recipe, seed, preferences, the same 56-merge
first round of the upper level — checked key for key against that benchmark's run — each preference's search
starting from the merge its scalarization ranks best, screened paths) but with no patience and
a path budget of ``BENCH_ITERATIONS`` (100) full scorings per preference (``agent.iterations``; the benchmark
gives each 14, and its patience stops a search after 4 without progress), and reads its log. Once a preference's
paths have spent 5, 10, 25, 50 and 100 full scorings:

* **gain**: the hypervolume its fully scored paths add to the first round's front (search split, on the
  fine-tuned models' scale: the measure of :class:`hm3.search.allocation.FrontGain`, which decides in HM3);
* **spend**: what those paths cost, in full scorings of the search split (a screen counts its share);
* **paid**: gain ≥ bar × spend, for two bars — hm3's own (what the first round's last quarter bought per merge)
  and a lower one, what `param_only`'s last quarter of its 112 merges bought per merge (same seed: the merges a
  longer path search displaces once the upper level has had more budget);
* **reward**: the best path's reward for λ over the start merge's (fully scored paths).

Each run lives in ``benchmarks/scratch/path_payoff/<zoo>/seed<N>`` and is reused when it finished on this zoo
build and settings; the `param_only` and `hm3` runs it compares with are the search quality benchmark's
(run there if missing).

    .venv/bin/python benchmarks/path_payoff.py                 # deep zoo, seeds 0-2, 100 per preference
    BENCH_ZOOS=deep,vit BENCH_SEEDS=0 BENCH_ITERATIONS=25 .venv/bin/python benchmarks/path_payoff.py

Writes ``benchmarks/results/path_payoff.md`` (one section per zoo build; notes under "## Analysis" kept).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_quality as quality  # noqa: E402
from _bench import REPO, cpu_name, exit_with, kept_notes, marked_sections, write_results  # noqa: E402

ITERATIONS = int(os.environ.get("BENCH_ITERATIONS", "100"))
"""Each preference's path budget, in full scorings of the search split (``agent.iterations``: a screened path
costs its screen's share, so this buys 3-4 times as many new paths)."""
CHECKPOINTS = [c for c in (5, 10, 25, 50, 100, 250, 500, 1000) if c < ITERATIONS] + [ITERATIONS]
SCRATCH = REPO / "benchmarks" / "scratch" / "path_payoff"
RESULTS = REPO / "benchmarks" / "results" / "path_payoff.md"


def long_recipe(kind: str, seed: int):
    """``hm3``'s recipe of the search quality benchmark with no patience and :data:`ITERATIONS` per preference
    (the upper level's first round as there: its size is set by the benchmark's budget, not by the paths)."""
    from hm3.search.run import hm3_budget

    recipe = quality.optimised(kind, seed, hm3_budget(quality.recipe_for(kind, seed)))
    agent = recipe.agent.model_copy(update={"iterations": ITERATIONS, "patience": None})
    return recipe.model_copy(update={"agent": agent})


def run_long(kind: str, seed: int) -> Path:
    """The long-path run of ``seed`` (reused when it finished with these settings on this zoo build)."""
    from hm3.search.progress import SearchProgress
    from hm3.search.run import run_search
    from hm3.store import RunStore

    folder = SCRATCH / kind / f"seed{seed}"
    recipe = long_recipe(kind, seed)
    stamp = {"zoo": quality.zoo_fingerprint(kind), "recipe": quality.run_settings(recipe, "hm3")}
    done = folder / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("stamp") == stamp:
        return folder
    done.unlink(missing_ok=True)
    store = RunStore.create(folder, recipe, force=True)
    started = time.perf_counter()
    with SearchProgress(enabled=sys.stdout.isatty()) as progress:
        run_search(recipe, store, progress, method="hm3")
    partial = done.with_suffix(".partial")
    partial.write_text(json.dumps({"stamp": stamp, "seconds": time.perf_counter() - started}))
    partial.replace(done)  # the marker last: a kill leaves a run that is redone
    return folder


def log_records(folder: Path) -> list[dict]:
    """A run's candidate log, in the order written, read as hm3 reads it."""
    from hm3.store import RunStore

    return list(RunStore(folder).candidates())


def run_reward(folder: Path):
    """The run's reward: its recipe's, on the scale its search used (the fine-tuned models' search-split ideal and
    nadir, oriented, as its summary records them)."""
    from hm3.moo.reward import reward_from_recipe
    from hm3.moo.scalarization import ObjectiveScale
    from hm3.recipe import load_recipe

    summary = json.loads((folder / "summary.json").read_text())
    scale = ObjectiveScale(tuple(summary["ideal_point_search"]), tuple(summary["nadir_point_search"]))
    return reward_from_recipe(load_recipe(folder / "recipe.yaml"), scale)


def upper_level_merges(records: list[dict]) -> list[dict]:
    """The upper level's distinct search-split records, in the order scored."""
    from hm3.search.upper_level import UPPER_LEVEL

    seen: set[str] = set()
    merges = []
    for record in records:
        if record.get("label") == UPPER_LEVEL and record.get("split") == "search":
            if record["key"] not in seen:
                seen.add(record["key"])
                merges.append(record)
    return merges


def paid(added: float, bar: float, spend: float) -> bool:
    """HM3's rule (:meth:`hm3.search.allocation.FrontGain.pays`): paths pay when they add more than nothing and
    at least ``bar`` per full scoring they cost."""
    from hm3.search.allocation import IMPROVEMENT

    return added > IMPROVEMENT and added >= bar * spend


def late_bar(param_only: Path, reward) -> float:
    """What `param_only`'s last quarter of merges bought per merge (normalised as ``reward`` does)."""
    from hm3.search.allocation import FrontGain

    points = [reward.normalised(r["scores"]) for r in upper_level_merges(log_records(param_only))]
    gain = FrontGain.of_round(np.array(points))
    return gain.bar if gain is not None else 0.0


def preference_searches(folder: Path, records: list[dict], reward) -> tuple[list[dict], object]:
    """Per preference: the start merge's reward, and per new path (in the order first tried) the spend so far,
    the fully scored points so far and the best reward so far; with the run's first-round :class:`FrontGain`
    (``records``: the run's log)."""
    from hm3.search.allocation import front_gain
    from hm3.search.upper_level import UPPER_LEVEL

    summary = json.loads((folder / "summary.json").read_text())
    gain = front_gain(
        records, summary["allocation"]["upper_level_first_round"], reward.normalised, UPPER_LEVEL
    )
    full = max(r["documents"] for r in records if r.get("split") == "search")
    charged = {
        ("path", "search"),
        ("path", "screen"),
        ("merge", "screen"),
    }  # the start's screen: for the paths
    searches = []
    for file in sorted((folder / "preferences").glob("p*.json")):
        saved = json.loads(file.read_text())
        index, preference = saved["index"], saved["preference"]
        start = reward.reward(saved["candidates"][0]["scores"], preference, len(saved["merged_path"]))
        spend, points, best = 0.0, [], start
        steps, seen = [], set()
        for record in records:
            level, split = record.get("level"), record.get("split")
            if record.get("preference_index") != index or (level, split) not in charged:
                continue
            if (record["key"], split) in seen:
                continue
            seen.add((record["key"], split))
            spend += record["documents"] / full
            if level == "merge":
                continue
            if split == "search":
                points.append(reward.normalised(record["scores"]))
                best = max(best, reward.reward(record["scores"], preference, len(record["path"])))
            step = {"spend": spend, "points": list(points), "best": best}
            if split == "search" and (record["key"], "screen") in seen:
                steps[-1] = step  # a screened path scored in full: the same new path
            else:
                steps.append(step)
        searches.append({"preference": preference, "start": start, "steps": steps})
    return searches, gain


def zoo_section(kind: str, seeds: list[int], started: float) -> list[str]:
    from hm3.search.run import hm3_budget

    quality.ensure_bench_zoo(kind)
    rows: dict[int, list[dict]] = {c: [] for c in CHECKPOINTS}
    pooled, same_round, wall = [], [], []
    for seed in seeds:
        budget = hm3_budget(quality.recipe_for(kind, seed))
        print(
            f"[{time.perf_counter() - started:7.0f} s] {kind} seed {seed}: search quality's hm3 and param_only"
        )
        for method in ("hm3", "param_only"):
            quality.run_one(kind, seed, method, budget)
        print(
            f"[{time.perf_counter() - started:7.0f} s] {kind} seed {seed}: paths, {ITERATIONS} per preference"
        )
        folder = run_long(kind, seed)
        wall.append(json.loads((folder / "done.json").read_text())["seconds"])
        reward, records = run_reward(folder), log_records(folder)
        searches, gain = preference_searches(folder, records, reward)
        size = json.loads((folder / "summary.json").read_text())["allocation"]["upper_level_first_round"]
        reference = quality.SCRATCH / kind / f"seed{seed}"
        ours = upper_level_merges(records)[:size]
        theirs = upper_level_merges(log_records(reference / "hm3"))[:size]
        same_round.append([r["key"] for r in ours] == [r["key"] for r in theirs])
        bars = {"round": gain.bar, "late": late_bar(reference / "param_only", reward)}
        for search in (s for s in searches if s["steps"]):  # a search that met only shared paths has none
            for checkpoint in CHECKPOINTS:
                step = next((s for s in search["steps"] if s["spend"] >= checkpoint), search["steps"][-1])
                added = volume_added(gain, step["points"])
                rows[checkpoint].append(
                    {
                        "spend": step["spend"],
                        "added": added,
                        "paid_round": paid(added, bars["round"], step["spend"]),
                        "paid_late": paid(added, bars["late"], step["spend"]),
                        "ratio": added / (bars["round"] * step["spend"]) if bars["round"] > 0 else np.inf,
                        "reward": step["best"] - search["start"],
                        "paths": search["steps"].index(step) + 1,
                        "reached": search["steps"][-1]["spend"] >= min(checkpoint, ITERATIONS - 1),
                    }
                )
        every = [p for s in searches if s["steps"] for p in s["steps"][-1]["points"]]
        spend = sum(s["steps"][-1]["spend"] for s in searches if s["steps"])
        added = volume_added(gain, every)
        pooled.append(
            f"| {seed} | {spend:.1f} | {added:.5f} | {gain.bar:.5f} | {bars['late']:.5f} | "
            f"{added / spend:.6f} | {'yes' if paid(added, bars['round'], spend) else 'no'} | "
            f"{'yes' if paid(added, bars['late'], spend) else 'no'} |"
        )
    key = quality.section_key(kind)
    lines = [
        f"<!-- zoo {key}: start -->",
        f"## {kind} zoo ({quality.ZOOS[kind].describe()}), build `{quality.recipe_zoo_build(kind)}`",
        "",
        f"Measured on {cpu_name()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; seeds {seeds}; "
        f"{ITERATIONS} full scorings of paths per preference; the upper level's first round the search quality "
        f"benchmark's own, key for key: {'yes' if all(same_round) else 'NO'} ({sum(same_round)}/{len(same_round)}); "
        f"wall s per run {np.mean(wall):.0f}.",
        "",
        "Per preference search (seeds × preferences), once its paths have spent that many full scorings: the new "
        "paths tried (mean), how many searches were still going (within a full scoring of the budget at the last "
        "row; a search ends early where its policy only revisits paths it has scored: its training ends after "
        "10 episodes per path of its budget, and its final state counts on), the hypervolume its paths add to the "
        "first round's front, that gain per full scoring against hm3's bar (1 = as much as the round's last merges "
        "bought), how many searches paid by hm3's bar and by the "
        "lower bar of `param_only`'s last merges, and the best reward over the start merge.",
        "",
        "| spend | new paths | still going | hypervolume added | gain ÷ (bar × spend), median (max) "
        "| paid, hm3's bar | paid, late bar | best reward − merge's | improved |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for checkpoint in CHECKPOINTS:
        found = rows[checkpoint]
        if not found:
            continue
        ratios = np.array([f["ratio"] for f in found])
        gains = [f["reward"] for f in found]
        lines.append(
            f"| {checkpoint} | {np.mean([f['paths'] for f in found]):.0f} | "
            f"{sum(f['reached'] for f in found)}/{len(found)} | "
            f"{np.mean([f['added'] for f in found]):.5f} | {np.median(ratios):.3f} ({ratios.max():.3f}) | "
            f"{sum(f['paid_round'] for f in found)}/{len(found)} | {sum(f['paid_late'] for f in found)}/"
            f"{len(found)} | {np.mean(gains):+.4f} ± {np.std(gains):.4f} | "
            f"{sum(g > 1e-9 for g in gains)}/{len(found)} |"
        )
    lines += [
        "",
        "Per run, every preference's paths together at the end (full scorings spent; hypervolume added to the "
        "first round's front; the two bars, per full scoring; the gain per full scoring; paid by each bar):",
        "",
        "| seed | spend | hypervolume added | hm3's bar | late bar | gain per full scoring | paid (hm3's bar) | "
        "paid (late bar) |",
        "|---:|---:|---:|---:|---:|---:|---|---|",
        *pooled,
        *weak_starts(kind, seeds),
        f"<!-- zoo {key}: end -->",
    ]
    return lines


def weak_starts(kind: str, seeds: list[int]) -> list[str]:
    """Where the deep zoo's path searches from λ-weighted merges (``agent_learning.md``'s edit agent, 200 paths,
    its records in ``benchmarks/scratch/agent_learning``) end, against the best merge of the upper level's first
    round for the same λ (the search quality benchmark's ``hm3`` run, same seed), in that benchmark's reward (raw
    scores, the recipe's length penalty). Nothing where those records are missing."""
    if kind != "deep":
        return []
    import agent_learning as learning

    from hm3.moo.reward import reward_from_recipe
    from hm3.recipe import load_recipe

    rows = []
    for seed in seeds:
        run = quality.SCRATCH / kind / f"seed{seed}" / "hm3"
        reward = reward_from_recipe(load_recipe(run / "recipe.yaml"))
        size = json.loads((run / "summary.json").read_text())["allocation"]["upper_level_first_round"]
        merges = upper_level_merges(log_records(run))[:size]
        layers = len(json.loads((run / "preferences" / "p000.json").read_text())["merged_path"])
        for index, preference in enumerate(learning.PREFERENCES):
            file = learning.SCRATCH / f"seed{seed}-pref{index}-ppo_edit-budget200.json"
            if not file.is_file():
                continue
            record = json.loads(file.read_text())
            best_merge = max(reward.reward(m["scores"], preference, layers) for m in merges)
            best_path = record["base"] + record["curve"][-1]
            rows.append(
                f"| {seed} | {preference} | {record['base']:.3f} | {best_path:.3f} | {best_merge:.3f} | "
                f"{'yes' if best_path > best_merge else 'no'} |"
            )
    if not rows:
        return []
    return [
        "",
        "From λ-weighted merges (`agent_learning.md`'s edit agent, 200 paths, its records): where the best path "
        "ends, against the best merge of this seed's first round for the same λ (that benchmark's reward: raw "
        "scores, the length penalty):",
        "",
        "| seed | λ | λ-weighted merge | best path from it | first round's best merge | path above it |",
        "|---:|---|---:|---:|---:|---|",
        *rows,
    ]


def volume_added(gain, points: list) -> float:
    """Hypervolume ``points`` add to the first round's front."""
    from hm3.moo.hypervolume import REFERENCE_OFFSET, hypervolume

    if not points:
        return 0.0
    stacked = np.vstack([gain.archive, np.array(points)])
    return max(0.0, hypervolume(stacked, np.full(stacked.shape[1], REFERENCE_OFFSET)) - gain.base)


def main() -> None:
    started = time.perf_counter()
    seeds = quality.selected("BENCH_SEEDS", quality.SEEDS)
    kinds = quality.selected("BENCH_ZOOS", list(quality.ZOOS)) if os.environ.get("BENCH_ZOOS") else ["deep"]
    measured = {quality.section_key(kind): zoo_section(kind, seeds, started) for kind in kinds}
    # the other zoos' sections as the file holds them now (a run for another zoo beside this one keeps its own)
    every = {**marked_sections(RESULTS, "zoo"), **measured}
    ordered = [line for key in sorted(every) for line in every[key]]
    lines = [
        "# Path payoff: would a longer path search pay around the optimised merge?",
        "",
        "Command: `.venv/bin/python benchmarks/path_payoff.py` (default: deep zoo, seeds 0-2, "
        "`BENCH_ITERATIONS=100`)  ",
        f"Last invocation: {cpu_name()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}; zoos "
        f"{', '.join(kinds)}; wall time {time.perf_counter() - started:.0f} s (reused runs are not re-timed)  ",
        "What it runs: `hm3` as `benchmarks/search_quality.py` does (same recipe, seed, first round, "
        "preferences and start merges, screened paths) with no patience and a fixed path budget per "
        "preference; hypervolume on the search split, normalised on the fine-tuned models' scale, reference "
        "point -0.1 (HM3's own `FrontGain`). One section per zoo build.",
        "",
        *ordered,
        "",
    ]
    write_results(RESULTS, lines + kept_notes(RESULTS))


if __name__ == "__main__":
    exit_with(main, "path_payoff")
