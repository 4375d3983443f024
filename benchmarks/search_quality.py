"""Is HM3 better than what a user already has, for the same compute? HM3 vs every baseline, equal budgets.

On the small toy LM zoo, the small toy vision zoo, the deep (12-layer) toy LM zoo and the small toy LM zoo built
as qwen2 models (a zoo no recipe ships for: the small LM recipe re-pointed at it), each built if missing, for
each seed, HM3 and each baseline (`hm3 baseline`) run on the zoo's recipe with the same search split and the
same budget — the documents scored on the search split, in units of one full scoring (HM3's paper
configuration's P × (iterations + 1) candidates; a path screened on a part of the split costs that part's
share). Then, per zoo, one normalisation of the held-out scores over every point of every method, seed and
reference, and:

* held-out hypervolume of each method's front, mean ± std over seeds;
* best held-out score per task (mean over seeds);
* how many HM3 front members dominate each baseline's best member (its best equal-weight held-out mean);
* evaluations used and wall time.

Writes ``benchmarks/results/search_quality.md`` (``search_quality_quick.md`` with ``BENCH_QUICK=1``): one section
per zoo and build of it (the fingerprint of its weights: another CPU vendor builds another zoo from the same
seed), the sections of other builds kept as they were measured; the fronts overlaid in
``search_quality_<zoo>_<build>.png`` and the anytime curves in ``search_quality_anytime_<zoo>_<build>.png``. Each
run lives in ``benchmarks/scratch/search_quality/...``; a finished run is reused, so an interrupted benchmark
continues.

    .venv/bin/python benchmarks/search_quality.py              # 3 seeds, 7 preferences x 16 candidates
    BENCH_QUICK=1 .venv/bin/python benchmarks/search_quality.py   # 1 seed, 4 preferences x 9, for a first look
    BENCH_ZOOS=deep .venv/bin/python benchmarks/search_quality.py  # some zoos (lm, vit, deep, qwen2): their
                                                                    # sections are rewritten, the others' kept

Several processes may share the work: ``BENCH_SEEDS=2 BENCH_METHODS=cmaes,evo_path`` runs only those runs
(and writes no table); a run another live process is doing is waited for, not redone.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _bench import REPO, cpu_name, kept_notes, marked_sections, offline, zoo_build, zoo_digest
from _hindsight import hindsight_rows

offline()

from hm3.recipe import AgentConfig  # noqa: E402
from hm3.run_fingerprint import FORMAT as RUN_FORMAT  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
SEEDS = [0] if QUICK else [0, 1, 2]
PREFERENCE_SAMPLES = 0 if QUICK else 3  # + K corners + centre
ITERATIONS = 8 if QUICK else 15
METHODS = ["hm3", "hm3_paper", "uniform", "grid", "nsga2", "cmaes", "evo_path", "param_only", "arch_only"]
HM3_VARIANTS = ["hm3", "hm3_paper", "param_only", "arch_only"]
"""HM3 and its ablations; the other methods (but ``uniform``, three fixed merges) are the baselines."""
UPPER_SHARE = 0.5
"""``hm3``'s share of the budget for its optimised upper level; the paths get the rest, split over the
preferences. ``hm3_paper`` is the paper's weights = λ (its P × (1 + iterations) defines the budget)."""
AGENT_METHODS = ("hm3", "hm3_paper", "arch_only")
"""The methods that train the path agent; the others use only ``agent.iterations`` (their budget's size)."""
PPO_SETTINGS = frozenset(AgentConfig.model_fields) - {"iterations", "mode", "patience"}
"""The agent's training settings: a run of a method that trains no agent does not depend on them."""


@dataclass(frozen=True)
class BenchZoo:
    """A zoo the benchmark runs on: the shipped recipe it runs and what ``hm3 zoo build`` makes its models. A zoo
    the project does not ship a recipe for (another family) runs the shipped recipe of its kind and size with
    every path into the shipped zoo's folder re-pointed at its own: the same tasks, budget and defaults, on
    models the defaults were never looked at on."""

    recipe: str
    kind: str
    family: str | None
    size: str

    @property
    def shipped(self) -> bool:
        return self.family in (None, "llama")

    @property
    def folder(self) -> str:
        """The zoo's folder name (``hm3 zoo build``'s default)."""
        return f"{self.kind}-{self.family or 'clip'}-{self.size}"

    def describe(self) -> str:
        return (
            self.recipe
            if self.shipped
            else f"{self.recipe} on `zoo/{self.folder}`, a zoo with no recipe of its own"
        )


