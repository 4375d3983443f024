"""How HM3 splits its budget between the levels: patience, the give-back, and the GP optimiser's contract."""

from __future__ import annotations

import numpy as np
import pytest

from hm3.moo.bayesian import gp_maximise
from hm3.recipe import Recipe
from hm3.search.allocation import MIN_PATIENCE, Patience, TrainingPatience
from hm3.search.budget import charged_documents
from hm3.search.run import budget_allocation


def _recipe(**agent) -> Recipe:
    return Recipe.model_validate(
        {
            "base_model": {"path": "/models/base"},
            "models": [{"name": "a", "path": "/models/a"}, {"name": "b", "path": "/models/b"}],
            "objectives": [
                {"name": "a", "task": "arc_easy", "metric": "acc"},
                {"name": "b", "task": "arc_challenge", "metric": "acc"},
            ],
            "parameter_level": {"method": "task_arithmetic", "budget": 6},
            "agent": {"iterations": 20, **agent},
        }
    )


def test_patience_stops_after_its_window_of_non_improving_candidates_and_counts_float_noise_as_none():
    patience = Patience(window=3)
    for reward in (0.5, 0.4, 0.5 + 1e-12, 0.3):  # the start, then three that do not beat it
        assert not patience.stalled()
        patience.see(reward)
    assert patience.stalled() and patience.best == 0.5
    patience.see(0.6)  # an improvement resets the window
    assert not patience.stalled() and patience.since_best == 0


def test_a_conditioned_training_stops_once_its_window_of_spending_raised_no_preferences_best():
    patience = TrainingPatience.from_recipe(_recipe(mode="conditioned", patience=0.25), 20)
    assert patience.window == max(MIN_PATIENCE, 5)
    for raised, cost in ((False, 1.0), (True, 0.25), (False, 0.25), (False, 1.0), (False, 1.0), (False, 1.0)):
        assert not patience.stalled()
        patience.see(raised, cost)
    assert not patience.stalled() and patience.since_raised == 3.25  # spent since the last raise, screens too
    patience.see(False, 1.75)
    assert patience.stalled() and patience.raised == 1
    patience.see(True, 1.0)  # a raise restarts the window
    assert not patience.stalled()
    assert not TrainingPatience.from_recipe(_recipe(mode="conditioned", patience=None), 20).stalled()


def test_patience_counts_what_was_spent_and_a_screen_never_raises_the_best():
    patience = Patience(window=2)
    patience.see(0.5)  # the start
    for _ in range(7):  # seven paths screened out at a quarter of a full scoring each: 1.75 spent
        patience.see(0.9, cost=0.25, screen=True)  # a screen's reward is on other documents: never a best
    assert not patience.stalled() and patience.best == 0.5 and not patience.paid
    patience.see(0.4)  # a full scoring that does not improve: 2.75 spent since the best
    assert patience.stalled()
    patience.see(0.6)
    assert patience.paid and patience.since_best == 0 and not patience.stalled()


def test_patience_window_from_the_recipe_and_none_never_stops():
    assert Patience.from_recipe(_recipe(), 20).window == 5  # ceil(0.25 x 20)
    assert Patience.from_recipe(_recipe(patience=0.01), 20).window == MIN_PATIENCE
    never = Patience.from_recipe(_recipe(patience=None), 20)
    for _ in range(100):
        never.see(0.0)
    assert not never.stalled()


def test_with_the_optimised_upper_level_a_stalled_search_spends_at_most_one_first_round():
    long = _recipe(iterations=1000)  # ceil(0.25 x 1000) = 250 full scorings, the first round 6 merges
    assert Patience.from_recipe(long, 1000).window == 6
    assert TrainingPatience.from_recipe(long, 1000).window == 6
    assert Patience.from_recipe(long, 1000, path_level_paid=False).unpaid_window == 1
    assert Patience.from_recipe(long, 20).window == 5  # below the round: the fraction's window
    tiny = long.model_copy(update={"parameter_level": long.parameter_level.model_copy(update={"budget": 1})})
    assert Patience.from_recipe(tiny, 1000).window == MIN_PATIENCE
    paper = long.model_copy(
        update={"parameter_level": long.parameter_level.model_copy(update={"weights": "preference"})}
    )
    assert not paper.parameter_level.optimised
    assert Patience.from_recipe(paper, 1000).window == 250  # no round of merges to measure it against


