"""Serving a preference the search never saw: `hm3 select --rollout` against a fresh search for it.

On the small toy LM zoo and the deep (12-layer) one (built if missing), one run of the zoo's recipe
(``recipes/toy-lm.yaml``, ``recipes/toy-lm-deep.yaml``) with ``agent.mode: conditioned`` (every other setting the
recipe's default: the optimised upper level, the centre + 3 Dirichlet samples, up to 1000 paths with patience;
the conditioned agent trains across preferences on their own merges). Then, for each of 5 unseen preferences —
Dirichlet samples of other seeds, none of them a preference the conditioned run searched:

* **rollout**: ``hm3 select RUN --preference λ --rollout`` — opening the run, loading the models, one greedy
  rollout of the run's policy, scored on the search split and logged — timed twice: in this (warmed) process,
  as a Python caller or a serving process runs it, and end to end as a user types it (a new ``hm3`` process:
  Python, torch, transformers and lm-eval imported first). Each rollout runs on its own copy of the run as it
  finished, so every measurement is a first rollout (a rollout repeated on one run is answered from its log);
* **fresh search**: a new run of the recipe's defaults (``agent.mode: per_preference``) whose only preference
  is λ (``preferences: {count: 1, include_centre: false, seed: S}``, S chosen so that its one sample is λ), end
  to end (references, upper level, path search), then ``hm3 select`` of its best front member for λ — timed the
  same two ways (in this process; ``hm3 merge --recipe`` then ``hm3 select`` as two new processes);
* **best member**: ``hm3 select`` (no rollout) on the conditioned run: what it already holds for λ;
* **the lr-0 policy's path**: the same conditioned run with ``agent.learning_rate: 0`` (its policy untrained:
  the prior alone, as ``agent_learning.py``'s ``_lr0`` rows), rolled out for λ — what the training adds.

The reward is the run's own R for λ on the search split (same zoo, split and normalisation for every run).
Writes ``benchmarks/results/select.md``, a section per zoo build; the runs live in
``benchmarks/scratch/select/<zoo>`` and a finished run and its measurements are reused. Before the first timing
the process rolls out one other preference (seed :data:`WARM_SEED`, untimed), so that no timed row pays the
process's one-off costs (imports, the merge kernels' first load) that the rows after it do not.

    .venv/bin/python benchmarks/select_speed.py
    BENCH_ZOOS=deep .venv/bin/python benchmarks/select_speed.py   # one zoo (small, deep): the others' sections stay
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench import REPO, kept_notes, marked_sections, offline, zoo_build, zoo_digest

offline()

ZOOS = {"small": "recipes/toy-lm.yaml", "deep": "recipes/toy-lm-deep.yaml"}
ZOO_SIZES = {"small": "small", "deep": "deep"}
UNSEEN_SEEDS = [101, 102, 103, 104, 105]
"""Sampling seeds of the unseen preferences (the conditioned run samples with the recipe's seed, 0)."""
WARM_SEED = 100
"""The seed of the preference rolled out, untimed, before the first timing."""
MEASURE_FORMAT = 6
"""Version of a kept measurement (2: the rollout's own reward beside what select chose, stop 39; 4: the
conditioned policy trained across the preferences' merges, with patience, stop 40; 5: the runs of
:data:`RUN_FORMAT` 4, stop 47; 6: every rollout a first one on a copy of the run, the process warmed first, and
both timed again as ``hm3`` commands, stop 50)."""
RUN_FORMAT = 5
"""Version of a kept run, conditioned or fresh (3: the conditioned agent trained across the preferences' merges,
a pool with nothing new passed over, the training's own patience, stop 40; 4: the patience window at most the
upper level's first round and PPO's rollout sized to it, stop 47): the code changed what the same recipe runs;
5: a kept run is never rolled out on — rollouts run on copies of it —, stop 50)."""
HM3 = Path(sys.executable).with_name("hm3")
"""The command line a user runs (the same environment's)."""
SCRATCH = REPO / "benchmarks" / "scratch" / "select"
RESULTS = REPO / "benchmarks" / "results" / "select.md"


def base_recipe(kind: str):
    from hm3.recipe import load_recipe

    return load_recipe(REPO / ZOOS[kind])


def conditioned_recipe(kind: str):
    recipe = base_recipe(kind)
    return recipe.model_copy(update={"agent": recipe.agent.model_copy(update={"mode": "conditioned"})})


def prior_recipe(kind: str):
    """The conditioned run with learning rate 0: the same agent's untrained policy (its prior) rolled out."""
    recipe = conditioned_recipe(kind)
    return recipe.model_copy(update={"agent": recipe.agent.model_copy(update={"learning_rate": 0.0})})


def fresh_recipe(kind: str, seed: int):
    recipe = base_recipe(kind)
    preferences = recipe.preferences.model_copy(update={"count": 1, "include_centre": False, "seed": seed})
    return recipe.model_copy(update={"preferences": preferences})


def finished_run(folder: Path, recipe, zoo: str) -> float:
    """Run ``recipe`` into ``folder`` unless a finished run of it on this zoo (and :data:`RUN_FORMAT`) is there; its
    wall seconds."""
    from hm3.search.progress import SearchProgress
    from hm3.search.run import run_search
    from hm3.store import RunStore

    stamp = folder / "wall.json"
    settings = recipe.model_dump_json()
    if stamp.is_file():
        wall = json.loads(stamp.read_text())
        same = (
            wall.get("zoo") == zoo and wall.get("recipe") == settings and wall.get("format", 1) == RUN_FORMAT
        )
        if same and (folder / "summary.json").is_file():
            return float(wall["seconds"])
    folder.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stamp.unlink(missing_ok=True)  # the benchmark's, not hm3's: --force keeps to hm3's
    store = RunStore.create(folder, recipe, force=True)
    try:
        with SearchProgress(enabled=sys.stdout.isatty()) as progress:
            run_search(recipe, store, progress)
    finally:
        store.close()
    seconds = time.perf_counter() - started
    stamp.write_text(json.dumps({"seconds": seconds, "zoo": zoo, "recipe": settings, "format": RUN_FORMAT}))
    return seconds


def log_length(folder: Path) -> int:
    """Candidates in the run's log."""
    from hm3.store import CANDIDATES_FILE

    with open(folder / CANDIDATES_FILE, encoding="utf-8") as handle:
        return sum(1 for _ in handle)


def on_a_copy(run: Path, act):
    """``act(copy)`` on a copy of the finished ``run`` (the kept run is never rolled out on); its result and the
    candidates the copy's log gained."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as scratch:
        copy = Path(scratch) / run.name
        shutil.copytree(run, copy)
        before = log_length(copy)
        result = act(copy)
        return result, log_length(copy) - before


def timed(act):
    """``act``'s result and its wall seconds."""
    started = time.perf_counter()
    result = act()
    return result, time.perf_counter() - started


def hm3(*arguments: str) -> str:
    """A new ``hm3`` process; its standard output (a failure stops the benchmark, naming the command)."""
    done = subprocess.run([str(HM3), *arguments], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"hm3 {' '.join(arguments)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def policy_reward(run: Path, text: str) -> float:
    """The reward of the path the policy of ``run`` rolls out for λ (``text``), on a copy of the run."""
    from hm3.search.rollout import roll_out

    rolled, _ = on_a_copy(run, lambda copy: roll_out(copy, text))
    return rolled.reward if rolled.below_start is None else rolled.below_start[1]


def preference_text(kind: str, seed: int) -> str:
    """The one preference ``fresh_recipe(kind, seed)`` samples, as ``hm3 select`` takes it."""
    from hm3.search.session import preferences

    return ",".join(repr(float(v)) for v in preferences(fresh_recipe(kind, seed))[0])


def fresh_search_on_the_command_line(kind: str, seed: int, text: str) -> tuple[float, float]:
    """``hm3 merge --recipe`` of the fresh recipe, then ``hm3 select`` of its member for λ, as two new processes:
    their wall seconds together and the member's reward (the run is not kept)."""
    from hm3.store import recipe_to_yaml

    with tempfile.TemporaryDirectory(dir=SCRATCH) as scratch:
        recipe_file, run = Path(scratch) / "recipe.yaml", Path(scratch) / "run"
        recipe_file.write_text(recipe_to_yaml(fresh_recipe(kind, seed)))
        started = time.perf_counter()
        hm3("merge", "--recipe", str(recipe_file), "--out", str(run), "--quiet")
        chosen = json.loads(hm3("select", str(run), "--preference", text, "--json"))
        return time.perf_counter() - started, float(chosen["reward"])


def measure(kind: str, conditioned: Path, prior: Path, seed: int, zoo: str) -> dict:
    """The rollout, the fresh search and the best member for the one preference of ``fresh_recipe(kind, seed)``,
    and the rollout of the learning-rate-0 run's policy (``prior``)."""
    from hm3.search.rollout import roll_out
    from hm3.search.select import select_member

    known = kept_row(kind, seed, zoo)
    if known is not None:
        return known
    text = preference_text(kind, seed)

    (rolled, rollout_seconds), new_candidates = on_a_copy(
        conditioned, lambda copy: timed(lambda: roll_out(copy, text))
    )
    (typed, cli_rollout_seconds), _ = on_a_copy(
        conditioned,
        lambda copy: timed(
            lambda: json.loads(hm3("select", str(copy), "--preference", text, "--rollout", "--json"))
        ),
    )
    member = select_member(conditioned, text)
    fresh_folder = SCRATCH / kind / f"fresh{seed}"
    fresh_seconds = finished_run(fresh_folder, fresh_recipe(kind, seed), zoo)
    fresh = select_member(fresh_folder, text)
    cli_fresh_seconds, cli_fresh_reward = fresh_search_on_the_command_line(kind, seed, text)
    result = {
        "format": MEASURE_FORMAT,
        "zoo": zoo,
        "preference": [float(v) for v in text.split(",")],
        "rollout_seconds": rollout_seconds,
        "cli_rollout_seconds": cli_rollout_seconds,
        "rollout_reward": rolled.reward,
        "cli_rollout_reward": float(typed["reward"]),
        "policy_reward": rolled.reward if rolled.below_start is None else rolled.below_start[1],
        "rollout_logged": new_candidates,
        "rollout_path": rolled.candidate.data().get("path"),
        "member_reward": member.reward,
        "fresh_seconds": fresh_seconds,
        "cli_fresh_seconds": cli_fresh_seconds,
        "fresh_reward": fresh.reward,
        "cli_fresh_reward": cli_fresh_reward,
        "fresh_candidates": log_length(fresh_folder),
        "prior_policy_reward": policy_reward(prior, text),
    }
    (SCRATCH / kind / f"unseen{seed}.json").write_text(json.dumps(result, indent=1))
    return result


def kept_row(kind: str, seed: int, zoo: str) -> dict | None:
    """The row of ``seed`` measured by an earlier invocation on this zoo in this format, if there is one."""
    cache = SCRATCH / kind / f"unseen{seed}.json"
    if not cache.is_file():
        return None
    known = json.loads(cache.read_text())
    return known if known.get("zoo") == zoo and known.get("format") == MEASURE_FORMAT else None


def section(kind: str) -> list[str]:
    """The measured table of one zoo, between its markers."""
    from hm3.zoo import ensure_zoo

    ensure_zoo("lm", size=ZOO_SIZES[kind])
    recipe = conditioned_recipe(kind)
    zoo = zoo_digest(recipe)
    conditioned = SCRATCH / kind / "conditioned"
    conditioned_seconds = finished_run(conditioned, recipe, zoo)
    prior = SCRATCH / kind / "conditioned_lr0"
    prior_seconds = finished_run(prior, prior_recipe(kind), zoo)
    if any(kept_row(kind, seed, zoo) is None for seed in UNSEEN_SEEDS):
        policy_reward(conditioned, preference_text(kind, WARM_SEED))  # untimed: the process's one-off costs
    rows = [measure(kind, conditioned, prior, seed, zoo) for seed in UNSEEN_SEEDS]
    ratio = [r["fresh_seconds"] / r["rollout_seconds"] for r in rows]
    typed = [r["cli_fresh_seconds"] / r["cli_rollout_seconds"] for r in rows]
    key = f"{kind} {zoo_build(Path(recipe.base_model.path).parent)}"
    # when the last of the rows was measured (a reused measurement keeps its own time)
    measured = max((SCRATCH / kind / f"unseen{seed}.json").stat().st_mtime for seed in UNSEEN_SEEDS)
    lines = [
        f"<!-- select {key}: start -->",
        f"## {kind} toy LM zoo, build `{key.split()[1]}` (`{ZOOS[kind]}`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M', time.localtime(measured))} on {platform.machine()}, {len(os.sched_getaffinity(0))} "
        f"cores. The conditioned run (`agent.mode: conditioned`, the recipe's other defaults) took "
        f"{conditioned_seconds:.0f} s; the same with `agent.learning_rate: 0` (its untrained policy: R lr-0 "
        f"policy's path) {prior_seconds:.0f} s.",
        "",
        "| unseen λ (seed) | rollout s | fresh search s | fresh / rollout | `hm3 select --rollout` s "
        "| `hm3 merge` + `hm3 select` s | ratio, commands | R rollout | R policy's path | R lr-0 policy's path "
        "| R fresh search | R best member of the conditioned run | rollout new candidates | fresh search candidates |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for seed, row, speedup, speedup_typed in zip(UNSEEN_SEEDS, rows, ratio, typed, strict=True):
        lam = ", ".join(f"{v:.2f}" for v in row["preference"])
        lines.append(
            f"| ({lam}) ({seed}) | {row['rollout_seconds']:.2f} | {row['fresh_seconds']:.0f} | {speedup:.0f}x "
            f"| {row['cli_rollout_seconds']:.1f} | {row['cli_fresh_seconds']:.0f} | {speedup_typed:.0f}x "
            f"| {row['rollout_reward']:+.4f} | {row['policy_reward']:+.4f} | {row['prior_policy_reward']:+.4f} "
            f"| {row['fresh_reward']:+.4f} "
            f"| {row['member_reward']:+.4f} "
            f"| {row['rollout_logged']} | {row['fresh_candidates']} |"
        )
    same = all(
        r["cli_rollout_reward"] == r["rollout_reward"] and r["cli_fresh_reward"] == r["fresh_reward"]
        for r in rows
    )
    lines += [
        "",
        f"Median speed-up {np.median(ratio):.0f}x (min {min(ratio):.0f}x) in a warmed process; as commands "
        f"{np.median(typed):.0f}x (min {min(typed):.0f}x), each `hm3` process's start included; the commands' "
        f"rewards {'equal' if same else 'differ from'} the in-process ones. Mean R: rollout "
        f"{np.mean([r['rollout_reward'] for r in rows]):+.4f} (the policy's paths "
        f"{np.mean([r['policy_reward'] for r in rows]):+.4f}, the lr-0 policy's "
        f"{np.mean([r['prior_policy_reward'] for r in rows]):+.4f}), fresh search "
        f"{np.mean([r['fresh_reward'] for r in rows]):+.4f}, best member "
        f"{np.mean([r['member_reward'] for r in rows]):+.4f}.",
        f"<!-- select {key}: end -->",
    ]
    return lines


def main() -> None:
    run_started = time.perf_counter()
    chosen = [k for k in os.environ.get("BENCH_ZOOS", ",".join(ZOOS)).split(",") if k in ZOOS]
    measured = {}
    for kind in chosen:
        lines = section(kind)
        measured[lines[0].removeprefix("<!-- select ").removesuffix(": start -->")] = lines
    # the file as it is now, not as it was before the measurements: another zoo's run beside this one keeps its section
    sections = {**marked_sections(RESULTS, "select"), **measured}
    lines = [
        "# Serving an unseen preference: `hm3 select --rollout` vs a fresh search",
        "",
        "Command: `.venv/bin/python benchmarks/select_speed.py` (`BENCH_ZOOS=small|deep`: one zoo; the other "
        "sections stay as measured)  ",
        f"Last invocation: {time.strftime('%Y-%m-%d %H:%M')}, wall time {time.perf_counter() - run_started:.0f} s "
        "(runs and measurements reused from benchmarks/scratch/select are not re-timed)  ",
        "Each unseen λ is the one Dirichlet sample of seed S; the fresh search is a new run of the zoo recipe's "
        "defaults with that λ as its only preference. R: the run's reward for λ on the search split (weighted "
        "sum of the normalised scores − β1·T). R rollout: what `select --rollout` returns — the policy's path, "
        "or the path it started from where the policy's path scored below it (R policy's path). Seconds: in one "
        "warmed Python process (`hm3.search.rollout.roll_out`, the fresh run through `hm3.search.run.run_search`), "
        "and as the `hm3` commands a user types, each a new process.",
        "",
        *[
            line
            for kind in ZOOS
            for key in sorted(sections)
            if key.split()[0] == kind
            for line in sections[key] + [""]
        ],
        *kept_notes(RESULTS),
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