ZOOS = {
    "lm": BenchZoo("recipes/toy-lm.yaml", "lm", "llama", "small"),
    "vit": BenchZoo("recipes/toy-vit.yaml", "vit", None, "small"),
    "deep": BenchZoo("recipes/toy-lm-deep.yaml", "lm", "llama", "deep"),
    "qwen2": BenchZoo("recipes/toy-lm.yaml", "lm", "qwen2", "small"),
}
"""The zoos, in table order: the three the recipes ship for, and the small LM zoo built as qwen2 models (issue 20:
defaults tuned to the shipped zoos would show on zoos the project does not ship)."""
SCRATCH = REPO / "benchmarks" / "scratch" / "search_quality" / ("quick" if QUICK else "full")
RESULTS = REPO / "benchmarks" / "results"


def ensure_bench_zoo(kind: str) -> Path:
    """The zoo's folder, built first if it is missing (``hm3 zoo build``)."""
    from hm3.zoo import ensure_zoo

    zoo = ZOOS[kind]
    return ensure_zoo(zoo.kind, family=zoo.family, size=zoo.size)


@functools.cache
def zoo_recipe(kind: str):
    """The recipe the zoo runs: its shipped recipe, or for a zoo the project ships none for, the shipped recipe of
    its kind and size re-pointed at its folder (written to the scratch, so that a run's stored recipe names it)."""
    from hm3.recipe import load_recipe

    zoo = ZOOS[kind]
    shipped = REPO / zoo.recipe
    if zoo.shipped:
        return load_recipe(shipped)
    shipped_zoo = Path(load_recipe(shipped).base_model.path).parent
    relative = f"../zoo/{shipped_zoo.name}/"
    text = shipped.read_text()
    if relative not in text:
        raise SystemExit(
            f"{zoo.recipe} does not name its models under {relative}: cannot re-point it at {kind}"
        )
    out = SCRATCH.parent / "recipes" / f"{kind}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    header = f"# {zoo.recipe} re-pointed at zoo/{zoo.folder} by benchmarks/search_quality.py\n"
    out.write_text(header + text.replace(relative, f"{ensure_bench_zoo(kind)}/"))
    recipe = load_recipe(out)
    paths = [
        recipe.base_model.path,
        *(m.path for m in recipe.models),
        *(o.task or "" for o in recipe.objectives),
    ]
    if any(str(shipped_zoo) in str(path) for path in paths):
        raise SystemExit(f"{out} still names {shipped_zoo}")
    return recipe


def recipe_for(kind: str, seed: int):
    """The paper's configuration on the zoo's recipe: weights = λ, the K corners + the centre + the samples,
    every path of ``ITERATIONS`` (no patience), each scored on the whole search split (no screening), by the
    paper's agent (``agent.actions: path``). It defines the budget (P × (1 + iterations)); ``hm3_paper``,
    ``arch_only`` and the baselines run it (the baselines as before: ``cmaes`` starts from each λ, corners
    included)."""

    recipe = zoo_recipe(kind)
    return recipe.model_copy(
        update={
            "seed": seed,
            "parameter_level": recipe.parameter_level.model_copy(update={"weights": "preference"}),
            "preferences": recipe.preferences.model_copy(
                update={"count": PREFERENCE_SAMPLES, "include_corners": True}
            ),
            "architecture_level": recipe.architecture_level.model_copy(update={"screen_paths": False}),
            "agent": recipe.agent.model_copy(
                update={"iterations": ITERATIONS, "patience": None, "actions": "path"}
            ),
        }
    )