def test_the_unspent_path_budget_goes_back_to_the_upper_level_at_most_once_its_size():
    recipe = _recipe()
    results = [{"budget": 21, "used": 21}, {"budget": 21, "used": 8, "stopped_early": True}]
    allocation = budget_allocation(recipe, results)
    assert allocation["paths_per_preference"] == [20, 7]
    assert allocation["unspent"] == 13 and allocation["given_back"] == 6  # capped at the first round's 6
    assert allocation["stopped_early"] == [False, True]
    paper = recipe.model_copy(
        update={"parameter_level": recipe.parameter_level.model_copy(update={"weights": "preference"})}
    )
    assert budget_allocation(paper, results) is None  # nothing to give it back to


def test_a_conditioned_agents_unspent_training_budget_goes_back_to_the_upper_level_too():
    recipe = _recipe(mode="conditioned")  # its training may score 20 paths; the rollouts are the preferences'
    rollouts = [{"budget": 2, "used": 2}, {"budget": 2, "used": 2}]
    converged = budget_allocation(recipe, rollouts, conditioned_spent=17)
    assert converged["conditioned_training_paths"] == 17 and converged["stopped_early"]
    assert converged["unspent"] == 3 and converged["given_back"] == 3
    assert (
        budget_allocation(recipe, rollouts, conditioned_spent=2)["given_back"] == 6
    )  # capped at the first round
    assert budget_allocation(recipe, rollouts, conditioned_spent=20)["given_back"] == 0


def test_a_conditioned_trainings_screens_count_at_their_share_so_only_what_it_left_goes_back():
    """Its ledger: 3 paths scored fully and 19 screened at 54 of 210 documents each, 7.89 of 8 full scorings
    spent — counting its full paths alone gave 5 back and the run spent past its budget."""
    ledger = {
        "merge": {"candidates": 0, "documents": 0, "scored_now": 0, "shared": 1},  # the upper level's: free
        "path": {"candidates": 3, "documents": 630, "scored_now": 3, "shared": 0},
        "screen": {"candidates": 19, "documents": 1026, "scored_now": 19, "shared": 0},
    }
    spent = charged_documents(ledger) / 210
    assert spent == pytest.approx(3 + 19 * 54 / 210)
    recipe = _recipe(mode="conditioned", iterations=8)
    allocation = budget_allocation(recipe, [{"budget": 2, "used": 2}], conditioned_spent=spent)
    assert allocation["conditioned_training_paths"] == pytest.approx(7.885714)
    assert allocation["unspent"] == pytest.approx(0.114286) and allocation["given_back"] == 0


def _toy(x: np.ndarray) -> list[float]:
    return [-float((x[0] - 0.3) ** 2 + x[1]), -float((x[1] - 0.7) ** 2 + x[0])]


def test_the_gp_optimiser_stays_in_its_box_within_its_budget_and_repeats_itself_for_a_seed():
    def run(seed: int) -> np.ndarray:
        asked: list[np.ndarray] = []

        def evaluate(x: np.ndarray) -> list[float]:
            asked.append(x.copy())
            return _toy(x)

        gp_maximise(evaluate, [0.0, 0.0], [2.0, 1.0], 2, seed=seed, more=lambda: len(asked) < 14)
        return np.array(asked)

    first, again, other = run(0), run(0), run(1)
    assert first.shape == (14, 2)
    assert (first >= 0).all() and (first[:, 0] <= 2).all() and (first[:, 1] <= 1).all()
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_the_gp_optimiser_asks_the_first_points_first_and_an_error_ends_it():
    asked: list[np.ndarray] = []

    def evaluate(x: np.ndarray) -> list[float]:
        asked.append(x.copy())
        if len(asked) == 3:
            raise RuntimeError("budget")
        return _toy(x)

    with pytest.raises(RuntimeError):
        gp_maximise(evaluate, [0.0, 0.0], [1.0, 1.0], 2, seed=0, more=lambda: True, first=[[0.5, 0.5]])
    assert asked[0].tolist() == [0.5, 0.5] and len(asked) == 3


