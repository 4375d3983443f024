"""hm3's scoring (requests built once, the greedy shortcut, one exact-match call) gives lm-eval's exact scores."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from hm3.evaluate.greedy import could_become, decided_text
from tests.fixtures_models import write_recipe
from tests.fixtures_zoo import lm_zoo_micro  # noqa: F401

STOPS = ["\n", "</s>"]


def test_a_stop_decides_the_text_only_once_no_later_token_can_move_it():
    assert decided_text("97\n", STOPS) == "97"
    assert decided_text("97\nxy", STOPS) == "97"
    assert decided_text("97", STOPS) is None  # the stop may still come
    assert decided_text("", STOPS) is None
    # "\n\n" first in the order: a single "\n" at the end could still become "\n\n" -> the cut may move
    assert decided_text("ab\n", ["\n\n", "\n"]) is None
    assert decided_text("ab\ncd", ["\n\n", "\n"]) == "ab"
    assert decided_text("ab\n\n", ["\n\n", "\n"]) == "ab"


def test_a_text_that_left_its_reference_cannot_come_back():
    assert could_become("9", "97", STOPS)
    assert not could_become("8", "97", STOPS)
    assert not could_become("975", "97", STOPS)  # no stop begins with "5"
    assert could_become("97\n", "97", STOPS)  # cut at the stop
    assert could_become("97</", "97", STOPS)  # an EOS string under way


def _recipe(zoo: Path, folder: Path) -> Path:
    manifest = json.loads((zoo / "zoo.json").read_text())
    objectives = "".join(
        f"  - {{name: {task['name']}, task: {zoo / task['yaml']}, model: {task['name'].split('_')[1]}}}\n"
        for task in manifest["tasks"]
        if "yaml" in task
    )
    models = "".join(
        f"  - {{name: {name}, path: {zoo / name}}}\n" for name in ("addition", "reversal", "sorting")
    )
    return write_recipe(folder, f"base_model: {zoo / 'base'}\nmodels:\n{models}objectives:\n{objectives}")


def _candidates(zoo: Path) -> dict[str, torch.nn.Module]:
    """Specialists, their average, a model whose layers run backwards and a noisy one (good and broken)."""
    from transformers import AutoModelForCausalLM

    models = {
        name: AutoModelForCausalLM.from_pretrained(zoo / name).eval()
        for name in ("addition", "reversal", "sorting")
    }
    average = copy.deepcopy(models["addition"])
    states = [model.state_dict() for model in models.values()]
    average.load_state_dict({key: sum(state[key] for state in states) / len(states) for key in states[0]})
    backwards = copy.deepcopy(models["reversal"])
    backwards.model.layers = torch.nn.ModuleList(reversed(list(backwards.model.layers)))
    noisy = copy.deepcopy(models["sorting"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in noisy.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std() * 0.5)
    return {**models, "average": average, "backwards": backwards.eval(), "noisy": noisy.eval()}


@pytest.mark.slow
def test_every_zoo_task_scores_exactly_as_lm_eval_evaluate_on_good_and_broken_models(lm_zoo_micro, tmp_path):  # noqa: F811
    from hm3.evaluate import Evaluator
    from hm3.evaluate.threads import scoring_threads
    from hm3.recipe import load_recipe

    evaluator = Evaluator.from_recipe(load_recipe(_recipe(lm_zoo_micro, tmp_path)))
    shortcut_documents = 0
    for name, model in _candidates(lm_zoo_micro).items():
        lm = evaluator._lm_for(model, evaluator.tokenizer)
        with scoring_threads(model):
            for split in ("search", "heldout"):
                for objective in evaluator.objectives:
                    fast = objective.score(lm, split)
                    reference = objective.score_with_lm_eval(lm, split)
                    assert fast == reference, (name, objective.name, split, fast, reference)
        shortcut_documents += sum(
            objective.prepared(lm, "search").use.greedy for objective in evaluator.objectives
        )
    assert shortcut_documents > 0  # the shortcut was taken, not only lm-eval's decoding


@pytest.mark.slow
@pytest.mark.parametrize("margin", [0.5, float("inf")])
def test_choices_too_close_to_call_take_lm_evals_own_batches_and_keep_the_score(
    lm_zoo_micro,  # noqa: F811
    tmp_path,
    monkeypatch,
    margin,
):
    """A wide margin makes many (0.5) or all (inf) greedy choices too close to call: the documents go through
    lm-eval's decoding batch by batch, mixed with the shortcut's, and the scores stay lm-eval's."""
    import hm3.evaluate.greedy as greedy
    from hm3.evaluate import Evaluator
    from hm3.evaluate.threads import scoring_threads
    from hm3.recipe import load_recipe

    monkeypatch.setattr(greedy, "DECISION_MARGIN", margin)
    evaluator = Evaluator.from_recipe(load_recipe(_recipe(lm_zoo_micro, tmp_path)))
    candidates = _candidates(lm_zoo_micro)
    lm_eval_documents = 0
    for name in ("addition", "noisy"):
        model = candidates[name]
        lm = evaluator._lm_for(model, evaluator.tokenizer)
        with scoring_threads(model):
            for objective in evaluator.objectives:
                assert objective.score(lm, "search") == objective.score_with_lm_eval(lm, "search"), name
                lm_eval_documents += objective.prepared(lm, "search").use.lm_eval
    assert lm_eval_documents > 0


def test_a_generation_config_that_changes_greedy_decoding_keeps_lm_eval_decoding(lm_zoo_micro, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from hm3.evaluate import Evaluator
    from hm3.recipe import load_recipe

    evaluator = Evaluator.from_recipe(load_recipe(_recipe(lm_zoo_micro, tmp_path)))
    model = AutoModelForCausalLM.from_pretrained(lm_zoo_micro / "reversal").eval()
    model.generation_config.repetition_penalty = 1.3
    objective = next(o for o in evaluator.objectives if o.name == "toy_reversal")
    lm = evaluator._lm_for(model, evaluator.tokenizer)
    assert objective.score(lm, "search") == objective.score_with_lm_eval(lm, "search")
    use = objective.prepared(lm, "search").use
    assert use.greedy == 0 and use.lm_eval > 0


def test_a_sampled_task_is_never_shortcut(lm_zoo_micro, tmp_path):  # noqa: F811
    import yaml

    from hm3.evaluate import Evaluator
    from hm3.recipe import load_recipe

    config = yaml.safe_load((lm_zoo_micro / "tasks" / "toy_addition.yaml").read_text())
    config["generation_kwargs"].update(do_sample=True, temperature=0.7)
    task = tmp_path / "sampled.yaml"
    task.write_text(yaml.safe_dump(config))
    recipe = write_recipe(
        tmp_path,
        f"base_model: {lm_zoo_micro / 'base'}\nmodels:\n"
        + "".join(f"  - {{name: {n}, path: {lm_zoo_micro / n}}}\n" for n in ("addition", "reversal"))
        + f"objectives:\n  - {{name: sampled, task: {task}, model: addition}}\n",
    )
    evaluator = Evaluator.from_recipe(load_recipe(recipe))
    from transformers import AutoModelForCausalLM

    lm = evaluator._lm_for(
        AutoModelForCausalLM.from_pretrained(lm_zoo_micro / "addition"), evaluator.tokenizer
    )
    assert evaluator.objectives[0].prepared(lm, "search").greedy is None
