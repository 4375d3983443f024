"""Covariate-shifted versions of the language zoo's tasks: an in- and an out-of-distribution test that are both
measurable.

The zoo's own OOD variants (a longer operand, unseen letters, longer strings) are beyond what any model of the
toy zoos learns: every specialist and every adapter scores 0 there, so an OOD column measures loss alone. Here
the *support* stays the same and the *distribution* shifts: each task's symbols are split into a common and a
rare half, and every symbol of a prompt is drawn from the rare half with probability ``rare share``:

============ ======================== =================
distribution rare share (per symbol)  use
============ ======================== =================
``common``   0.1                      training data and the ID test (``toy_<task>_common``)
``rare``     0.7                      the OOD test (``toy_<task>_rare``): the same task, mostly rare symbols
============ ======================== =================

An adapter trained on ``common`` data has seen every symbol, rarely; how much of its skill carries over to
prompts made mostly of rare symbols is what the OOD test measures (a LoRA on the deep zoo's base, measured when
this was designed: ID 0.57 / 0.74, OOD 0.06 / 0.16 exact match on reversal / sorting). Test sets are drawn with
their own seeds, and training draws never reuse a test prompt (nor one of the zoo's).

``hm3 himole tasks --zoo DIR`` writes the test sets and their lm-eval task YAMLs into ``DIR/himole_tasks/``
(:func:`write_shifted_tasks`); ``recipes/himole-toy-deep.yaml`` uses them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from hm3.errors import UserError
from hm3.zoo.config import LM_PRESETS, ZooConfig, read_manifest
from hm3.zoo.lm_tasks import ID_LETTERS, TASKS, TaskSizes, task_yaml

DISTRIBUTIONS = {"common": 0.1, "rare": 0.7}
"""Distribution name -> the probability that a symbol of a prompt comes from the task's rare half."""
SYMBOL_HALVES = {
    "addition": ("01234", "56789"),
    "reversal": (ID_LETTERS[:7], ID_LETTERS[7:]),
    "sorting": ("01234", "56789"),
}
"""Task -> (common symbols, rare symbols): each half of the symbols the zoo's ID prompts use."""
FOLDER = "himole_tasks"
"""Where :func:`write_shifted_tasks` writes, inside the zoo folder."""


def shifted_name(task: str, distribution: str) -> str:
    """The lm-eval task name, e.g. ``toy_reversal_rare``."""
    return f"toy_{task}_{distribution}"


def _symbols(rng: random.Random, count: int, task: str, rare_share: float, leading: bool) -> str:
    common, rare = SYMBOL_HALVES[task]
    chosen = []
    for position in range(count):
        half = rare if rng.random() < rare_share else common
        if leading and position == 0 and count > 1:
            half = half.replace("0", "") or half  # a number of several digits does not start with 0
        chosen.append(rng.choice(half))
    return "".join(chosen)


def shifted_pair(task: str, rng: random.Random, sizes: TaskSizes, distribution: str) -> tuple[str, str]:
    """One (prompt, target) of ``task`` in ``distribution``: the zoo's ID lengths, symbols drawn per position
    from the rare half with the distribution's share. Formats and targets are the zoo's (:mod:`hm3.zoo.lm_tasks`)."""
    share = DISTRIBUTIONS[distribution]
    if task == "addition":
        a = int(_symbols(rng, rng.randint(1, sizes.max_digits), task, share, leading=True))
        b = int(_symbols(rng, rng.randint(1, sizes.max_digits), task, share, leading=True))
        return f"{a}+{b}=", str(a + b)[::-1]
    text = _symbols(rng, rng.randint(3, sizes.max_length), task, share, leading=False)
    if task == "reversal":
        return f"{text}>", text[::-1]
    return f"{text}:", "".join(sorted(text))


def shifted_test_set(
    task: str, distribution: str, sizes: TaskSizes, count: int, seed: int
) -> list[dict[str, str]]:
    """``count`` distinct test examples of ``task`` in ``distribution``, drawn with their own seed (fewer if the
    distribution has fewer distinct prompts)."""
    rng = random.Random(f"{seed}-{task}-{distribution}-shifted-test")
    rows: dict[str, str] = {}
    attempts = 0
    while len(rows) < count and attempts < 50 * count:
        attempts += 1
        prompt, target = shifted_pair(task, rng, sizes, distribution)
        rows.setdefault(prompt, target)
    return [{"prompt": p, "target": t} for p, t in rows.items()]


def zoo_sizes(zoo: ZooConfig) -> tuple[TaskSizes, int]:
    """The task sizes of a zoo and the number of test documents per task (the zoo's own)."""
    preset = LM_PRESETS[zoo.size]
    return TaskSizes(preset.max_digits, preset.max_length), preset.test_docs


def shifted_test_prompts(zoo: ZooConfig) -> frozenset[str]:
    """Every prompt of every shifted test set of ``zoo``: training never draws these."""
    sizes, count = zoo_sizes(zoo)
    return frozenset(
        row["prompt"]
        for task in TASKS
        for distribution in DISTRIBUTIONS
        for row in shifted_test_set(task, distribution, sizes, count, zoo.seed)
    )


def zoo_config(folder: Path, where: str) -> ZooConfig:
    """The build settings of the language zoo in ``folder``.

    Raises:
        UserError: not a language zoo.
    """
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("kind") != "lm":
        raise UserError(f"{where}: {folder} is not a language zoo (build it with `hm3 zoo build --kind lm`)")
    return ZooConfig(manifest["kind"], manifest["family"], manifest["size"], int(manifest["seed"]))


def write_shifted_tasks(folder: Path) -> list[Path]:
    """Write every shifted test set of the language zoo in ``folder`` and its lm-eval task YAML into
    ``folder/himole_tasks`` (the same files for the same zoo); returns the YAMLs. Each file is written next to
    its place and renamed into it, so an interrupted call leaves whole files only."""
    folder = Path(folder).resolve()
    zoo = zoo_config(folder, "--zoo")
    sizes, count = zoo_sizes(zoo)
    generation = LM_PRESETS[zoo.size].max_gen_toks  # the zoo's own tests' budget
    out = folder / FOLDER
    out.mkdir(exist_ok=True)
    written = []
    for task in TASKS:
        for distribution in DISTRIBUTIONS:
            name = shifted_name(task, distribution)
            rows = shifted_test_set(task, distribution, sizes, count, zoo.seed)
            data, yaml = out / f"{name}.jsonl", out / f"{name}.yaml"
            _write_whole(data, "".join(json.dumps(row) + "\n" for row in rows))
            _write_whole(yaml, task_yaml(name, data, generation))
            written.append(yaml)
    return written


def _write_whole(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    staging.replace(path)
