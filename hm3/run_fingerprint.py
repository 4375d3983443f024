"""A run's fingerprint: everything that decides its scores, recorded when it starts and checked on resume.

``RUN/fingerprint.json``::

    {"format": 2,
     "recipe": {...},                       # the resolved recipe (all but output: and distributed:)
     "files": {"/zoo/tasks/toy_addition.yaml": "sha256:9c1e...",   # task files, the YAMLs they include,
               "/zoo/tasks/toy_addition.jsonl": "sha256:52aa..."},  # the code and data they name, heads
     "models": {"/zoo/addition": {"model.safetensors": [size, mtime_ns]}},  # every local model's weights
     "model_files": {"/zoo/addition": {"config.json": "sha256:..."}},  # and its configuration and tokenizer
     "weight_samples": {"/zoo/addition": {"model.safetensors": "sha256:..."}},  # and samples of its bytes
     "scoring": "4b07..."}                  # sha256 of what decides a candidate's score (below)

``--resume`` recomputes it from the run's ``recipe.yaml`` and today's files and refuses any difference, naming
it (:func:`fingerprint_changes`). ``scoring`` is the part that decides a score — the models, the objectives
(task, metric, limit...), the split, the dtype and device, the seed, the alignment settings, and the files — and
goes into every candidate's cache key, so a score is never answered from a log written under other settings.
Weights are compared by size and modification time (hashing many gigabytes on every resume would cost more
than the check is worth); task and data files, and a model's configuration and tokenizer files, by content (by
size and time above 256 MB, and for folders). ``model_files`` came after ``scoring`` was defined, so it is not
part of it: a changed configuration is refused on resume like changed weights (a run started before it was
recorded is not checked for it), and runs started before stay resumable without scoring anything twice.
``weight_samples`` (likewise outside ``scoring``) hashes 16 spread blocks of 64 KB of each weight file: two
fine-tunes of one base have the same size, and copies (``cp -p``, ``rsync -a``, an archive) the same times, so
size and time alone let two models swap folders under a run unnoticed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from hm3.recipe import Objective, Recipe

FINGERPRINT_FILE = "fingerprint.json"
FORMAT = 2
"""2: candidate log records keyed by :class:`hm3.search.candidate.Candidate` with a ``level`` (1: ``kind``), and
CPU scoring on one intra-op thread (:mod:`hm3.evaluate.threads`)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
MODEL_FILE_SUFFIXES = (".json", ".model", ".txt", ".py", ".tiktoken", ".jinja")
"""The files of a model folder besides its weights that decide what it computes: ``config.json``, generation
and tokenizer files, a chat template, remote code (a README does not)."""
UNSCORED_SECTIONS = ("output", "distributed", "device_memory")
"""Recipe sections that decide where a run is written, how it is spread and what stays on the device (offloaded
scores are bit for bit the resident ones), never a score."""
SCORING_SECTIONS = (
    "base_model",
    "models",
    "objectives",
    "split",
    "architecture_level",
    "tokenizer_source",
    "device",
    "dtype",
    "seed",
    "allow_pickle",
    "trust_remote_code",
)
"""Recipe sections that can change a candidate's score (the merge and the path are the candidate's own)."""
CONTENT_HASH_LIMIT = 256 * 2**20


def run_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """The fingerprint of a run of ``recipe`` as things stand on disk now."""
    data = recipe.model_dump(mode="json")
    fingerprint = {
        "format": FORMAT,
        "recipe": {k: v for k, v in data.items() if k not in UNSCORED_SECTIONS},
        "files": {str(path): file_digest(path) for path in sorted(set(input_files(recipe)))},
        "models": model_files(recipe),
    }
    return {
        **fingerprint,
        "scoring": scoring_key(fingerprint),
        "model_files": model_config_files(recipe),
        "weight_samples": weight_samples(recipe),
    }


