"""hm3's merge engine against mergekit-yaml on the same config: wall time, peak memory, throughput.

Three synthetic fine-tunes of a Llama-shaped model (~0.47B parameters; ``--quick``: ~40M) with random weights
are generated on the fly into ``benchmarks/scratch/`` (git-ignored), stored in bfloat16 by default. For a
DARE-TIES and a TIES merge, ``hm3 merge --mergekit C`` and ``mergekit-yaml C`` run alternately, each as a
subprocess (peak RSS from ``os.wait4``), ``--repeats`` times. The practical limit is a plain safetensors
load-and-save of the same bytes (read the four input models, write one), also a subprocess.

    .venv/bin/python benchmarks/merge_throughput.py            # the full benchmark, ~0.5B
    .venv/bin/python benchmarks/merge_throughput.py --quick    # a smaller model, for a quick check

The Markdown table lands in ``benchmarks/results/merge_throughput.md`` (``--quick`` writes
``merge_throughput_quick.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
SCRATCH = ROOT / "scratch" / "merge_throughput"
RESULTS = ROOT / "results"
PYTHON = Path(sys.executable)
MERGEKIT_YAML = PYTHON.parent / "mergekit-yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

SHAPES = {
    "full": dict(hidden=1024, intermediate=4096, layers=24, heads=16, vocab=32000),
    "quick": dict(hidden=512, intermediate=1536, layers=8, heads=8, vocab=8000),
}
METHODS = ("dare_ties", "ties")


def _seed(*parts: object) -> int:
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def tensor_shapes(shape: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a Llama checkpoint's tensors."""
    h, i, v = shape["hidden"], shape["intermediate"], shape["vocab"]
    names: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for layer in range(shape["layers"]):
        prefix = f"model.layers.{layer}."
        names += [
            (prefix + "input_layernorm.weight", (h,)),
            (prefix + "self_attn.q_proj.weight", (h, h)),
            (prefix + "self_attn.k_proj.weight", (h, h)),
            (prefix + "self_attn.v_proj.weight", (h, h)),
            (prefix + "self_attn.o_proj.weight", (h, h)),
            (prefix + "post_attention_layernorm.weight", (h,)),
            (prefix + "mlp.gate_proj.weight", (i, h)),
            (prefix + "mlp.up_proj.weight", (i, h)),
            (prefix + "mlp.down_proj.weight", (h, i)),
        ]
    names += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return names


def build_models(size: str, dtype: str) -> tuple[Path, list[Path], int]:
    """Base + 3 fine-tunes (base + small random task vectors); returns folders and parameter count."""
    import torch

    from hm3.export import TensorLayout, write_hf_checkpoint

    shape = SHAPES[size]
    root = SCRATCH / f"{size}-{dtype}"
    shapes = tensor_shapes(shape)
    params = sum(_numel(s) for _, s in shapes)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape["hidden"],
        "intermediate_size": shape["intermediate"],
        "num_hidden_layers": shape["layers"],
        "num_attention_heads": shape["heads"],
        "num_key_value_heads": shape["heads"],
        "vocab_size": shape["vocab"],
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "dtype": dtype,
    }
    torch_dtype = getattr(torch, dtype)
    layout = [TensorLayout(n, s, dtype) for n, s in shapes]
    folders = [root / name for name in ("base", "ft0", "ft1", "ft2")]
    for index, folder in enumerate(folders):
        if (folder / "model.safetensors").is_file():
            continue

        def tensors(index: int = index):
            for name, tensor_shape in shapes:
                base = torch.randn(tensor_shape, generator=torch.Generator().manual_seed(_seed(name))) * 0.02
                if index > 0:
                    noise = torch.Generator().manual_seed(_seed(name, index))
                    base.add_(torch.randn(tensor_shape, generator=noise), alpha=0.002)
                yield name, base.to(torch_dtype)

        folder.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating {folder} ({params / 1e9:.2f}B parameters, {dtype})", flush=True)
        write_hf_checkpoint(tensors(), config, folder, tokenizer_from=None, layout=layout, force=True)
    return folders[0], folders[1:], params


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def write_configs(base: Path, finetunes: list[Path], dtype: str) -> dict[str, Path]:
    import yaml

    configs = {}
    for method in METHODS:
        config = {
            "merge_method": method,
            "base_model": str(base),
            "models": [
                {"model": str(path), "parameters": {"weight": weight, "density": 0.5}}
                for path, weight in zip(finetunes, (0.5, 0.3, 0.2), strict=True)
            ],
            "dtype": dtype,
        }
        path = base.parent / f"{method}.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        configs[method] = path
    return configs