@pytest.mark.parametrize("optimiser", ["gp", "nsga2"])
def test_a_continued_search_asks_the_points_of_one_longer_search(optimiser):
    from hm3.moo.bayesian import GPSearch
    from hm3.moo.nsga2 import NSGA2Search

    class Spent(Exception):
        pass

    def search(rounds: list[int]) -> list[list[float]]:
        if optimiser == "gp":
            engine = GPSearch([0.0, 0.0], [1.0, 1.0], 2, seed=3)
        else:
            engine = NSGA2Search([0.0, 0.0], [1.0, 1.0], 2, population=4, seed=3)
        asked: list[list[float]] = []

        def evaluate(x: np.ndarray) -> list[float]:
            if len(asked) >= budget:
                raise Spent  # mid-generation for NSGA-II: the generation is finished by the next round
            asked.append(x.tolist())
            values = _toy(x)
            return values if optimiser == "gp" else [-v for v in values]

        for budget in rounds:
            try:
                engine.run(evaluate, lambda: len(asked) < budget)  # noqa: B023
            except Spent:
                pass
        return asked

    assert search([7, 13]) == search([13])


def test_an_unpaid_path_level_gets_its_small_window_until_a_path_of_its_own_beats_the_merge():
    recipe = _recipe(unpaid_patience=1)
    assert Patience.from_recipe(recipe, 20).unpaid_window is None  # the probe paid (or is the probe)
    unpaid = Patience.from_recipe(recipe, 20, path_level_paid=False)
    assert (unpaid.window, unpaid.unpaid_window) == (5, 1)
    unpaid.see(0.5)  # the merge
    assert not unpaid.stalled()
    unpaid.see(0.4)  # one path that does not beat it: stop
    assert unpaid.stalled() and not unpaid.paid
    paying = Patience.from_recipe(recipe, 20, path_level_paid=False)
    for reward in (0.5, 0.6, 0.55, 0.55):  # a path beats the merge: the full window from then on
        paying.see(reward)
    assert paying.paid and not paying.stalled()
    for _ in range(3):
        paying.see(0.1)
    assert paying.stalled()
    assert (
        Patience.from_recipe(_recipe(unpaid_patience=None), 20, path_level_paid=False).unpaid_window is None
    )
    assert Patience.from_recipe(_recipe(unpaid_patience=9), 20, path_level_paid=False).unpaid_window == 5


def test_the_probe_verdict_is_whether_a_path_beat_the_merge_it_routed_over():
    from hm3.search.allocation import path_level_paid

    merged = [[2, 0], [2, 1]]
    record = {
        "merged_path": merged,
        "candidates": [{"path": merged, "reward": 0.5}, {"path": [[0, 0]], "reward": 0.4}],
    }
    assert not path_level_paid(record)
    record["candidates"].append({"path": [[1, 0], [2, 1]], "reward": 0.5 + 1e-6})
    assert path_level_paid(record)


