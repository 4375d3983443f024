"""HiMoLE against LoRA, MoE-LoRA, HydraLoRA and its ablations, trained to convergence: ID and OOD, several seeds.

The protocol (issue 23, the paper's): every phase of every run trains until early stopping on its validation
loss decides (evaluation every ``eval_every`` steps, ``patience`` evaluations, the best state kept) under step
caps meant never to be reached — the table says, per row, how many runs converged and how many hit a cap. Each
variant's learning rate is chosen by a small sweep applied to every variant alike: the recipe's rates (both
stages) scaled by each of ``LR_FACTORS`` on seed ``SWEEP_SEED``, the factor with the lowest validation loss
kept; where that is the grid's lowest or highest factor, the sweep goes on by another factor of 3 in that direction
(up to ``EXTENSIONS`` times), so that a kept rate is a minimum of the sweep, not where the grid ended. Its other
seeds are then trained at that factor (the sweep's own run is its first seed).

Rows: ``lora`` (rank matched to HiMoLE's trainable parameters), ``moe-lora`` (token gate only, MixLoRA-style),
``hydra-lora`` (token gate over B heads sharing one A, HydraLoRA-style), ``himole-one-stage`` (the paper's
ablation: no clustering, no stage 1), ``himole-no-diversity`` (β = 0) and ``himole``. Each run is the same
call as ``hm3 himole train --variant V [--no-two-stage] --seed S`` and is scored like ``hm3 himole eval``
(exact match and answer-token loss on every ID and OOD objective, and the experts' load balance, MaxVio, on the
ID documents); the bare base model is scored once.

The whole protocol takes about a day on 2 cores, more than one session on one machine has, so it continues
across machines: each finished run's report (scores, steps, wall time, the machine) is kept in
``benchmarks/results/himole_runs/<base>-<key>/`` and committed (``benchmarks/_records.py``: the key covers the
zoo's weights by fingerprint, the recipe, the code of ``hm3/himole`` and ``hm3/evaluate``, the library versions
and the variant table; each report the run's full configuration), and a run with a kept report is not trained
again. The trained adapters stay in ``benchmarks/scratch/himole/`` (never committed). Each run trains and scores
on one thread (``hm3.evaluate.threads``), so ``BENCH_JOBS`` runs (default: one per core) go at once, each in its
own process; a variant's other seeds start as soon as its sweep is done. Writes ``benchmarks/results/himole.md``
(``himole_<base>.md`` for a base other than the default) once every run has a report.

    .venv/bin/python benchmarks/himole.py                           # the deep base, seeds 0-2, the sweep
    BENCH_BASE=small .venv/bin/python benchmarks/himole.py          # the 4-layer base (recipes/himole-toy.yaml)
    BENCH_SEEDS=0 BENCH_VARIANTS=lora,himole .venv/bin/python ...   # a share of the runs (the sweep always); no
                                                                    # table written
    BENCH_JOBS=1 .venv/bin/python benchmarks/himole.py              # one run at a time
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
from _bench import REPO, exit_with, kept_notes, offline, zoo_build
from _records import RunRecords

offline()

BASES = {"deep": ("recipes/himole-toy-deep.yaml", "deep"), "small": ("recipes/himole-toy.yaml", "small")}
"""``BENCH_BASE`` -> (recipe, zoo size)."""
DEFAULT_BASE = "deep"
SEEDS = [0, 1, 2]
SWEEP_SEED = 0
LR_FACTORS = (1 / 3, 1.0, 3.0)
"""The sweep: both stages' learning rates scaled by each factor, for every variant alike."""
EXTENSIONS = 2
"""A sweep whose best factor is at its edge goes on by ×3 (or ×1/3) at most this many times: 1/27 to 27."""
VARIANTS = {  # row label -> (variant, two-stage, section overrides)
    "lora": ("lora", True, {}),
    "moe-lora": ("moe-lora", True, {}),
    "hydra-lora": ("hydra-lora", True, {}),
    "himole-one-stage": ("himole", False, {}),
    "himole-no-diversity": ("himole", True, {"diversity_loss_weight": 0.0}),
    "himole": ("himole", True, {}),
}
RESULTS = REPO / "benchmarks" / "results"


def selected(name: str, default: list) -> list:
    """The comma-separated values of environment variable ``name`` that are in ``default`` (all when unset)."""
    chosen = os.environ.get(name)
    if not chosen:
        return default
    wanted = {value.strip() for value in chosen.split(",")}
    return [value for value in default if str(value) in wanted]