def timed(command: list[str]) -> tuple[float, int, float]:
    """Run a command; its wall time (s), peak RSS (bytes, from wait4) and CPU time (user + system, s)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


LOAD_AND_SAVE = """
import sys
from safetensors.torch import load_file, save_file
files, out = sys.argv[1:-1], sys.argv[-1]
for file in files:
    tensors = load_file(file)
save_file(tensors, out)
"""


def warm_cache(folders: list[Path]) -> None:
    for folder in folders:
        with open(folder / "model.safetensors", "rb") as handle:
            while handle.read(64 * 2**20):
                pass


def max_difference(a: Path, b: Path) -> tuple[float, float]:
    """Largest absolute difference between two checkpoints' tensors, and the fraction of entries that differ."""
    from safetensors import safe_open

    worst = 0.0
    differing = total = 0
    with (
        safe_open(str(a / "model.safetensors"), "pt") as left,
        safe_open(str(b / "model.safetensors"), "pt") as right,
    ):
        for name in left.keys():
            difference = (left.get_tensor(name).float() - right.get_tensor(name).float()).abs()
            worst = max(worst, difference.max().item())
            differing += int((difference > 0).sum())
            total += difference.numel()
    return worst, differing / total


def difference_in_child(a: Path, b: Path) -> tuple[float, float]:
    """:func:`max_difference` in a child process: loading both checkpoints here would raise this process's
    peak memory, which Linux hands down to every later child as its starting ``ru_maxrss``."""
    command = [str(PYTHON), str(Path(__file__).resolve()), "--difference", str(a), str(b)]
    result = subprocess.run(command, env=ENV, cwd=REPO, capture_output=True, text=True, check=True)
    worst, fraction = json.loads(result.stdout.strip().splitlines()[-1])
    return worst, fraction


def machine() -> str:
    import torch
    from _bench import cpu_name

    cpu = cpu_name()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from importlib.metadata import version

    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, mergekit {version('mergekit')}"
    )