def test_paths_pay_when_they_add_to_the_front_at_least_what_the_upper_levels_last_merges_did():
    """The upper level's round (2 objectives, normalised): its last quarter (1 of 4 merges) added a box of
    0.1 × 0.5 = 0.05 hypervolume. A path that adds less than 0.05 per full scoring it cost does not pay — even
    one that beats its merge for λ —, one that adds more does, and a dominated one never does."""
    from hm3.search.allocation import FrontGain

    round_ = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.6, 0.5]])
    gain = FrontGain.of_round(round_)
    assert gain is not None and gain.bar == pytest.approx(0.1 * 0.5)  # [0.6, 0.5] over [0.5, 0.5] and [1, 0]
    assert len(gain.archive) == 3  # [0.5, 0.5] is dominated
    assert not gain.pays(np.array([[0.55, 0.45]]), cost=1.0)  # dominated: adds nothing
    small = np.array([[0.65, 0.5]])  # adds 0.05 × 0.5 = 0.025 < 0.05
    assert not gain.pays(small, cost=1.0) and gain.pays(small, cost=0.25)  # cheap enough, it pays
    assert gain.pays(np.array([[0.9, 0.9]]), cost=3.0)
    assert not gain.pays(np.array([[0.9, 0.9]]), cost=0.0) and FrontGain.of_round(np.empty((0, 2))) is None
    assert not gain.adds(np.array([0.55, 0.45])) and not gain.adds(
        np.array([0.6, 0.5])
    )  # on or under the front
    assert gain.adds(np.array([0.65, 0.5]))


def test_with_a_front_gain_a_preferences_paths_pay_by_what_they_add_not_by_beating_their_merge():
    """The unpaid window ends when the paths after the merge, screens' spend included, pay
    (:class:`FrontGain`); a path that only beats the merge's reward keeps the small window."""
    from hm3.search.allocation import FrontGain

    gain = FrontGain.of_round(np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.6, 0.5]]))
    recipe = _recipe(unpaid_patience=1)
    patience = Patience.from_recipe(recipe, 20, path_level_paid=False, gain=gain)
    patience.see(0.5, point=np.array([0.6, 0.5]))  # the merge: its cost is not the paths'
    patience.see(0.6, point=np.array([0.55, 0.45]))  # beats the merge's reward, adds no hypervolume
    # not progress: the window (1 path while nothing paid) ran out
    assert not patience.paid and patience.best == 0.6 and patience.stalled()
    patience.see(0.1, cost=0.25, screen=True)
    patience.see(0.1, cost=0.25, screen=True)
    patience.see(0.2, point=np.array([0.65, 0.5]))  # adds 0.025, after 2.5 full scorings: below 0.05 each
    assert not patience.paid and patience.spent == pytest.approx(2.5) and patience.stalled()
    assert len(patience.points) == 1  # the dominated path is not kept: it cannot add to the front
    cheap = Patience.from_recipe(recipe, 20, path_level_paid=False, gain=gain)
    cheap.see(0.5, point=np.array([0.6, 0.5]))
    cheap.see(0.2, cost=0.4, point=np.array([0.65, 0.5]))  # 0.025 for 0.4: it pays
    assert cheap.paid and not cheap.stalled()


def test_with_a_front_gain_only_a_better_path_the_round_does_not_dominate_restarts_the_window():
    """A path search waits for progress measured as paying is: a better reward under the round's front does not
    restart the window, one outside it does; without a gain any better reward does."""
    from hm3.search.allocation import FrontGain

    gain = FrontGain.of_round(np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.6, 0.5]]))
    patience = Patience(window=3, gain=gain)
    patience.see(0.5, point=np.array([0.6, 0.5]))  # the merge
    patience.see(0.3, point=np.array([0.2, 0.3]))
    patience.see(0.6, point=np.array([0.55, 0.45]))  # better, dominated: the window goes on (2 of 3)
    assert patience.best == 0.6 and patience.since_best == pytest.approx(2.0) and not patience.stalled()
    patience.see(0.7, point=np.array([0.62, 0.52]))  # better and outside the round's front: progress
    assert patience.since_best == 0.0 and not patience.stalled()
    patience.see(0.65, cost=0.25, screen=True)
    assert patience.since_best == pytest.approx(0.25)
    plain = Patience(window=3)
    for reward in (0.5, 0.3, 0.6):
        plain.see(reward, point=np.array([0.55, 0.45]))
    assert plain.since_best == 0.0  # no gain: any better reward restarts it