def run_records(recipe, recipe_file: str, size: str) -> RunRecords:
    """Where the finished runs of this base are kept (and looked up)."""
    return RunRecords(
        "himole",
        size,
        Path(recipe.base_model.path).parent,
        REPO / recipe_file,
        [REPO / "hm3" / "himole", REPO / "hm3" / "evaluate"],
        extra={
            label: [variant, two_stage, overrides]
            for label, (variant, two_stage, overrides) in VARIANTS.items()
        },
    )


def run_config(recipe) -> dict:
    """What decides one run besides the key: its recipe after the variant's overrides and learning rates."""
    return recipe.model_dump(mode="json")


def variant_recipe(recipe, factor: float, overrides: dict):
    """``recipe`` with both stages' learning rates scaled by ``factor`` and the section ``overrides``."""
    section = recipe.himole
    stages = {
        name: getattr(section, name).model_copy(update={"lr": getattr(section, name).lr * factor})
        for name in ("stage1", "stage2")
    }
    return recipe.model_copy(update={"himole": section.model_copy(update={**stages, **overrides})})


def train_and_score(recipe, folder: Path, variant: str, two_stage: bool, seed: int) -> dict:
    from rich.console import Console

    from hm3.himole.evaluation import evaluate_adapter
    from hm3.himole.pipeline import TrainRequest, train_himole

    adapter = folder / "adapter"
    manifest = train_himole(
        recipe, TrainRequest(adapter, variant, two_stage, seed), Console(stderr=True, quiet=True)
    )
    report = evaluate_adapter(recipe, adapter).to_json()
    for key in ("train_seconds", "validation_loss", "steps", "converged"):
        report[key] = manifest[key]
    report["capped_phases"] = [p["name"] for p in manifest["phases"] if p["stopped_by"] == "cap"]
    report["lr"] = [recipe.himole.stage1.lr, recipe.himole.stage2.lr]
    return report


def mean_std(values: list[float], digits: int = 3, sign: str = "") -> str:
    """``mean ± std`` of ``values`` (the value alone for one); ``sign="+"`` writes a positive mean's sign too."""
    if len(values) == 1:
        return f"{values[0]:{sign}.{digits}f}"
    return f"{np.mean(values):{sign}.{digits}f} ± {np.std(values):.{digits}f}"


def factor_label(factor: float) -> str:
    return f"x1/{round(1 / factor)}" if factor < 1 else f"x{factor:g}"


def is_two_stage_mixture(label: str) -> bool:
    variant, two_stage, _ = VARIANTS[label]
    return variant == "himole" and two_stage


def run_name(label: str, factor: float, seed: int) -> str:
    return f"{label}-lr{factor:.4g}-s{seed}"


def run_one(
    recipe_file: str, size: str, key: str, scratch: Path, label: str, factor: float, seed: int
) -> dict:
    """One run of the protocol (variant ``label`` at learning-rate ``factor``, ``seed``), in a worker process:
    its report, kept from an earlier run of the same experiment or trained and scored now. ``key``: the records'
    key when the benchmark started; a worker that finds another (the code or the zoo changed meanwhile) stops
    the benchmark rather than mix two experiments in one table."""
    from hm3.errors import UserError
    from hm3.recipe import load_recipe

    variant, two_stage, overrides = VARIANTS[label]
    name = run_name(label, factor, seed)
    folder = scratch / name
    recipe = load_recipe(REPO / recipe_file)
    tuned = variant_recipe(recipe, factor, overrides)

    def work() -> dict:
        print(
            f"[{time.strftime('%H:%M:%S')}] {label} lr {factor_label(factor)} seed {seed}: training",
            flush=True,
        )
        shutil.rmtree(folder, ignore_errors=True)  # what an interrupted run left
        return train_and_score(tuned, folder, variant, two_stage, seed)

    records = run_records(recipe, recipe_file, size)
    if records.key != key:
        raise UserError(
            "the zoo, the recipe or the code of hm3/himole or hm3/evaluate changed while the benchmark ran; "
            "start it again (finished runs are kept)"
        )
    return records.report(name, run_config(tuned), work)