def write_report(context: dict, rows: list, baseline: list, differences: dict) -> Path:
    """Render the Markdown table from the runs so far (rewritten after every run: a cut-short benchmark
    still leaves what it measured, marked partial)."""
    args, size, params, model_bytes, moved = (
        context[k] for k in ("args", "size", "params", "model_bytes", "moved")
    )
    rows = [
        (method, runs) for method, runs in rows if runs["hm3"] and runs["mergekit"] and runs["load-and-save"]
    ]
    base_wall = statistics.median(w for w, _, _ in baseline)
    base_rss = max(r for _, r, _ in baseline)
    lines = [
        "# Merge throughput: hm3 vs mergekit-yaml",
        "",
        f"Command: `.venv/bin/python benchmarks/merge_throughput.py{' --quick' if args.quick else ''}"
        f"{f' --repeats {args.repeats}' if args.repeats != 3 else ''}"
        f"{f' --dtype {args.dtype}' if args.dtype != 'bfloat16' else ''}`  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Model: Llama-shaped, {SHAPES[size]['layers']} layers, hidden {SHAPES[size]['hidden']}, "
        f"{params / 1e9:.2f}B parameters, random weights stored in **{args.dtype}** "
        f"({model_bytes / 1e9:.2f} GB per model); base + 3 fine-tunes (base + random task vectors); "
        "weights 0.5/0.3/0.2, density 0.5, `dtype` = storage dtype. Each merge is a subprocess (Python start-up "
        f"included), hm3 and mergekit alternating, {args.repeats} runs each, each hm3 run next to a run of the "
        "load-and-save reference; medians of wall time, maximum of peak RSS (`os.wait4`). Throughput = bytes "
        'read + written (4 inputs + 1 output) / wall time; "vs load-and-save" = the reference\'s median wall '
        "over hm3's, for the runs of that method.",
        "",
        "| method | hm3 wall (s) | mergekit wall (s) | wall ratio (target ≤ 0.5) | hm3 peak RSS (GB) | "
        "mergekit peak RSS (GB) | RSS ratio (target ≤ 1.0) | hm3 throughput (MB/s) | vs load-and-save "
        "(target ≥ 50%) | hm3 CPU (s) | mergekit CPU (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for method, runs in rows:
        hm3_wall = statistics.median(w for w, _, _ in runs["hm3"])
        mk_wall = statistics.median(w for w, _, _ in runs["mergekit"])
        hm3_rss = max(r for _, r, _ in runs["hm3"])
        mk_rss = max(r for _, r, _ in runs["mergekit"])
        hm3_cpu = statistics.median(c for _, _, c in runs["hm3"])
        mk_cpu = statistics.median(c for _, _, c in runs["mergekit"])
        throughput = moved / hm3_wall
        fraction = statistics.median(w for w, _, _ in runs["load-and-save"]) / hm3_wall
        lines.append(
            f"| {method} | {hm3_wall:.1f} | {mk_wall:.1f} | {hm3_wall / mk_wall:.2f} | {hm3_rss / 1e9:.2f} | "
            f"{mk_rss / 1e9:.2f} | {hm3_rss / mk_rss:.2f} | {throughput / 1e6:.0f} | {fraction:.0%} | "
            f"{hm3_cpu:.1f} | {mk_cpu:.1f} |"
        )
        verdicts.append(
            f"- {method}: wall {'met' if hm3_wall / mk_wall <= 0.5 else 'NOT met'}, "
            f"RSS {'met' if hm3_rss <= mk_rss else 'NOT met'}, "
            f"throughput {'met' if fraction >= 0.5 else 'NOT met'}."
        )
    lines += [
        "",
        f"Load-and-save reference (safetensors `load_file` of the 4 inputs, `save_file` of one), one run "
        f"beside every hm3 run: median {base_wall:.1f} s over {len(baseline)} runs, "
        f"{moved / base_wall / 1e6:.0f} MB/s, peak RSS {base_rss / 1e9:.2f} GB.",
        "",
        "Targets:",
        *verdicts,
    ]
    for method, (difference, fraction) in differences.items():
        lines.append(
            f"- {method}: hm3's and mergekit's outputs differ in {fraction:.3%} of entries (largest difference "
            f"{difference:g}): entries whose magnitude ties exactly at the trim threshold in {args.dtype}, which "
            "mergekit picks by the order of an unstable argsort and hm3 by index (see tests/test_merge_parity.py)."
        )
    lines += [
        "",
        "CPU = user + system time of the subprocess. hm3 merges several tensors at once, each on one thread "
        "(`hm3.merge.runtime.merge_workers`: one worker per core, at most 4; the bits do not depend on the "
        "count), with the fused numba kernels of `hm3.merge.fused` (compiled once, cached beside the package; "
        "the first run after an install also compiles); "
        f"mergekit uses torch's default ({os.cpu_count()} threads), as its users get it. "
        f"Load average (1 min) at the start: {context['load_start']:.1f}, at the end: {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores.",
        "",
        "Individual runs (wall s / peak RSS GB / CPU s):",
        "",
        *(
            f"- {method} {tool}: " + ", ".join(f"{w:.1f}/{r / 1e9:.2f}/{c:.1f}" for w, r, c in runs[tool])
            for method, runs in rows
            for tool in runs
        ),
        "",
    ]
    done = sum(len(runs["hm3"]) + len(runs["mergekit"]) for _, runs in rows)
    planned = 2 * len(METHODS) * args.repeats
    if done < planned:
        lines.insert(2, f"**Partial: {done} of {planned} merge runs done when this was written.**\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / ("merge_throughput_quick.md" if args.quick else "merge_throughput.md")
    from _bench import kept_notes

    target.write_text("\n".join(lines + kept_notes(target, "## Notes")) + "\n")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~40M-parameter model instead of ~0.5B")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each tool per method (default 3)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="storage dtype")
    parser.add_argument("--keep", action="store_true", help="keep the generated models in benchmarks/scratch")
    parser.add_argument("--difference", nargs=2, metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.difference:
        print(json.dumps(max_difference(*map(Path, args.difference))))
        return 0
    sys.path.insert(0, str(REPO))

    size = "quick" if args.quick else "full"
    base, finetunes, params = build_models(size, args.dtype)
    configs = write_configs(base, finetunes, args.dtype)
    model_bytes = (base / "model.safetensors").stat().st_size
    moved = 5 * model_bytes  # read base + 3 fine-tunes, write one
    work = base.parent / "outputs"
    work.mkdir(exist_ok=True)
    warm_cache([base, *finetunes])

    context = {
        "args": args,
        "size": size,
        "params": params,
        "model_bytes": model_bytes,
        "moved": moved,
        "load_start": os.getloadavg()[0],
    }
    baseline: list[tuple[float, int, float]] = []  # one load-and-save run beside every hm3 run
    files = [str(f / "model.safetensors") for f in (base, *finetunes)]
    rows = []
    differences = {}
    for method in METHODS:
        runs: dict[str, list[tuple[float, int, float]]] = {"hm3": [], "mergekit": [], "load-and-save": []}
        rows.append((method, runs))
        for repeat in range(args.repeats):
            # the reference runs right before hm3 (even repeats) or right after it (odd): the throughput
            # ratio compares runs made under the same page-cache and writeback conditions
            order = (
                ("load-and-save", "hm3", "mergekit")
                if repeat % 2 == 0
                else ("mergekit", "hm3", "load-and-save")
            )
            for tool in order:
                out = work / f"{method}-{tool}"
                shutil.rmtree(out, ignore_errors=True)
                if tool == "load-and-save":
                    baseline.append(timed([str(PYTHON), "-c", LOAD_AND_SAVE, *files, str(out)]))
                    out.unlink()
                    runs["load-and-save"].append(baseline[-1])
                    continue
                if tool == "hm3":
                    command = [str(PYTHON), "-m", "cli.main", "merge", "--mergekit", str(configs[method])]
                    command += ["--out", str(out), "--quiet"]
                else:
                    command = [
                        str(MERGEKIT_YAML),
                        str(configs[method]),
                        str(out),
                        "--no-copy-tokenizer",
                        "--quiet",
                    ]
                runs[tool].append(timed(command))
                wall, rss, cpu = runs[tool][-1]
                write_report(context, rows, baseline, differences)
                print(
                    f"{method} {tool} run {repeat + 1}: {wall:.1f} s, {rss / 1e9:.2f} GB, {cpu:.1f} CPU s",
                    flush=True,
                )
            if repeat == 0 and method == "ties":
                differences[method] = difference_in_child(work / f"{method}-hm3", work / f"{method}-mergekit")
        for tool in runs:
            shutil.rmtree(work / f"{method}-{tool}", ignore_errors=True)

    target = write_report(context, rows, baseline, differences)
    print(target.read_text())
    print(json.dumps({"written": str(target)}))
    if not args.keep:
        shutil.rmtree(base.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