def optimised(kind: str, seed: int, budget: int):
    """``hm3``'s recipe: the zoo recipe's defaults (the optimised upper level, no corners, patience) with
    ``UPPER_SHARE`` of ``budget`` for the upper level's first round and the rest split over the preferences'
    paths (what they do not spend goes back to the upper level)."""
    from hm3.search.session import preferences

    recipe = zoo_recipe(kind)
    recipe = recipe.model_copy(
        update={
            "seed": seed,
            "preferences": recipe.preferences.model_copy(update={"count": PREFERENCE_SAMPLES}),
        }
    )
    upper = int(budget * UPPER_SHARE)
    iterations = max(1, (budget - upper) // len(preferences(recipe)))
    return recipe.model_copy(
        update={
            "parameter_level": recipe.parameter_level.model_copy(update={"budget": upper}),
            "agent": recipe.agent.model_copy(update={"iterations": iterations}),
        }
    )


def run_recipe(kind: str, seed: int, method: str, budget: int):
    """The recipe a method runs: ``hm3`` and its ``param_only`` ablation with the recipe's defaults."""
    return optimised(kind, seed, budget) if method in ("hm3", "param_only") else recipe_for(kind, seed)


def zoo_fingerprint(kind: str) -> str:
    """The zoo manifest's digest: a run made on an older build of the zoo is not reused."""

    return zoo_digest(zoo_recipe(kind))


@functools.cache
def recipe_zoo_build(kind: str) -> str:
    """The build of the zoo a zoo's recipe uses (:func:`_bench.zoo_build`): each has its own section (read once
    per invocation: the zoo is built, if it was missing, before anything asks)."""

    return zoo_build(Path(zoo_recipe(kind).base_model.path).parent)


def wait_for_other_process(folder: Path) -> None:
    """Wait while another live benchmark process runs this folder's run (several may share the scratch)."""
    claim = folder.with_name(f".{folder.name}.running")
    while claim.is_file():
        try:
            os.kill(int(claim.read_text() or 0), 0)
        except (OSError, ValueError):
            return  # its process is gone: the run is redone here
        time.sleep(10)


def selected(name: str, default: list) -> list:
    """The comma-separated values of environment variable ``name`` that are in ``default``, in the variable's
    order (all of ``default`` when unset)."""
    chosen = os.environ.get(name)
    if not chosen:
        return list(default)
    known = {str(v): v for v in default}
    return [known[v] for v in chosen.split(",") if v in known]


def run_settings(recipe, method: str) -> str:
    """The digest of what a run depends on: the recipe, less the agent's training settings for a method that
    trains no agent (so changing PPO's defaults re-runs only the methods that use it)."""
    exclude: dict[str, set[str]] = {} if method in AGENT_METHODS else {"agent": set(PPO_SETTINGS)}
    if method in AGENT_METHODS:  # the rate it trains with (none in the recipe: its actions' default, stop 39)
        agent = recipe.agent.model_copy(update={"learning_rate": recipe.agent.adam_learning_rate})
        recipe = recipe.model_copy(update={"agent": agent})
    if method in AGENT_METHODS and recipe.agent.actions == "path":  # added with the agent it has always had:
        exclude = {"agent": {"actions"}}  # runs made before the setting existed stay current
    level = recipe.architecture_level
    if level.fixed_first == level.fixed_last == 0:  # added since, off: runs made before it stay current
        exclude["architecture_level"] = {"fixed_first", "fixed_last"}
    if recipe.parameter_level.batch == 1:  # added since, the default: runs made before it stay current
        exclude["parameter_level"] = {"batch"}
    return hashlib.sha256(recipe.model_dump_json(exclude=exclude or None).encode()).hexdigest()[:16]


def run_one(kind: str, seed: int, method: str, budget: int, scratch: Path = SCRATCH) -> dict:
    """One run in ``scratch`` (reused when it finished on this zoo build and run format); returns summary +
    front + wall time."""
    from hm3.baselines import run_baseline
    from hm3.search.progress import SearchProgress
    from hm3.search.run import run_search
    from hm3.store import RunStore

    folder = scratch / kind / f"seed{seed}" / method
    zoo = zoo_fingerprint(kind)
    wait_for_other_process(folder)
    recipe = run_recipe(kind, seed, method, budget)
    settings = run_settings(recipe, method)
    finished = all((folder / name).is_file() for name in ("summary.json", "wall.json", "fingerprint.json"))
    wall = json.loads((folder / "wall.json").read_text()) if finished else {}
    current = (
        finished
        and (
            wall.get("zoo") == zoo
            and wall.get("recipe") == settings
            and json.loads((folder / "fingerprint.json").read_text()).get("format") == RUN_FORMAT
        )
    )  # a run of an older zoo or other settings, or one an older hm3 wrote (another run format), is done again
    if not current:
        folder.parent.mkdir(parents=True, exist_ok=True)
        claim = folder.with_name(f".{method}.running")
        claim.write_text(str(os.getpid()))
        (folder / "wall.json").unlink(missing_ok=True)  # the benchmark's, not hm3's: --force keeps to hm3's
        store = RunStore.create(folder, recipe, force=True)
        started = time.perf_counter()
        with SearchProgress(enabled=sys.stdout.isatty()) as progress:
            if method in ("hm3", "hm3_paper"):
                run_search(recipe, store, progress, method=method)
            else:
                run_baseline(recipe, store, method, budget, progress)
        wall = {"seconds": time.perf_counter() - started, "zoo": zoo, "recipe": settings}
        (folder / "wall.json").write_text(json.dumps(wall))
        claim.unlink(missing_ok=True)
    return {
        "summary": json.loads((folder / "summary.json").read_text()),
        "front": json.loads((folder / "front.json").read_text()),
        "seconds": json.loads((folder / "wall.json").read_text())["seconds"],
    }


def heldout_points(front: dict) -> np.ndarray:
    names = front["objectives"]
    signs = np.array([1.0 if up else -1.0 for up in front["higher_is_better"]])
    return np.array([[m["scores"]["heldout"][o] for o in names] for m in front["members"]]) * signs


def analyse(kind: str, runs: dict) -> tuple[list[str], dict]:
    """Table rows (Markdown) for one zoo, and the plot series of seed 0."""
    from hm3.moo.hypervolume import Normalization

    fronts = {key: run["front"] for key, run in runs.items()}
    any_front = next(iter(fronts.values()))
    names = any_front["objectives"]
    signs = np.array([1.0 if up else -1.0 for up in any_front["higher_is_better"]])
    references = [
        np.array([r["scores"]["heldout"][o] for o in names]) * signs
        for front in fronts.values()
        for r in front["references"]
    ]
    normalization = Normalization.fit(*[heldout_points(f) for f in fronts.values()], *references)
    rows = []
    mean_volumes: dict[str, float] = {}
    for method in METHODS:
        keys = [(method, seed) for seed in SEEDS if (method, seed) in runs]
        if not keys:
            continue
        volumes = [normalization.hypervolume(heldout_points(fronts[k])) for k in keys]
        mean_volumes[method] = float(np.mean(volumes))
        best_task = np.mean([heldout_points(fronts[k]).max(axis=0) * signs for k in keys], axis=0)
        dominating = []
        for method_key in keys:
            if method == "hm3":
                continue
            seed = method_key[1]
            own = heldout_points(fronts[method_key])
            best = own[np.argmax(own.mean(axis=1))]
            hm3 = (
                heldout_points(fronts[("hm3", seed)])
                if ("hm3", seed) in fronts
                else np.empty((0, len(names)))
            )
            dominating.append(int(sum(((p >= best).all() and (p > best).any()) for p in hm3)))
        used = np.mean([runs[k]["summary"]["evaluations_used"] for k in keys])
        spent = np.mean([runs[k]["summary"].get("budget_used", used) for k in keys])
        seconds = np.mean([runs[k]["seconds"] for k in keys])
        rows.append(
            f"| {method} | {np.mean(volumes):.4f} ± {np.std(volumes):.4f} | "
            + " | ".join(f"{v:.3f}" for v in best_task)
            + f" | {'—' if method == 'hm3' else f'{np.mean(dominating):.1f}'} | {used:.0f} | {spent:.1f} "
            + f"| {seconds:.0f} |"
        )
    header = [
        f"### {kind} zoo ({ZOOS[kind].describe()}), build `{recipe_zoo_build(kind)}`",
        "",
        f"Measured on {cpu_name()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; fronts of seed "
        f"{SEEDS[0]} overlaid: `{plot_name(kind)}`.",
        "",
        "| method | held-out HV (mean ± std) | "
        + " | ".join(f"best {n}" for n in names)
        + " | HM3 members dominating its best | evaluations | budget used | wall s |",
        "|---|---:|" + "---:|" * len(names) + "---:|---:|---:|---:|",
    ]
    return header + rows + [""], {"names": names, "fronts": fronts, "volumes": mean_volumes}


ANYTIME_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def search_curve(folder: Path, names: list[str], signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A run's search-split scores (oriented), one row per distinct searched candidate, in the order scored,
    and the budget spent when each was scored, in full scorings (a path screened first, or screened out,
    counts the screen's share of the documents)."""
    records = [json.loads(line) for line in (folder / "candidates.jsonl").read_text().splitlines()]
    searched = [r for r in records if r.get("level") in ("merge", "path")]
    full = next((r["documents"] for r in searched if r.get("split") == "search"), 1)
    seen, rows, spent, total = set(), [], [], 0.0
    for record in searched:
        if record.get("split") not in ("search", "screen") or record["key"] in seen:
            continue
        seen.add(record["key"])
        total += record.get("documents", full) / full
        if record["split"] == "search":
            rows.append([record["scores"][o] for o in names])
            spent.append(total)
    return np.array(rows, dtype=float).reshape(-1, len(names)) * signs, np.array(spent)


def anytime(kind: str, runs: dict, volumes: dict[str, float], budget: int, out: Path) -> list[str]:
    """Search-split hypervolume after each candidate for ``hm3``, its ``param_only`` ablation and the two best
    baselines (by held-out HV), mean over seeds, one normalisation over every point compared; a table at
    fractions of the budget and a plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hm3.moo.hypervolume import Normalization

    baselines = [
        m for m in sorted(volumes, key=volumes.get, reverse=True) if m not in HM3_VARIANTS + ["uniform"]
    ]
    methods = ["hm3", *(["param_only"] if "param_only" in volumes else []), *baselines[:2]]
    any_front = next(iter(runs.values()))["front"]
    names = any_front["objectives"]
    signs = np.array([1.0 if up else -1.0 for up in any_front["higher_is_better"]])
    curves = {
        (m, seed): search_curve(SCRATCH / kind / f"seed{seed}" / m, names, signs)
        for m in methods
        for seed in SEEDS
        if (m, seed) in runs
    }
    references = [
        np.array([r["scores"]["search"][o] for o in names]) * signs for r in any_front["references"]
    ]
    normalization = Normalization.fit(*(points for points, _ in curves.values()), *references)
    rows = [
        f"Anytime ({kind}): search-split hypervolume of the candidates scored so far, mean over seeds (one "
        "normalisation over every point below), at fractions of the budget (spent in full scorings of the search "
        "split: a screened path counts its screen's share):",
        "",
        "| method | " + " | ".join(f"{f:.0%} ({int(f * budget)})" for f in ANYTIME_FRACTIONS) + " |",
        "|---|" + "---:|" * len(ANYTIME_FRACTIONS),
    ]
    figure, axis = plt.subplots(figsize=(6, 4))
    for method in methods:
        seeds = [seed for seed in SEEDS if (method, seed) in curves]
        steps = range(1, budget + 1)
        series = np.array(
            [
                [
                    normalization.hypervolume(curves[(method, s)][0][curves[(method, s)][1] <= n + 1e-9])
                    for n in steps
                ]
                for s in seeds
            ]
        ).mean(axis=0)
        axis.plot(list(steps), series, label=method)
        rows.append(
            f"| {method} | "
            + " | ".join(f"{series[max(0, int(f * budget) - 1)]:.4f}" for f in ANYTIME_FRACTIONS)
            + " |"
        )
    axis.set_xlabel("budget spent (full scorings of the search split)")
    axis.set_ylabel("search-split hypervolume")
    axis.set_title(f"{kind} toy zoo: hypervolume against budget (mean of {len(SEEDS)} seeds)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    rows += ["", f"Plot: `{out.name}`.", ""]
    paired = {
        s: (SCRATCH / kind / f"seed{s}" / "hm3", SCRATCH / kind / f"seed{s}" / "param_only") for s in SEEDS
    }
    if all(("hm3", s) in runs and ("param_only", s) in runs for s in SEEDS):
        rows += hindsight_rows(kind, paired, names, signs, normalization)
    return rows


def section_key(kind: str) -> str:
    return f"{kind} {recipe_zoo_build(kind)}"


def zoo_marker(key: str, end: str) -> str:
    return f"<!-- zoo {key}: {end} -->"


def plot_name(kind: str, anytime: bool = False) -> str:
    """The file of a zoo build's plot: the fronts overlaid, or (``anytime``) hypervolume against budget."""
    quick = "_quick" if QUICK else ""
    return f"search_quality{quick}{'_anytime' if anytime else ''}_{kind}_{recipe_zoo_build(kind)}.png"


def plot(kind: str, data: dict, out: Path) -> None:
    from hm3.moo.plots import PlotSeries, plot_pareto

    names = data["names"]
    series = []
    for method in METHODS:
        front = data["fronts"].get((method, SEEDS[0]))
        if front is None:
            continue
        points = np.array([[m["scores"]["heldout"][o] for o in names] for m in front["members"]])
        series.append(
            PlotSeries(f"{method} ({len(points)})", points, "front" if method == "hm3" else "baseline")
        )
    reference = data["fronts"][("hm3", SEEDS[0])]["references"]
    for r in reference:
        point = np.array([[r["scores"]["heldout"][o] for o in names]])
        series.append(PlotSeries(r["label"], point, "finetuned" if r["kind"] == "finetuned" else "merge"))
    plot_pareto(series, names, out, f"{kind} toy zoo, seed {SEEDS[0]}: held-out fronts of every method")


def main() -> None:
    from hm3.baselines import hm3_budget

    started = time.perf_counter()
    sections: dict[str, list[str]] = {}
    for kind in selected("BENCH_ZOOS", list(ZOOS)):
        ensure_bench_zoo(kind)
        runs = {}
        for seed in selected("BENCH_SEEDS", SEEDS):
            budget = hm3_budget(recipe_for(kind, seed))
            for method in selected("BENCH_METHODS", METHODS):
                print(
                    f"[{time.perf_counter() - started:7.0f} s] {kind} seed {seed} {method} (budget {budget})"
                )
                runs[(method, seed)] = run_one(kind, seed, method, budget)
        if os.environ.get("BENCH_SEEDS") or os.environ.get("BENCH_METHODS"):
            print(f"{kind}: a share of the runs only (BENCH_SEEDS/BENCH_METHODS); no table written")
            continue
        rows, data = analyse(kind, runs)
        plot(kind, data, RESULTS / plot_name(kind))
        budget = hm3_budget(recipe_for(kind, SEEDS[0]))
        rows += anytime(kind, runs, data["volumes"], budget, RESULTS / plot_name(kind, anytime=True))
        key = section_key(kind)
        sections[key] = [zoo_marker(key, "start"), *rows, zoo_marker(key, "end")]
    if not sections:
        return
    name = "search_quality_quick.md" if QUICK else "search_quality.md"
    # a run of some zoos keeps the other zoos' and the other builds' sections as measured
    every = {**marked_sections(RESULTS / name, "zoo"), **sections}
    ordered = [
        line for kind in ZOOS for key in sorted(every) if key.split()[0] == kind for line in every[key]
    ]
    lines = [
        "# Search quality: HM3 vs baselines at equal budgets",
        "",
        f"Command: `{'BENCH_QUICK=1 ' if QUICK else ''}.venv/bin/python benchmarks/search_quality.py`  ",
        f"Last invocation: {cpu_name()}, {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d %H:%M')}; "
        f"wall time {time.perf_counter() - started:.0f} s (runs reused from benchmarks/scratch are not re-timed: "
        "each run's own wall time is in the tables)  ",
        f"Seeds {SEEDS}; the budget is the paper's configuration's (`hm3_paper`: K corners + centre + "
        f"{PREFERENCE_SAMPLES} Dirichlet samples, 1 merge + {ITERATIONS} paths each); every method gets it "
        "counted in documents ('budget used': a candidate scored on the whole search split costs 1, a path "
        "screened on part of it that part's share; 'evaluations': distinct candidates scored on the whole "
        "split). `hm3` runs the zoo recipe's settings (the optimised upper level, screened paths, the recipe's "
        f"`agent.actions`): centre + {PREFERENCE_SAMPLES} samples, {UPPER_SHARE:.0%} of the budget for the upper "
        "level's first round, the rest for paths, and what the paths do not spend back to the upper level.",
        "",
        "Hypervolume: held-out scores, each objective min-max normalised over every front member of every method "
        "and seed and every reference model of that zoo, reference point -0.1 on each normalised axis (one "
        "normalisation per zoo, shared by all rows). 'Best' per task: the best front member's held-out score, "
        "mean over seeds. 'HM3 members dominating its best': HM3 front members (same seed) that dominate the "
        "baseline member with the best mean held-out score.",
        "",
        "One section per zoo and build of it (the fingerprint of its weights: on another CPU vendor the same "
        "seed builds another zoo, README); each section's plots are named after it.",
        "",
        *ordered,
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines += kept_notes(RESULTS / name)
    (RESULTS / name).write_text("\n".join(lines) + "\n")
    print((RESULTS / name).read_text())


if __name__ == "__main__":
    main()