def next_factor(sweep: dict[float, dict]) -> float | None:
    """The sweep's next factor: ×1/3 below its lowest (×3 above its highest) where that one is best and the
    extensions are not used up; None when the best factor lies inside the sweep."""
    best, low, high = chosen_factor(sweep), min(sweep), max(sweep)
    if best == low and low > min(LR_FACTORS) / 3**EXTENSIONS * 1.001:
        return low / 3
    if best == high and high < max(LR_FACTORS) * 3**EXTENSIONS / 1.001:
        return high * 3
    return None


def chosen_factor(sweep: dict[float, dict]) -> float:
    """The sweep's learning-rate factor with the lowest validation loss."""
    return min(sweep, key=lambda f: sweep[f]["validation_loss"])


def main() -> int:
    from hm3.errors import UserError
    from hm3.himole.evaluation import evaluate_adapter
    from hm3.himole.shifted import write_shifted_tasks
    from hm3.recipe import load_recipe
    from hm3.zoo import ensure_zoo

    base_name = os.environ.get("BENCH_BASE", DEFAULT_BASE)
    if base_name not in BASES:
        raise UserError(f"BENCH_BASE must be one of {', '.join(BASES)}, not {base_name!r}")
    jobs_text = os.environ.get("BENCH_JOBS", str(os.cpu_count() or 1))
    if not jobs_text.isdigit() or int(jobs_text) < 1:
        raise UserError(f"BENCH_JOBS must be a whole number of at least 1, not {jobs_text!r}")
    recipe_file, size = BASES[base_name]
    started = time.perf_counter()
    write_shifted_tasks(ensure_zoo("lm", size=size))  # the deep recipe's ID and OOD tests (hm3 himole tasks)
    recipe = load_recipe(REPO / recipe_file)
    records = run_records(recipe, recipe_file, size)
    scratch = REPO / "benchmarks" / "scratch" / "himole" / f"{base_name}-{records.key}"
    seeds, labels = selected("BENCH_SEEDS", SEEDS), selected("BENCH_VARIANTS", list(VARIANTS))
    partial = bool(os.environ.get("BENCH_SEEDS") or os.environ.get("BENCH_VARIANTS"))
    base = records.report("base", run_config(recipe), lambda: evaluate_adapter(recipe, None).to_json())

    reports: dict[tuple[str, float, int], dict] = {}
    tried = {label: list(LR_FACTORS) for label in labels}  # each variant's sweep so far
    context = multiprocessing.get_context("spawn")  # workers start clean: no forked torch thread pools
    jobs = int(jobs_text)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        pending: dict[Future, tuple[str, float, int]] = {}
        waiting = [(label, factor, SWEEP_SEED) for label in labels for factor in LR_FACTORS]

        def start_next() -> None:
            # the sweeps before the other seeds (a sweep decides their rate; one whose best factor is at its edge
            # goes on, next_factor), within each the runs expected to be longest first (two-stage mixtures, then
            # lower rates: more steps until early stopping), so that the runs a stop interrupts, and must start
            # over, are short ones; a kept run returns at once
            waiting.sort(key=lambda run: (run[2] != SWEEP_SEED, not is_two_stage_mixture(run[0]), run[1]))
            while waiting and len(pending) < jobs:
                label, factor, seed = waiting.pop(0)
                future = pool.submit(run_one, recipe_file, size, records.key, scratch, label, factor, seed)
                pending[future] = (label, factor, seed)

        start_next()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                key = pending.pop(future)
                reports[key] = future.result()
                label = key[0]
                if key[2] != SWEEP_SEED or any((label, f, SWEEP_SEED) not in reports for f in tried[label]):
                    continue
                sweep = {f: reports[(label, f, SWEEP_SEED)] for f in tried[label]}
                extension = next_factor(sweep)
                if extension is not None:
                    tried[label].append(extension)
                    waiting.append((label, extension, SWEEP_SEED))
                else:
                    waiting += [(label, chosen_factor(sweep), seed) for seed in seeds if seed != SWEEP_SEED]
            start_next()
    sweeps = {label: {f: reports[(label, f, SWEEP_SEED)] for f in tried[label]} for label in labels}
    runs = {
        label: [reports[(label, chosen_factor(sweeps[label]), seed)] for seed in seeds] for label in labels
    }
    if partial:
        print("a share of the runs only (BENCH_SEEDS/BENCH_VARIANTS); no table written")
        return 0
    write_table(base_name, recipe, recipe_file, records, base, sweeps, runs, time.perf_counter() - started)
    return 0


