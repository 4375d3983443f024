"""The language zoo's tasks: generators of prompt/answer pairs, their JSONL files and lm-eval task YAMLs.

Every task is a string transformation with its own operator character, answered greedily in one line:

======== ===================== ============ ===============================================
task     prompt                target       out-of-distribution variant (``<task>_ood``)
======== ===================== ============ ===============================================
addition ``"57+218="``         ``"572"``    one operand one digit longer than ever trained
reversal ``"hcadk>"``          ``"kdach"``  letters n-z (the specialist only saw a-m)
sorting  ``"40721:"``          ``"01247"``  strings two to three digits longer
======== ===================== ============ ===============================================

The sum is written least-significant digit first (57 + 218 = 275 is answered ``"572"``): generating it left to
right then needs only the digits seen so far plus a carry, which a 2-layer model learns in a few hundred
steps; in the usual order the first digit depends on every carry and the micro model stays near 0.05 after
500 steps (0.08 at 5e-3 and 0.05 at 1e-2, against 0.77 reversed at 1e-2; see ``benchmarks/results/zoo_build.md``).

JSONL rows are ``{"prompt": ..., "target": ...}``. The models are trained on ``prompt + target + "\\n"``
with no BOS token, so the YAMLs use ``doc_to_text: "{{prompt}}"``, ``target_delimiter: ""`` and
``until: ["\\n"]``. The pretraining corpus (:func:`pretraining_line`) is generic text with structure
(palindromes, copies, anagrams, sorted strings, arithmetic progressions): the same characters and sub-skills
the tasks build on, none of the tasks' prompt formats or operators.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
ID_LETTERS = LETTERS[:13]
OOD_LETTERS = LETTERS[13:]


@dataclass(frozen=True)
class TaskSizes:
    """Difficulty knobs of the tasks for one zoo size.

    Attributes:
        max_digits: Longest addition operand in distribution (OOD adds one digit to one operand).
        max_length: Longest reversal/sorting string in distribution (shortest is 3).
    """

    max_digits: int
    max_length: int


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def addition(rng: random.Random, sizes: TaskSizes, ood: bool) -> tuple[str, str]:
    """``"a+b="`` -> the digits of ``a+b`` reversed (least significant first); OOD makes one operand one digit longer."""
    da, db = rng.randint(1, sizes.max_digits), rng.randint(1, sizes.max_digits)
    if ood:
        da = sizes.max_digits + 1
    a, b = _number(rng, da), _number(rng, db)
    if ood and rng.random() < 0.5:
        a, b = b, a
    return f"{a}+{b}=", str(a + b)[::-1]


def reversal(rng: random.Random, sizes: TaskSizes, ood: bool) -> tuple[str, str]:
    """``"abc>"`` -> ``"cba"`` over letters a-m; OOD uses letters n-z."""
    alphabet = OOD_LETTERS if ood else ID_LETTERS
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(3, sizes.max_length)))
    return f"{text}>", text[::-1]


def sorting(rng: random.Random, sizes: TaskSizes, ood: bool) -> tuple[str, str]:
    """``"3142:"`` -> ``"1234"``; OOD strings are 2-3 digits longer than in distribution."""
    low, high = (sizes.max_length + 2, sizes.max_length + 3) if ood else (3, sizes.max_length)
    text = "".join(rng.choice("0123456789") for _ in range(rng.randint(low, high)))
    return f"{text}:", "".join(sorted(text))


TASKS: dict[str, Callable[[random.Random, TaskSizes, bool], tuple[str, str]]] = {
    "addition": addition,
    "reversal": reversal,
    "sorting": sorting,
}
"""Task name -> generator ``(rng, sizes, ood) -> (prompt, target)``; one specialist is trained per row."""


def task_name(task: str, ood: bool) -> str:
    """The lm-eval task name, e.g. ``toy_addition`` or ``toy_addition_ood``."""
    return f"toy_{task}_ood" if ood else f"toy_{task}"


def pretraining_line(rng: random.Random) -> str:
    """One line of the generic corpus: text with generic structure, none of it a task or a task's operator.

    Seven kinds, equally often: words (half of them palindromes), digit strings (half mirrored), ``~``-copies,
    anagram pairs (a string and a shuffle of it), sorted strings, arithmetic progressions (``"17 29 41 53"``),
    and the unstructured lines of :func:`plain_line`. They teach sub-skills the tasks build on (mirroring,
    keeping a multiset, order, carrying) so a specialist needs a small move from the base, as a large model's
    fine-tune does; the base still scores 0 on every task (``scores.md``): it never sees ``+ > : =``.
    """
    kind = rng.randrange(7)
    if kind == 0:
        words = []
        for _ in range(rng.randint(2, 5)):
            word = _word(rng, 1, 6, LETTERS)
            words.append(_mirrored(rng, word) if rng.random() < 0.5 else word)
        return " ".join(words)
    if kind == 1:
        digits = _word(rng, 2, 8, DIGITS)
        return digits + digits[::-1] if rng.random() < 0.5 else digits
    if kind == 2:
        text = _word(rng, 2, 7, LETTERS + DIGITS)
        return f"{text}~{text}"
    if kind == 3:
        chars = list(_word(rng, 2, 7, rng.choice([LETTERS, DIGITS])))
        shuffled = chars[:]
        rng.shuffle(shuffled)
        return "".join(chars) + " " + "".join(shuffled)
    if kind == 4:
        return "".join(sorted(_word(rng, 3, 10, rng.choice([LETTERS, DIGITS]))))
    if kind == 5:
        start, step = rng.randint(0, 99), rng.randint(1, 30)
        return " ".join(str(start + i * step) for i in range(rng.randint(3, 6)))
    return plain_line(rng)


def _word(rng: random.Random, low: int, high: int, alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def _mirrored(rng: random.Random, word: str) -> str:
    """An even (``abba``) or odd (``aba``) palindrome grown from ``word``."""
    return word + word[::-1] if rng.random() < 0.5 else word + word[-2::-1]


def plain_line(rng: random.Random) -> str:
    """Random words, a digit string, or a ``~``-copy of a random string (the corpus of builder version 2)."""
    kind = rng.randrange(3)
    if kind == 0:
        return " ".join(
            "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(2, 5))
        )
    if kind == 1:
        return "".join(rng.choice("0123456789 ") for _ in range(rng.randint(4, 16))).strip() or "0"
    text = "".join(rng.choice(LETTERS + "0123456789") for _ in range(rng.randint(2, 7)))
    return f"{text}~{text}"


def make_test_set(task: str, sizes: TaskSizes, ood: bool, count: int, seed: int) -> list[dict[str, str]]:
    """``count`` distinct held-out examples of a task, drawn with their own seed.

    Args:
        task: A key of :data:`TASKS`.
        sizes: Difficulty knobs of the zoo size.
        ood: Draw the out-of-distribution variant.
        count: Number of distinct examples.
        seed: Seed of this test set (training draws never reuse these prompts).
    """
    rng = random.Random(f"{seed}-{task}-{'ood' if ood else 'id'}-test")
    rows: dict[str, str] = {}
    while len(rows) < count:
        prompt, target = TASKS[task](rng, sizes, ood)
        rows.setdefault(prompt, target)
    return [{"prompt": p, "target": t} for p, t in rows.items()]


def write_jsonl(rows: list[dict[str, str]], path: Path) -> None:
    """Write rows as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def task_yaml(name: str, data_file: Path, max_gen_toks: int) -> str:
    """The lm-eval 0.4 task YAML of one task: greedy generation until newline, scored by exact match.

    Args:
        name: lm-eval task name.
        data_file: Absolute path of the test JSONL (lm-eval resolves a relative ``data_files`` against the
            current directory, not the YAML's folder, so the zoo writes absolute paths).
        max_gen_toks: Generation budget (longest answer plus the newline).
    """
    return (
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {json.dumps(str(data_file))}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        'doc_to_text: "{{prompt}}"\n'
        'doc_to_target: "{{target}}"\n'
        'target_delimiter: ""\n'
        'fewshot_delimiter: "\\n"\n'
        "num_fewshot: 0\n"
        "generation_kwargs:\n"
        '  until: ["\\n"]\n'
        "  do_sample: false\n"
        f"  max_gen_toks: {max_gen_toks}\n"
        "metric_list:\n"
        "  - metric: exact_match\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "metadata:\n"
        "  version: 1.0\n"
    )
