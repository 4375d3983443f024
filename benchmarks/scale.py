"""Wall time of the small toy LM search with 1 and 2 Ray workers (local cluster), and the ratio.

The same recipe (`recipes/toy-lm.yaml` with ``SCALE_PREFERENCES`` preferences and at most ``SCALE_ITERATIONS``
new paths per preference) runs three ways, each in a fresh run directory: in-process (no Ray), Ray with 1
worker, Ray with 2 workers. Every run is a subprocess (`hm3 merge`), so Ray's start-up is included. The fronts
must be identical (the search is deterministic per preference); the table says whether they are.

    .venv/bin/python benchmarks/scale.py      # writes benchmarks/results/scale.md
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


def main() -> None:
    sys.path.insert(0, str(REPO))
    from _bench import cpu_name, kept_notes, zoo_build

    from hm3.zoo import ensure_zoo

    ensure_zoo("lm", size="small", out=REPO / "zoo" / "lm-llama-small")  # where the recipe looks
    SCRATCH.mkdir(parents=True, exist_ok=True)
    recipe = SCRATCH / "toy-lm-scale.yaml"
    recipe.write_text(
        f"include: {REPO / 'recipes' / 'toy-lm.yaml'}\n"
        f"preferences: {{count: {PREFERENCES}}}\n"
        f"agent: {{iterations: {ITERATIONS}}}\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows, fronts = [], {}
    for folder, label, extra in (
        ("in-process", "in-process (no Ray)", []),
        ("ray-1", "Ray, 1 worker", ["--ray-address", "local", "--workers", "1"]),
        ("ray-2", "Ray, 2 workers", ["--ray-address", "local", "--workers", "2"]),
    ):
        run = SCRATCH / folder
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
        print(f"== {label}", flush=True)
        started = time.perf_counter()
        subprocess.run(command + extra, cwd=REPO, env=env, check=True)
        seconds = time.perf_counter() - started
        summary = json.loads((run / "summary.json").read_text())
        fronts[label] = [
            (m["id"], m["scores"]) for m in json.loads((run / "front.json").read_text())["members"]
        ]
        rows.append((label, seconds, summary["preferences"], summary["evaluations_used"]))
    base = rows[1][1]
    same = len({json.dumps(f, sort_keys=True) for f in fronts.values()}) == 1
    lines = [
        "# Scale-out: the small toy LM search with 1 and 2 Ray workers",
        "",
        "Command: `.venv/bin/python benchmarks/scale.py`  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores; "
        f"date {time.strftime('%Y-%m-%d %H:%M')}; load average at the end {os.getloadavg()[0]:.1f}; zoo build "
        f"`{zoo_build(REPO / 'zoo' / 'lm-llama-small')}`  ",
        f"Recipe: `recipes/toy-lm.yaml` with {PREFERENCES} Dirichlet preferences (+ the centre) and at most {ITERATIONS} new paths per "
        "preference (its other settings as shipped: the optimised upper level on the driver, the preferences' "
        "path searches on the workers); each run a fresh `hm3 merge` subprocess (start-up, fine-tuned scoring, "
        "held-out scoring and Ray start-up included).",
        "",
        "| run | wall s | preferences | evaluations | vs Ray 1 worker |",
        "|---|---:|---:|---:|---:|",
        *[f"| {label} | {s:.0f} | {p} | {e} | {base / s:.2f}x |" for label, s, p, e in rows],
        "",
        f"Speed-up of 2 workers over 1: **{base / rows[2][1]:.2f}x**. Identical fronts in all three runs: "
        f"**{'yes' if same else 'NO'}**.",
        "",
        "Each worker holds its own copy of the pool and runs torch with one thread (Ray sets OMP_NUM_THREADS to "
        "the actor's CPUs); the in-process run uses torch's default threads on both cores.",
    ]
    out = REPO / "benchmarks" / "results" / "scale.md"

    out.write_text("\n".join(lines + kept_notes(out, "## Notes")) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