def scoring_key(fingerprint: dict[str, Any]) -> str:
    """sha256 (hex) of the fingerprint's score-deciding part."""
    part = {
        "recipe": {k: v for k, v in fingerprint["recipe"].items() if k in SCORING_SECTIONS},
        "files": fingerprint["files"],
        "models": fingerprint["models"],
    }
    text = json.dumps(part, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def added_fields(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths of the settings ``new`` has and ``old`` lacks: fields a later hm3 added to the recipe
    format (a run's recipe.yaml holds every field of its hm3, so a missing one is not an edit)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return []
    out: list[str] = []
    for key in sorted(new):
        dotted = f"{path}.{key}" if path else key
        out += [dotted] if key not in old else added_fields(old[key], new[key], dotted)
    return out


def fingerprint_changes(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a run's recorded fingerprint and today's, one short phrase each (fields a later
    hm3 added: :func:`added_fields`, not listed here)."""
    added = added_fields(then.get("recipe", {}), now["recipe"])
    changes = [
        f"recipe.yaml was edited ({difference})"
        for difference in data_differences(then.get("recipe", {}), now["recipe"])
        if difference.split(":", 1)[0] not in added
    ]
    old_files, new_files = then.get("files", {}), now["files"]
    for path in sorted(set(old_files) | set(new_files)):
        if old_files.get(path) != new_files.get(path):
            state = "is gone" if new_files.get(path) is None else "changed"
            changes.append(f"{path} {state}" if path in old_files else f"{path} is new")
    old_models, new_models = then.get("models", {}), now["models"]
    changed = [
        name
        for name in sorted(set(old_models) | set(new_models))
        if old_models.get(name) != new_models.get(name)
    ]
    touched = [name for name in changed if _times_changed_only(then, now, name)]
    rewritten = [name for name in changed if name not in touched]
    if rewritten:
        changes.append(f"the weights in {', '.join(rewritten[:3])} changed")
    if touched:
        changes.append(
            f"the weight files in {', '.join(touched[:3])} were written again (their modification times changed; "
            "sizes and sampled bytes are the same, which does not prove the rest is: a copy without its times, "
            "or a touch, looks like this — fingerprint.json holds the times the run started with)"
        )
    if "weight_samples" in then:  # recorded since hm3 samples them; sizes and times may all agree
        sampled = [
            folder
            for folder in sorted(set(then["weight_samples"]) | set(now["weight_samples"]))
            if then["weight_samples"].get(folder) != now["weight_samples"].get(folder)
            and folder not in changed
        ]
        if sampled:
            changes.append(f"the weights in {', '.join(sampled[:3])} changed (their bytes)")
    if "model_files" in then:  # recorded since hm3 checks them
        old, new = then["model_files"], now["model_files"]
        for folder in sorted(set(old) | set(new)):
            names = sorted(
                name
                for name in set(old.get(folder, {})) | set(new.get(folder, {}))
                if old.get(folder, {}).get(name) != new.get(folder, {}).get(name)
            )
            if names:
                changes.append(f"{', '.join(names[:3])} in {folder} changed")
    return changes


def _times_changed_only(then: dict[str, Any], now: dict[str, Any], folder: str) -> bool:
    """Whether ``folder``'s weight files have the sizes and sampled bytes the run recorded and other times."""
    old, new = then.get("models", {}).get(folder), now["models"].get(folder)
    samples = then.get("weight_samples", {}).get(folder)
    if old is None or new is None or samples is None or samples != now["weight_samples"].get(folder):
        return False
    return set(old) == set(new) and all(old[name][0] == new[name][0] for name in old)


def models_changed(then: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether the models' weights or configuration files differ (those recorded)."""
    configs = "model_files" in then and then["model_files"] != now["model_files"]
    sampled = "weight_samples" in then and then["weight_samples"] != now["weight_samples"]
    return then["models"] != now["models"] or configs or sampled


def data_differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ, with both values (``agent.iterations: 10 -> 20``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += data_differences(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += data_differences(a, b, f"{path}[{i}]")
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def model_files(recipe: Recipe) -> dict[str, dict[str, list[int]]]:
    """Model folder -> {weight file: [size, mtime in ns]} for every local model of the recipe (hub ids skipped)."""
    found: dict[str, dict[str, list[int]]] = {}
    for folder in _local_model_folders(recipe):
        stats = {f.name: f.stat() for f in sorted(folder.iterdir()) if f.suffix in WEIGHT_SUFFIXES}
        found[str(folder)] = {name: [stat.st_size, stat.st_mtime_ns] for name, stat in stats.items()}
    return found


SAMPLE_BLOCKS = 16
SAMPLE_BYTES = 64 * 2**10


def weight_samples(recipe: Recipe) -> dict[str, dict[str, str]]:
    """Model folder -> {weight file: sha256 of :data:`SAMPLE_BLOCKS` blocks of :data:`SAMPLE_BYTES` spread over
    it (the whole file when smaller)} for every local model: about 1 MB read per file, whatever its size."""
    found: dict[str, dict[str, str]] = {}
    for folder in _local_model_folders(recipe):
        files = [f for f in sorted(folder.iterdir()) if f.suffix in WEIGHT_SUFFIXES and f.is_file()]
        found[str(folder)] = {f.name: _sampled_digest(f) for f in files}
    return found


def _sampled_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        last = max(0, size - SAMPLE_BYTES)
        for i in range(SAMPLE_BLOCKS):
            handle.seek(last * i // (SAMPLE_BLOCKS - 1))
            digest.update(handle.read(SAMPLE_BYTES))
    return f"sha256:{digest.hexdigest()}"


def model_config_files(recipe: Recipe) -> dict[str, dict[str, str | None]]:
    """Model folder -> {configuration or tokenizer file (:data:`MODEL_FILE_SUFFIXES`): content digest} for every
    local model of the recipe."""
    found: dict[str, dict[str, str | None]] = {}
    for folder in _local_model_folders(recipe):
        files = [
            f
            for f in sorted(folder.iterdir())
            if f.suffix in MODEL_FILE_SUFFIXES and not f.name.startswith(".") and f.is_file()
        ]
        found[str(folder)] = {f.name: file_digest(f) for f in files}
    return found


def _local_model_folders(recipe: Recipe) -> Iterator[Path]:
    """The folders of the recipe's models that are on this machine (hub ids and missing folders skipped)."""
    for ref in [recipe.base_model, *recipe.models]:
        if not ref.is_hub and Path(ref.path).is_dir():
            yield Path(ref.path)


def input_files(recipe: Recipe) -> Iterator[Path]:
    """The local files (and data folders) the objectives read, besides the models."""
    for objective in recipe.objectives:
        yield from _objective_files(objective)


def file_digest(path: Path) -> str | None:
    """``sha256:<hex>`` of a file's content; ``stat:<size>:<mtime>`` of a large file; a folder's listing; None:
    missing."""
    try:
        status = path.stat()
    except OSError:
        return None
    if path.is_dir():
        listing = hashlib.sha256()
        for root, folders, files in os.walk(path):
            folders.sort()
            for name in sorted(files):
                item = Path(root) / name
                try:
                    entry = item.stat()
                except OSError:
                    continue
                relative = item.relative_to(path)
                listing.update(f"{relative}\0{entry.st_size}\0{entry.st_mtime_ns}\n".encode())
        return f"folder:{listing.hexdigest()}"
    if status.st_size > CONTENT_HASH_LIMIT:
        return f"stat:{status.st_size}:{status.st_mtime_ns}"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _objective_files(objective: Objective) -> Iterator[Path]:
    if objective.task_is_file:
        yield from _task_files(Path(objective.task), set())  # type: ignore[arg-type]
    if objective.include_path and Path(objective.include_path).is_dir():
        for root, folders, files in os.walk(objective.include_path):
            folders.sort()
            for name in sorted(files):
                if name.endswith((".yaml", ".yml", ".py")):
                    yield from _task_files(Path(root) / name, set())
    if objective.dataset is not None and objective.dataset.format != "hf":
        yield Path(objective.dataset.path)
    if objective.head not in (None, "zeroshot"):
        yield Path(objective.head)  # type: ignore[arg-type]


def _task_files(path: Path, seen: set[Path]) -> Iterator[Path]:
    """A task YAML, the YAMLs it includes, the Python files its ``!function`` tags name, and its local data."""
    path = path.absolute()
    if path in seen:
        return
    seen.add(path)
    yield path
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return
    try:
        data = load_task_yaml(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(data, dict):
        return
    include = data.get("include")
    for name in include if isinstance(include, list) else [include]:
        if isinstance(name, str):
            yield from _task_files(path.parent / name, seen)
    for value in _strings(data):
        if value.startswith("!function "):
            module = value.removeprefix("!function ").rsplit(".", 1)[0]
            yield path.parent / f"{module.replace('.', '/')}.py"
    kwargs = data.get("dataset_kwargs") if isinstance(data.get("dataset_kwargs"), dict) else {}
    candidates = [data.get("dataset_path"), kwargs.get("data_dir"), *_strings(kwargs.get("data_files"))]
    for value in candidates:
        if isinstance(value, str) and value and Path(value).exists():
            yield Path(value).absolute()
        elif isinstance(value, str) and any(c in value for c in "*?["):  # datasets expands patterns
            yield from sorted(Path(found).absolute() for found in glob.glob(value, recursive=True))


def load_task_yaml(text: str) -> Any:
    """lm-eval task YAML as data; tags such as ``!function utils.f`` become the string ``"!function utils.f"``."""

    class Loader(yaml.SafeLoader):
        pass

    def tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return f"{node.tag} {loader.construct_scalar(node)}"
        return None

    Loader.add_multi_constructor("!", tagged)
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ValueError(str(error)) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
