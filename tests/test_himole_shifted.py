"""The covariate-shifted HiMoLE tasks (``hm3.himole.shifted``, ``hm3 himole tasks``): symbols drawn from each
half at the distribution's share, the zoo's formats and answers, test sets fixed by the zoo's seed and never a
training prompt, task YAMLs lm-eval scores, and one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from hm3.himole.shifted import DISTRIBUTIONS, SYMBOL_HALVES, shifted_pair, write_shifted_tasks
from hm3.zoo.lm_tasks import TaskSizes
from tests.fixtures_models import write_recipe
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401
from tests.test_himole import _hm3

SIZES = TaskSizes(max_digits=2, max_length=7)


@pytest.mark.parametrize("task", ["addition", "reversal", "sorting"])
@pytest.mark.parametrize("distribution", ["common", "rare"])
def test_symbols_come_from_the_rare_half_at_the_distributions_share(task, distribution) -> None:
    common, rare = SYMBOL_HALVES[task]
    rng = random.Random(0)
    counts = {"common": 0, "rare": 0}
    for _ in range(2000):
        prompt, target = shifted_pair(task, rng, SIZES, distribution)
        body = prompt[:-1]
        if task == "addition":
            a, b = body.split("+")
            assert all(len(n) <= SIZES.max_digits and (len(n) == 1 or n[0] != "0") for n in (a, b))
            assert target == str(int(a) + int(b))[::-1]
            body = a + b
        else:
            assert 3 <= len(body) <= SIZES.max_length
            assert target == (body[::-1] if task == "reversal" else "".join(sorted(body)))
        for symbol in body:
            assert symbol in common + rare
            counts["rare" if symbol in rare else "common"] += 1
    share = counts["rare"] / sum(counts.values())
    # addition's leading digits never draw 0, which shifts its share a little
    assert share == pytest.approx(DISTRIBUTIONS[distribution], abs=0.05)


def test_the_shifted_tests_are_written_once_for_a_zoo_and_scored_and_never_trained_on(
    lm_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from hm3.himole.config import HiMoLEConfig
    from hm3.himole.data import load_pairs

    yamls = write_shifted_tasks(lm_zoo_micro)
    assert sorted(y.stem for y in yamls) == sorted(
        f"toy_{t}_{d}" for t in ("addition", "reversal", "sorting") for d in ("common", "rare")
    )
    first = {y: (y.read_bytes(), y.with_suffix(".jsonl").read_bytes()) for y in yamls}
    code, stdout, _ = _hm3("himole", "tasks", "--zoo", lm_zoo_micro)  # the same files again
    assert code == 0 and "wrote 6 task YAMLs" in stdout
    assert {y: (y.read_bytes(), y.with_suffix(".jsonl").read_bytes()) for y in yamls} == first
    assert not list((lm_zoo_micro / "himole_tasks").glob(".*"))  # no staging left behind
    tests = {
        json.loads(line)["prompt"] for y in yamls for line in y.with_suffix(".jsonl").read_text().splitlines()
    }
    section = HiMoLEConfig(
        train_data=[{"zoo": str(lm_zoo_micro), "task": "reversal", "distribution": "common", "count": 64}]
    )
    pairs = load_pairs(section, seed=0)
    assert len(pairs) == 64 and not {p.prompt for p in pairs} & tests
    # a recipe on the shifted tests: lm-eval scores them (the base model, a few documents)
    folder = lm_zoo_micro / "himole_tasks"
    recipe = write_recipe(
        tmp_path,
        f"base_model: {lm_zoo_micro}/base\n"
        "objectives:\n"
        f"  - {{name: reversal, task: {folder}/toy_reversal_common.yaml, batch_size: 32}}\n"
        f"  - {{name: reversal_ood, task: {folder}/toy_reversal_rare.yaml, batch_size: 32}}\n"
        "device: cpu\n"
        "himole:\n"
        f"  train_data:\n    - {{zoo: {lm_zoo_micro}, task: reversal, distribution: common, count: 16}}\n"
        "  ood_objectives: [reversal_ood]\n",
    )
    report = tmp_path / "base.json"
    code, _, stderr = _hm3("himole", "eval", "--recipe", recipe, "--base", "--limit", "4", "--json", report)
    assert code == 0, stderr
    assert set(json.loads(report.read_text())["scores"]) == {"reversal", "reversal_ood"}


def test_bad_shifted_task_input_is_one_line(tmp_path: Path) -> None:
    from hm3.himole.config import HiMoLEConfig

    code, _, stderr = _hm3("himole", "tasks", "--zoo", tmp_path)
    assert code == 2 and stderr.strip().count("\n") == 0 and "is not a language zoo" in stderr
    with pytest.raises(ValueError, match="'distribution' goes with 'zoo'"):
        HiMoLEConfig(train_data=[{"path": "/x.jsonl", "distribution": "rare"}])
    with pytest.raises(ValueError, match="distribution"):
        HiMoLEConfig(train_data=[{"zoo": "/z", "task": "reversal", "count": 4, "distribution": "sometimes"}])
