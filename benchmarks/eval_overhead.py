"""Per-candidate wall time: hm3's in-memory path against the on-disk workflow (mergekit-yaml, then lm_eval).

Both paths score the same candidates (task-arithmetic merges of the toy zoo's specialists, weights drawn from a
Dirichlet) on the same documents (each objective's search split), alternating candidate by candidate:

* **hm3**: ``merge_state_dict(pool, spec)`` in memory, ``load_state_dict`` into one model kept for the whole
  run, ``Evaluator.score(model, split="search")`` (lm-eval's Python API, tasks and data loaded once).
* **on disk**: ``mergekit-yaml`` writes the merged model to a folder, the ``lm_eval`` CLI scores it on task
  YAMLs restricted to the same documents (written once, before timing).

Task arithmetic is deterministic, so both paths build the same model and must report the same scores; the table
shows the largest difference. The report replaces this script's section of
``benchmarks/results/eval_overhead.md`` (between its markers) and keeps the rest (``scoring_speed.py``'s section,
notes added by hand). Run from the repository root (``make bench`` does)::

    python benchmarks/eval_overhead.py [--zoo zoo/lm-llama-small] [--candidates 5]

The zoo is built first (``hm3 zoo build --kind lm --size small``) if the folder is missing. The Markdown table
lands in ``benchmarks/results/eval_overhead.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import SCORING_SPEED, cpu_name, zoo_build

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "zoo" / "lm-llama-small")
    parser.add_argument(
        "--candidates", type=int, default=5, help="candidates per path (at least 5 for the record)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, for both paths (1: fair on a shared small machine)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_overhead.md")
    return parser.parse_args(argv)


def ensure_zoo(zoo: Path) -> None:
    if (zoo / "zoo.json").is_file() or (zoo / "base" / "config.json").is_file():
        return
    size = zoo.name.rsplit("-", 1)[-1]
    subprocess.run([str(BIN / "hm3"), "zoo", "build", "--kind", "lm", "--size", size], cwd=ROOT, check=True)


def zoo_specialists(zoo: Path) -> dict[str, tuple[Path, Path]]:
    """Specialist name -> (its folder, its in-distribution task YAML), from the zoo's manifest (or folders)."""
    manifest = zoo / "zoo.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        yamls = {t["name"]: zoo / t["yaml"] for t in data["tasks"] if "yaml" in t}
        return {m["name"]: (zoo / m["path"], yamls[m["task"]]) for m in data["models"] if m.get("task")}
    folders = sorted(p.name for p in zoo.iterdir() if p.name != "base" and (p / "config.json").is_file())
    return {name: (zoo / name, zoo / "tasks" / f"toy_{name}.yaml") for name in folders}


def zoo_recipe(zoo: Path, folder: Path) -> Path:
    """A recipe over the zoo: its specialists, one objective per specialist's in-distribution task."""
    specialists = zoo_specialists(zoo)
    models = "".join(
        f"  - {{name: {name}, path: {model_dir}}}\n" for name, (model_dir, _) in specialists.items()
    )
    objectives = "".join(
        f"  - {{name: {name}, task: {task}, model: {name}, batch_size: 32}}\n"
        for name, (_, task) in specialists.items()
    )
    path = folder / "recipe.yaml"
    path.write_text(f"base_model: {zoo / 'base'}\nmodels:\n{models}objectives:\n{objectives}")
    return path