def test_a_records_verdict_is_the_one_its_search_made():
    from hm3.search.allocation import path_level_paid

    merged = [[2, 0], [2, 1]]
    record = {
        "merged_path": merged,
        "candidates": [{"path": merged, "reward": 0.5}, {"path": [[1, 0], [2, 1]], "reward": 0.6}],
        "paid": False,  # beat its merge, but added too little to the front
    }
    assert not path_level_paid(record)


def test_screened_shares_are_given_back_to_the_last_whole_merge_not_rounded_up_per_preference():
    recipe = _recipe()  # 2 preferences x 21 paths, an upper-level first round of 6
    results = [{"budget": 21, "used": 3.25}, {"budget": 21, "used": 19.5, "stopped_early": True}]
    allocation = budget_allocation(recipe, results)
    assert allocation["paths_per_preference"] == [2.25, 18.5]  # what was spent, screens at their share
    assert allocation["unspent"] == pytest.approx(40 - 20.75)
    assert allocation["given_back"] == 6  # capped
    spent = [{"budget": 21, "used": 20.25}, {"budget": 21, "used": 19.25}]
    # 40 - 37.5 = 2.5 unspent: two whole merges (rounding each preference's quarter up would leave one)
    assert budget_allocation(recipe, spent)["given_back"] == 2