def paired_rows(runs: dict[str, list[dict]], focus: str) -> list[str]:
    """``focus`` against every other row, seed by seed (a seed draws the same training data, validation split and
    test documents for every variant, so the differences are paired): mean ± std of the per-seed differences in
    ID and OOD exact match and answer loss, and on how many seeds ``focus`` is ahead."""
    ours = runs[focus]
    lines = [
        f"{focus} against each row, seed by seed (its score minus the row's; answer loss: the row's minus "
        f"{focus}'s, so positive means {focus} is ahead on every column; 'ahead': on how many seeds it is, by "
        "exact match):",
        "",
        "| against | seeds | ID exact match | OOD exact match | ID answer loss | OOD answer loss | ahead ID | "
        "ahead OOD |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, theirs in runs.items():
        if label == focus:
            continue
        gaps = {
            key: [sign * (mine[key] - other[key]) for mine, other in zip(ours, theirs, strict=True)]
            for key, sign in (("id_mean", 1), ("ood_mean", 1), ("id_loss", -1), ("ood_loss", -1))
        }
        ahead = " | ".join(f"{sum(g > 0 for g in gaps[key])}/{len(ours)}" for key in ("id_mean", "ood_mean"))
        lines.append(
            f"| {label} | {len(ours)} | "
            + " | ".join(
                mean_std(gaps[key], sign="+") for key in ("id_mean", "ood_mean", "id_loss", "ood_loss")
            )
            + f" | {ahead} |"
        )
    return [*lines, ""]


def write_table(base_name, recipe, recipe_file, records, base, sweeps, runs, seconds) -> None:
    objectives = list(base["scores"])
    ood = set(base["ood_objectives"])
    summary = [
        "| variant | seeds | lr (stage 1, 2) | trainable params | ID exact match | OOD exact match | ID answer loss ↓ | "
        "OOD answer loss ↓ | validation loss ↓ | steps | converged | MaxVio (ID) ↓ | train s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| base | 1 | — | 0 | {base['id_mean']:.3f} | {base['ood_mean']:.3f} | {base['id_loss']:.3f} | "
        f"{base['ood_loss']:.3f} | — | — | — | — | — |",
    ]
    per_task = [
        "| variant | " + " | ".join(f"{o}{' (OOD)' if o in ood else ''}" for o in objectives) + " |",
        "|---|" + "---:|" * len(objectives),
        "| base (exact match) | " + " | ".join(f"{base['scores'][o]:.3f}" for o in objectives) + " |",
        "| base (answer loss) | " + " | ".join(f"{base['losses'][o]:.3f}" for o in objectives) + " |",
    ]
    factors = sorted({f for sweep in sweeps.values() for f in sweep})
    sweep_rows = [
        "| variant | " + " | ".join(f"lr {factor_label(f)}" for f in factors) + " | chosen |",
        "|---|" + "---:|" * len(factors) + "---|",
    ]
    for label, reports in runs.items():
        column = {
            key: [r[key] for r in reports] for key in reports[0] if not isinstance(reports[0][key], dict)
        }
        balance = [v for v in column["max_violation"] if v is not None]
        lr = reports[0]["lr"]
        summary.append(
            f"| {label} | {len(reports)} | {lr[0]:.2g}, {lr[1]:.2g} | {reports[0]['trainable_parameters']} | "
            f"{mean_std(column['id_mean'])} | {mean_std(column['ood_mean'])} | {mean_std(column['id_loss'])} | "
            f"{mean_std(column['ood_loss'])} | {mean_std(column['validation_loss'])} | "
            f"{np.mean(column['steps']):.0f} | {sum(column['converged'])}/{len(reports)} | "
            f"{mean_std(balance, 2) if balance else '—'} | {np.mean(column['train_seconds']):.0f} |"
        )
        for kind, key in (("exact match", "scores"), ("answer loss", "losses")):
            per_task.append(
                f"| {label} ({kind}) | "
                + " | ".join(mean_std([r[key][o] for r in reports]) for o in objectives)
                + " |"
            )
        sweep = sweeps[label]
        chosen = chosen_factor(sweep)
        sweep_rows.append(
            f"| {label} | "
            + " | ".join(
                "—"
                if f not in sweep
                else f"{sweep[f]['validation_loss']:.3f}{'' if sweep[f]['converged'] else ' (cap)'}"
                for f in factors
            )
            + f" | {factor_label(chosen)} |"
        )
    best = {
        kind: min(runs, key=lambda label: np.mean([r[key] for r in runs[label]]))
        for kind, key in (("ID", "id_loss"), ("OOD", "ood_loss"))
    }
    best_match = {
        kind: max(runs, key=lambda label: np.mean([r[key] for r in runs[label]]))
        for kind, key in (("ID", "id_mean"), ("OOD", "ood_mean"))
    }
    capped = sorted(
        {f"{label} (seed {i})" for label, rs in runs.items() for i, r in enumerate(rs) if not r["converged"]}
    )
    paired = paired_rows(runs, "himole") if "himole" in runs else []
    every = [
        base,
        *(r for sweep in sweeps.values() for r in sweep.values()),
        *(r for rs in runs.values() for r in rs),
    ]
    machines = Counter(r["machine"] for r in {id(r): r for r in every}.values())
    made_on = "; ".join(f"{name} ({count} runs)" for name, count in machines.most_common())
    weights = zoo_build(Path(recipe.base_model.path).parent)
    lines = [
        f"# HiMoLE vs LoRA, MoE-LoRA, HydraLoRA and its ablations, trained to convergence ({base_name} base)",
        "",
        f"Command: `{'' if base_name == DEFAULT_BASE else f'BENCH_BASE={base_name} '}.venv/bin/python benchmarks/himole.py`  ",
        f"Runs made on: {made_on}; 2 runs at a time on 2 cores unless `BENCH_JOBS` said otherwise; table "
        f"written {time.strftime('%Y-%m-%d %H:%M')} (this invocation {seconds:.0f} s; 'train s' is each run's "
        "own training wall time)  ",
        f"Recipe `{recipe_file}` on zoo `{Path(recipe.base_model.path).parent.name}` (weights "
        f"`{weights}`); reports kept in `benchmarks/results/himole_runs/{records.folder.name}/`; "
        f"seeds {SEEDS} (the seed draws the training data, the validation split, the "
        "initialisation and the batch order). "
        + (
            "ID and OOD tests: the covariate-shifted ones of `hm3/himole/shifted.py` (each task's symbols drawn "
            "10% (ID, like the training data) or 70% (OOD) from its rare half; `hm3 himole tasks`). "
            if "himole_tasks" in str(recipe.objectives[0].task)
            else "OOD tests: the zoo's OOD variants. "
        )
        + "Every phase trains until early stopping on its validation loss "
        f"(every {recipe.himole.eval_every} steps, patience {recipe.himole.patience}, best state kept) under caps of "
        f"{recipe.himole.stage1.steps} (stage 1, per cluster) and {recipe.himole.stage2.steps} (stage 2) steps; "
        "single-phase variants get both stages' caps together. 'converged': runs whose every phase early "
        "stopping ended. Learning rates: the recipe's scaled by the factor of the sweep below with the lowest "
        f"validation loss on seed {SWEEP_SEED}, per variant ({', '.join(factor_label(f) for f in LR_FACTORS)} for every "
        f"variant; a variant whose best was at the grid's edge went on by ×3 that way, up to {EXTENSIONS} times, '—' where a factor was not "
        "tried). Scores: exact match (greedy generation, lm-eval "
        "through `hm3 himole eval`, every test document) and the mean cross-entropy per answer token given the "
        "prompt; mean ± standard deviation over seeds. MaxVio: (max − mean) / mean of the experts' token "
        "loads per block on the ID documents, averaged over blocks (0 = balanced).",
        "",
        *summary,
        "",
        "Per objective:",
        "",
        *per_task,
        "",
        f"Learning-rate sweep (validation loss, seed {SWEEP_SEED}; recipe rates {recipe.himole.stage1.lr:g} / "
        f"{recipe.himole.stage2.lr:g}):",
        "",
        *sweep_rows,
        "",
        *paired,
        f"Best mean answer loss: ID {best['ID']}, OOD {best['OOD']}. "
        f"Best mean exact match: ID {best_match['ID']}, OOD {best_match['OOD']}. "
        "The paper's claim is HiMoLE best on both. "
        + (f"Runs that hit a step cap: {', '.join(capped)}." if capped else "Every run converged."),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("himole.md" if base_name == DEFAULT_BASE else f"himole_{base_name}.md")
    out.write_text("\n".join(lines + kept_notes(out)) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    exit_with(main, "himole.py")