def search_split_tasks(evaluator, folder: Path) -> dict[str, str]:
    """Task YAMLs for the lm_eval CLI holding exactly each objective's search documents; objective -> task."""
    import yaml

    names = {}
    for objective in evaluator.objectives:
        source = Path(objective.objective.task)
        config = yaml.safe_load(source.read_text())
        data = folder / f"{objective.name}_search.jsonl"
        docs = [objective.task.eval_docs[i] for i in objective.indices("search")]
        data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
        config["task"] = f"{config['task']}_search"
        config["dataset_kwargs"]["data_files"] = {config.get("test_split", "test"): str(data)}
        (folder / f"{config['task']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        names[objective.name] = config["task"]
    return names


def in_memory_candidate(pool, evaluator, model, spec) -> tuple[dict[str, float], dict[str, float]]:
    from hm3.merge import merge_state_dict

    start = time.perf_counter()
    merged = merge_state_dict(pool, spec)
    merged_at = time.perf_counter()
    model.load_state_dict(merged, strict=False)
    built_at = time.perf_counter()
    scores = evaluator.score(model, split="search")
    done = time.perf_counter()
    return scores, {"merge": merged_at - start, "build": built_at - merged_at, "score": done - built_at}


def on_disk_candidate(spec, pool, evaluator, tasks: dict[str, str], work: Path, index: int):
    from hm3.merge import to_mergekit_yaml

    config = work / f"candidate{index}.yaml"
    out = work / f"candidate{index}"
    config.write_text(to_mergekit_yaml(spec, [m.folder for m in pool.models], pool.base.folder))
    start = time.perf_counter()
    subprocess.run([str(BIN / "mergekit-yaml"), str(config), str(out)], check=True, capture_output=True)
    merged_at = time.perf_counter()
    results = work / f"results{index}"
    command = [
        str(BIN / "lm_eval"),
        *("--model", "hf", "--model_args", f"pretrained={out},dtype=float32", "--device", "cpu"),
        *("--batch_size", "32", "--include_path", str(work / "tasks")),
        *("--tasks", ",".join(tasks.values()), "--output_path", str(results)),
    ]
    subprocess.run(command, check=True, capture_output=True)
    done = time.perf_counter()
    (result_file,) = results.rglob("results_*.json")
    reported = json.loads(result_file.read_text())["results"]
    scores = {name: float(reported[task][evaluator.metrics[name]]) for name, task in tasks.items()}
    shutil.rmtree(out)
    return scores, {"merge": merged_at - start, "build": 0.0, "score": done - merged_at}


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch
    from rich.progress import Progress
    from transformers import AutoModelForCausalLM

    from hm3.evaluate import Evaluator
    from hm3.merge import MergeSpec
    from hm3.pool import ModelPool
    from hm3.recipe import load_recipe

    args = parse_args(argv)
    load_start = os.getloadavg()[0]
    ensure_zoo(args.zoo)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # the subprocesses too
    with tempfile.TemporaryDirectory(prefix="hm3-eval-overhead-") as tmp:
        work = Path(tmp)
        (work / "tasks").mkdir()
        recipe = load_recipe(zoo_recipe(args.zoo, work))
        start = time.perf_counter()
        pool = ModelPool.from_recipe(recipe)
        evaluator = Evaluator.from_recipe(recipe)
        model = AutoModelForCausalLM.from_pretrained(pool.base.folder, dtype=torch.float32).eval()
        for i in range(len(pool.models)):
            pool.state_dict(i)
        setup = time.perf_counter() - start
        hflm_ms = time_hflm_construction(model, evaluator.tokenizer)
        tasks = search_split_tasks(evaluator, work / "tasks")
        rng = np.random.default_rng(args.seed)
        rows = []
        with Progress() as progress:
            bar = progress.add_task("candidates (hm3, then on disk)", total=args.candidates)
            for index in range(args.candidates):
                weights = tuple(float(w) for w in rng.dirichlet(np.ones(len(pool.models))))
                spec = MergeSpec(method="task_arithmetic", weights=weights)
                memory_scores, memory = in_memory_candidate(pool, evaluator, model, spec)
                disk_scores, disk = on_disk_candidate(spec, pool, evaluator, tasks, work, index)
                difference = max(abs(memory_scores[k] - disk_scores[k]) for k in memory_scores)
                rows.append((weights, memory, disk, memory_scores, difference))
                progress.advance(bar)
    write_report(args, rows, setup, hflm_ms, evaluator, (load_start, os.getloadavg()[0]))
    print(args.out.read_text())
    return 0


def time_hflm_construction(model, tokenizer, repeats: int = 20) -> tuple[float, float]:
    """Milliseconds to build a fresh ``HFLM`` around a live model, and to swap the model of an existing one."""
    from hm3.evaluate.language import build_hflm, swap_model

    start = time.perf_counter()
    for _ in range(repeats):
        lm = build_hflm(model, tokenizer)
    built = time.perf_counter()
    for _ in range(repeats):
        swap_model(lm, model)
    swapped = time.perf_counter()
    return (built - start) / repeats * 1e3, (swapped - built) / repeats * 1e3


START, END = "<!-- eval overhead: start -->", "<!-- eval overhead: end -->"
"""Markers of this script's section of the results file; :data:`_bench.SCORING_SPEED` marks the next one."""


def write_report(
    args: argparse.Namespace,
    rows: list,
    setup: float,
    hflm_ms: tuple[float, float],
    evaluator,
    load: tuple[float, float],
) -> None:
    def total(times: dict[str, float]) -> float:
        return sum(times.values())

    memory_mean = {k: sum(r[1][k] for r in rows) / len(rows) for k in ("merge", "build", "score")}
    disk_mean = {k: sum(r[2][k] for r in rows) / len(rows) for k in ("merge", "build", "score")}
    ratio = total(disk_mean) / total(memory_mean)
    docs = evaluator.document_count("search")
    lines = [
        START,
        "# Evaluation overhead per candidate: in memory vs on disk",
        "",
        f"Zoo build `{zoo_build(args.zoo)}` (the fingerprint of its weights, `zoo_build.md`); {time.strftime('%Y-%m-%d')}.",
        "",
        f"Command: `python benchmarks/eval_overhead.py --zoo {args.zoo.relative_to(ROOT) if args.zoo.is_relative_to(ROOT) else args.zoo}"
        f" --candidates {args.candidates} --seed {args.seed} --threads {args.threads}`",
        f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores (shared), {args.threads} torch thread(s) in both"
        f" paths, no GPU; 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end.",
        f"Objectives (search split documents): {', '.join(f'{k} ({v})' for k, v in docs.items())}; "
        "task-arithmetic merges with Dirichlet weights, the two paths alternating candidate by candidate.",
        f"hm3 one-time setup (pool, tasks and data, split, one model): {setup:.1f} s, not counted per candidate.",
        "",
        f"**Per candidate: hm3 {total(memory_mean):.2f} s, on disk {total(disk_mean):.2f} s: {ratio:.1f}x less wall time.**",
        "",
        "| candidate | weights | hm3 merge | hm3 build | hm3 score | hm3 total | mergekit-yaml | lm_eval CLI "
        "| on-disk total | max score diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (weights, memory, disk, _, difference) in enumerate(rows):
        lines.append(
            f"| {i} | {', '.join(f'{w:.2f}' for w in weights)} | {memory['merge']:.2f} | {memory['build']:.2f} "
            f"| {memory['score']:.2f} | {total(memory):.2f} | {disk['merge']:.2f} | {disk['score']:.2f} "
            f"| {total(disk):.2f} | {difference:.4f} |"
        )
    lines.append(
        f"| mean | | {memory_mean['merge']:.2f} | {memory_mean['build']:.2f} | {memory_mean['score']:.2f} "
        f"| {total(memory_mean):.2f} | {disk_mean['merge']:.2f} | {disk_mean['score']:.2f} | {total(disk_mean):.2f} | |"
    )
    lines += [
        "",
        "Times in seconds. The on-disk path pays, per candidate, a merged checkpoint written and read back, two"
        " process starts, lm-eval's task index (every built-in task YAML is scanned) and the data set load;"
        " hm3 pays these once. `max score diff` compares the two paths' scores on the same candidate.",
        "",
        f"Model hand-over inside hm3: a fresh lm-eval `HFLM` around the live model costs {hflm_ms[0]:.2f} ms,"
        f" swapping the model of the one `HFLM` hm3 keeps costs {hflm_ms[1]:.3f} ms; either is negligible next to"
        " scoring, hm3 swaps (no per-candidate lm-eval warnings, no re-tying of weights).",
        END,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".md.partial")
    partial.write_text(replace_section(args.out.read_text() if args.out.is_file() else "", "\n".join(lines)))
    partial.replace(args.out)


def replace_section(text: str, section: str) -> str:
    """``text`` with this script's section replaced by ``section``: between its markers, or (a file written
    before it had them) everything before the scoring-speed section; the rest of the file is kept."""
    if START in text and END in text:
        return text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    rest = text[text.index(SCORING_SPEED[0]) :] if SCORING_SPEED[0] in text else ""
    return section + "\n\n" + rest if rest else section + "\n"


if __name__ == "__main__":
    sys.exit(main())