class _FakeLog:
    """The run log's part the budgeted evaluator uses, in memory."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self._scores: dict[str, dict] = {}

    def get(self, key: str):
        return self._scores.get(key)

    def documents(self, key: str, default: int) -> int:
        return next((r["documents"] for r in self.records if r["key"] == key), default)

    def record(self, key: str, scores: dict, **fields) -> None:
        self.records.append({"key": key, **fields, "scores": dict(scores)})
        self._scores[key] = dict(scores)


class _FakeSearch:
    """A search whose candidates all score 0.5 on one objective; the screen is a quarter of the search split."""

    objectives = ["a"]
    scoring = "test"

    def __init__(self) -> None:
        self.log = _FakeLog()
        self.scored = 0

        class _Evaluator:
            def score(inner, model, split):  # noqa: N805
                self.scored += 1
                return {"a": 0.5}

        class _Models:
            def build(inner, candidate):  # noqa: N805
                return None

        self.evaluator, self.models = _Evaluator(), _Models()

    def documents(self, split: str) -> int:
        return {"search": 100, "screen": 25}[split]


def _path(weights: tuple[float, ...], steps: tuple[int, ...]):
    from hm3.search.candidate import Candidate

    return Candidate(
        merge={"method": "task_arithmetic", "weights": list(weights)}, path=[[s, 0] for s in steps]
    )


def test_a_later_search_of_the_same_merge_gets_free_what_an_earlier_one_charged():
    from hm3.search.budget import BudgetedEvaluator, Ledger, shared_keys

    search = _FakeSearch()
    first = BudgetedEvaluator(search, "hm3", budget=10, preference_index=0)
    first.score(_path((1, 0), (0, 1)), level="path", split="screen")
    first.score(_path((1, 0), (0, 1)), level="path")
    assert first.used == 1.25 and search.scored == 2
    charges: list[float] = []
    second = BudgetedEvaluator(search, "hm3", budget=2, preference_index=1)
    second.prepaid = shared_keys(search.log.records, [0])
    second.on_charge = lambda candidate, scores, split, cost: charges.append(cost)
    second.score(_path((1, 0), (0, 1)), level="path", split="screen")  # the first's screen: free
    second.score(_path((1, 0), (0, 1)), level="path")
    assert second.used == 0 and search.scored == 2 and charges == [0.0, 0.0]
    second.score(_path((1, 0), (1, 1)), level="path")  # new: scored and charged
    assert second.used == 1 and search.scored == 3 and charges[-1] == 1.0
    assert second.ledger.to_json()["path"] == {
        "candidates": 1,
        "documents": 100,
        "scored_now": 1,
        "shared": 1,
    }
    assert Ledger.combine([first.ledger.to_json(), second.ledger.to_json()])["path"]["candidates"] == 2
    # another preference's candidates are no one else's: without the shared merge, a log answer is charged
    third = BudgetedEvaluator(search, "hm3", budget=1, preference_index=2)
    third.prepaid = shared_keys(search.log.records, [])
    third.score(_path((1, 0), (0, 1)), level="path")
    assert third.used == 1 and search.scored == 3


def test_preferences_that_start_from_one_merge_run_in_index_order_and_the_others_do_not_wait():
    from hm3.merge.spec import MergeSpec
    from hm3.search.distributed import next_ready
    from hm3.search.preference import merge_groups

    a = MergeSpec(method="task_arithmetic", weights=(1.0, 0.5))
    b = MergeSpec(method="task_arithmetic", weights=(0.5, 1.0))
    groups = merge_groups({0: a, 1: b, 2: a.model_copy(), 3: a})
    assert groups == {0: [], 1: [], 2: [0], 3: [0, 2]}
    queue = [(2, None), (3, None), (1, None)]
    assert next_ready(queue, {0, 1, 2, 3}, groups) == 2  # 0 still running: only 1 may start
    assert next_ready(queue, {2, 3}, groups) == 0  # 0 done: 2, not 3 (it waits for 2 as well)
    assert next_ready([(3, None)], {2, 3}, groups) is None


def test_the_gp_optimiser_asks_a_batch_before_any_answer_and_keeps_to_the_room_left():
    from hm3.moo.bayesian import GPSearch

    def run(batch: int) -> list[list[list[float]]]:
        engine = GPSearch([0.0, 0.0], [1.0, 1.0], 2, seed=5, batch=batch)
        batches: list[list[list[float]]] = []

        def evaluate(points: list[np.ndarray]) -> list[list[float]]:
            batches.append([x.tolist() for x in points])
            return [_toy(x) for x in points]

        asked = lambda: sum(map(len, batches))  # noqa: E731
        engine.run_batches(evaluate, lambda: asked() < 15, lambda: 15 - asked())
        return batches

    three, again, one = run(3), run(3), run(1)
    assert [len(b) for b in three] == [3, 3, 3, 3, 3] and three == again
    assert [len(b) for b in one] == [1] * 15
    flat = lambda batches: [x for b in batches for x in b]  # noqa: E731
    assert flat(three)[:9] == flat(one)[:9]  # the random start-up points (10) do not depend on the batch
    assert flat(three)[12:] != flat(one)[12:]  # the GP's do: a batch is asked before any of it is answered
    assert run(4)[-1] == run(4)[-1] and [len(b) for b in run(4)] == [4, 4, 4, 3]  # the room left: 15 - 12


def test_an_error_fails_the_whole_batch_and_ends_the_gp_search():
    import optuna

    from hm3.moo.bayesian import GPSearch

    engine = GPSearch([0.0, 0.0], [1.0, 1.0], 2, seed=0, batch=3)

    def evaluate(points: list[np.ndarray]) -> list[list[float]]:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        engine.run_batches(evaluate, lambda: True)
    states = [t.state for t in engine.study.trials]
    assert states == [optuna.trial.TrialState.FAIL] * 3


def test_nsga2_in_batches_asks_the_points_it_asks_one_at_a_time():
    from hm3.moo.nsga2 import NSGA2Search

    def run(room: int | None) -> list[list[float]]:
        engine = NSGA2Search([0.0, 0.0], [1.0, 1.0], 2, population=6, seed=2)
        asked: list[list[float]] = []

        def evaluate(points: list[np.ndarray]) -> list[list[float]]:
            assert room is None or len(points) <= room
            asked.extend(x.tolist() for x in points)
            return [[-v for v in _toy(x)] for x in points]

        if room is None:
            engine.run(lambda x: evaluate([x])[0], lambda: len(asked) < 18)
        else:
            engine.run_batches(evaluate, lambda: len(asked) < 18, lambda: room)
        return asked

    assert run(None) == run(4) == run(100)
