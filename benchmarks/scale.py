"""Wall time of the toy searches in one process and on 1 and 2 Ray workers (local cluster), and the ratios.

Each zoo's recipe (`recipes/toy-lm.yaml`, `recipes/toy-vit.yaml`, with ``SCALE_PREFERENCES`` preferences and at
most ``SCALE_ITERATIONS`` new paths per preference) runs in a fresh run directory: in-process with the shipped
upper level (``parameter_level.batch: 1``, one merge proposed at a time), then with ``batch: 2`` in-process, on
Ray with 1 worker and with 2 (the upper level's merges scored two at a time on the workers, the preferences'
path searches spread over them). Every run is a subprocess (`hm3 merge`), so Ray's start-up is included. Runs
of one batch size must give identical fronts (the merges proposed depend on the batch, never on the workers);
the table says whether they do.

    .venv/bin/python benchmarks/scale.py      # writes benchmarks/results/scale.md
    SCALE_ZOOS=lm .venv/bin/python benchmarks/scale.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRATCH = REPO / "benchmarks" / "scratch" / "scale"
PREFERENCES = int(os.environ.get("SCALE_PREFERENCES", "4"))
ITERATIONS = int(os.environ.get("SCALE_ITERATIONS", "15"))
ZOOS = {
    "lm": ("toy-lm.yaml", "lm-llama-small", "small toy LM"),
    "vit": ("toy-vit.yaml", "vit-clip-small", "small toy ViT"),
}
RAY = ["--ray-address", "local", "--workers"]
RUNS = (
    ("in-process", "in-process, batch 1 (shipped)", 1, []),
    ("in-process-b2", "in-process, batch 2", 2, []),
    ("ray-1-b2", "Ray, 1 worker, batch 2", 2, [*RAY, "1"]),
    ("ray-2-b2", "Ray, 2 workers, batch 2", 2, [*RAY, "2"]),
)


def run_zoo(kind: str, env: dict[str, str]) -> list[str]:
    """The four runs on one zoo; its section's lines."""
    from _bench import zoo_build

    from hm3.zoo import ensure_zoo

    recipe_name, folder_name, title = ZOOS[kind]
    zoo = REPO / "zoo" / folder_name
    ensure_zoo(kind, size="small", out=zoo)  # where the recipe looks
    rows, fronts = [], {}
    for folder, label, batch, extra in RUNS:
        recipe = SCRATCH / f"{kind}-batch{batch}.yaml"
        recipe.write_text(
            f"include: {REPO / 'recipes' / recipe_name}\n"
            f"preferences: {{count: {PREFERENCES}}}\n"
            f"agent: {{iterations: {ITERATIONS}}}\n"
            f"parameter_level: {{batch: {batch}}}\n"
        )
        run = SCRATCH / kind / folder
        shutil.rmtree(run, ignore_errors=True)
        command = [
            sys.executable,
            "-m",
            "cli.main",
            "merge",
            "--recipe",
            str(recipe),
            "--out",
            str(run),
            "--quiet",
        ]
        print(f"== {kind}: {label}", flush=True)
        started = time.perf_counter()
        subprocess.run(command + extra, cwd=REPO, env=env, check=True)
        seconds = time.perf_counter() - started
        summary = json.loads((run / "summary.json").read_text())
        members = json.loads((run / "front.json").read_text())["members"]
        fronts[label] = json.dumps([(m["id"], m["scores"]) for m in members], sort_keys=True)
        rows.append((label, batch, seconds, summary["evaluations_used"], _upper_seconds(run)))
    shipped, one, two = rows[0][2], rows[2][2], rows[3][2]
    same = len({fronts[label] for label, batch, *_ in rows if batch == 2}) == 1
    return [
        f"## {title} (`recipes/{recipe_name}`, zoo build `{zoo_build(zoo)}`)",
        "",
        "| run | wall s | evaluations | upper level's first round s | vs shipped in-process | vs Ray 1 worker |",
        "|---|---:|---:|---:|---:|---:|",
        *[
            f"| {label} | {s:.0f} | {e} | {u:.0f} | {shipped / s:.2f}x | "
            f"{f'{one / s:.2f}x' if batch == 2 else '—'} |"
            for label, batch, s, e, u in rows
        ],
        "",
        f"Speed-up of 2 workers over 1: **{one / two:.2f}x**; over the shipped in-process run: "
        f"**{shipped / two:.2f}x**. Identical fronts in the three batch-2 runs: **{'yes' if same else 'NO'}**.",
        "",
    ]


def _upper_seconds(run: Path) -> float:
    """Wall seconds from the run's start to the end of the upper level's first round (its log's times)."""
    from datetime import datetime

    stamps = []
    for line in (run / "log.txt").read_text().splitlines():
        if "search started" in line or "upper level:" in line:
            stamps.append(datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
    return (stamps[1] - stamps[0]).total_seconds() if len(stamps) > 1 else float("nan")


def main() -> None:
    sys.path.insert(0, str(REPO))
    from _bench import cpu_name, kept_notes

    SCRATCH.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    kinds = [k for k in os.environ.get("SCALE_ZOOS", "lm,vit").split(",") if k in ZOOS]
    sections = [line for kind in kinds for line in run_zoo(kind, env)]
    lines = [
        "# Scale-out: the toy searches in one process and on 1 and 2 Ray workers",
        "",
        "Command: `.venv/bin/python benchmarks/scale.py`  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d %H:%M')}; load average "
        f"at the end {os.getloadavg()[0]:.1f}  ",
        f"Recipes: the toy recipes with {PREFERENCES} Dirichlet preferences (+ the centre) and at most "
        f"{ITERATIONS} new paths per preference, their other settings as shipped but `parameter_level.batch` "
        "(1: the optimised upper level proposes one merge at a time and scores it on the driver; 2: two at a "
        "time, scored together on the workers). Each run a fresh `hm3 merge` subprocess (start-up, fine-tuned "
        "scoring, held-out scoring and Ray start-up included). 'Upper level's first round': from the search's "
        "start (after loading) to the end of the first round of merges, from the run's log.",
        "",
        *sections,
        "Each worker holds its own copy of the pool and runs torch with one thread (Ray sets OMP_NUM_THREADS to "
        "the actor's CPUs); the in-process runs use torch's default threads on both cores.",
    ]
    out = REPO / "benchmarks" / "results" / "scale.md"
    out.write_text("\n".join(lines + kept_notes(out, "## Notes")) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
