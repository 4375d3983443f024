"""Preferences, scalarization, non-dominated sorting and hypervolume (checked against pymoo)."""

from __future__ import annotations

import numpy as np
import pytest

from hm3.moo import Normalization, dominates, hypervolume, non_dominated_mask, preference_vectors, scalarize
from hm3.moo.plots import PlotSeries, plot_pareto
from hm3.moo.preferences import parse_preference
from hm3.moo.scalarization import ObjectiveScale


@pytest.mark.parametrize("dims,count", [(2, 15), (3, 25), (4, 20), (5, 12)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hypervolume_agrees_with_pymoo(dims, count, seed) -> None:
    from pymoo.indicators.hv import HV

    rng = np.random.default_rng(seed)
    points = rng.random((count, dims))
    # a front: project random points onto a curved surface, plus dominated stragglers
    points[: count // 2] /= np.linalg.norm(points[: count // 2], axis=1, keepdims=True)
    reference = np.full(dims, -0.1)
    ours = hypervolume(points, reference)
    theirs = HV(ref_point=-reference)(-points)  # pymoo minimises
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)


def test_hypervolume_of_simple_sets() -> None:
    assert hypervolume(np.array([[1.0, 1.0]]), np.zeros(2)) == pytest.approx(1.0)
    assert hypervolume(np.array([[1.0, 0.5], [0.5, 1.0]]), np.zeros(2)) == pytest.approx(0.75)
    assert hypervolume(np.array([[-1.0, 2.0]]), np.zeros(2)) == 0.0  # not above the reference
    assert hypervolume(np.empty((0, 3)), np.zeros(3)) == 0.0


def test_normalization_is_shared_and_documented() -> None:
    front = np.array([[0.8, 0.2], [0.5, 0.5]])
    others = np.array([[0.9, 0.0], [0.0, 0.9]])
    norm = Normalization.fit(front, others)
    assert norm.lower == (0.0, 0.0) and norm.upper == (0.9, 0.9)
    assert norm.hypervolume(others) < norm.hypervolume(np.vstack([front, others]))
    assert "min-max" in norm.to_dict()["method"]


def test_non_dominated_mask_and_dominates() -> None:
    points = np.array([[1, 0], [0, 1], [0.5, 0.5], [0.4, 0.4], [1, 0]], dtype=float)
    assert non_dominated_mask(points).tolist() == [True, True, True, False, True]
    assert dominates(points[2], points[3]) and not dominates(points[0], points[1])


def test_preferences_cover_corners_centre_and_dirichlet() -> None:
    prefs = preference_vectors(3, count=5, seed=0)
    assert prefs.shape == (3 + 1 + 5, 3)
    assert np.allclose(prefs.sum(axis=1), 1) and (prefs >= 0).all()
    assert np.allclose(prefs[:3], np.eye(3)) and np.allclose(prefs[3], 1 / 3)
    assert np.array_equal(prefs, preference_vectors(3, count=5, seed=0))
    assert not np.array_equal(prefs, preference_vectors(3, count=5, seed=1))
    assert preference_vectors(2, count=0, seed=0, include_centre=False).shape == (2, 2)


def test_the_objectives_weights_are_the_centre_preference(tmp_path) -> None:
    """``objectives[].weight`` was accepted and never read; it is the centre λ (equal weights: the uniform one)."""
    from hm3.recipe import recipe_from_dict
    from hm3.search.session import preferences

    assert np.allclose(
        preference_vectors(3, 0, 0, include_corners=False, centre=[2, 1, 1]), [[0.5, 0.25, 0.25]]
    )
    objectives = [{"name": n, "task": "sst2", "weight": w} for n, w in (("a", 3.0), ("b", 1.0))]
    raw = {"base_model": "base", "models": ["x", "y"], "objectives": objectives, "preferences": {"count": 2}}
    weighted = preferences(recipe_from_dict(raw, base_dir=tmp_path))
    assert np.allclose(weighted[0], [0.75, 0.25])  # then the Dirichlet samples, as before
    for objective in objectives:
        objective.pop("weight")
    equal = preferences(recipe_from_dict(raw, base_dir=tmp_path))
    assert np.allclose(equal[0], [0.5, 0.5]) and np.array_equal(equal[1:], weighted[1:])


def test_parse_preference() -> None:
    assert np.allclose(parse_preference("2,1,1", 3), [0.5, 0.25, 0.25])
    for bad in (
        "1,2",
        "a,b,c",
        "-1,1,1",
        "0,0,0",
        "1_0,1,1",
        "\u0661,1,1",
        "1,,1",
    ):  # "1_0", "١": float() takes them
        with pytest.raises(ValueError):
            parse_preference(bad, 3)
    assert str(parse_preference("1,-0,0", 3).tolist()) == "[1.0, 0.0, 0.0]"  # not -0.0 (printed "-0.000")


def test_scalarizations() -> None:
    scores, pref = np.array([0.8, 0.2]), np.array([0.5, 0.5])
    assert scalarize(scores, pref) == pytest.approx(0.5)
    # the shortfall from the utopia point z* + 0.01: max(0.5 * 0.11, 0.5 * 0.71)
    assert scalarize(scores, pref, "tchebycheff", ideal=[0.9, 0.9]) == pytest.approx(-0.355)
    with pytest.raises(ValueError):
        scalarize(scores, pref, "tchebycheff")
    # Tchebycheff prefers the balanced point under a balanced preference; the weighted sum is indifferent
    balanced, lopsided = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    assert scalarize(balanced, pref, "tchebycheff", ideal=[0.9, 0.9]) > scalarize(
        lopsided, pref, "tchebycheff", ideal=[0.9, 0.9]
    )


def test_tchebycheff_never_scores_a_candidate_above_the_ideal_below_one_beneath_it() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        k = int(rng.integers(2, 5))
        ideal = rng.uniform(-1, 1, k)
        lam = rng.dirichlet(np.ones(k))
        above = ideal + rng.uniform(0, 0.5, k)  # at least the best specialist on every objective
        beneath = ideal - rng.uniform(0, 0.5, k)  # at most
        assert scalarize(above, lam, "tchebycheff", ideal) >= scalarize(beneath, lam, "tchebycheff", ideal)
    # and exceeding the ideal point counts as better, not as a distance from it
    assert scalarize([1.2, 1.1], [0.5, 0.5], "tchebycheff", [1.0, 1.0]) > scalarize(
        [1.0, 1.0], [0.5, 0.5], "tchebycheff", [1.0, 1.0]
    )


def test_objective_scale_maps_the_finetuned_models_onto_the_unit_range() -> None:
    scale = ObjectiveScale.from_points([[0.9, 10.0, 0.5], [0.3, 70.0, 0.5]])
    assert scale.ideal == (0.9, 70.0, 0.5) and scale.nadir == (0.3, 10.0, 0.5)
    assert np.allclose(scale.normalise([0.9, 10.0, 0.5]), [1.0, 0.0, 0.0])
    assert np.allclose(scale.normalise([0.6, 40.0, 1.5]), [0.5, 0.5, 1.0])  # no range: measured in units of 1
    # a metric's unit does not change a normalised value
    hundred = ObjectiveScale.from_points([[90.0, 10.0, 0.5], [30.0, 70.0, 0.5]])
    assert np.array_equal(hundred.normalise([60.0, 40.0, 1.5]), scale.normalise([0.6, 40.0, 1.5]))


@pytest.mark.parametrize("k", [2, 3])
def test_plot_writes_png_and_svg(tmp_path, k) -> None:
    rng = np.random.default_rng(0)
    candidates = rng.random((30, k))
    series = [
        PlotSeries("candidates", candidates, "candidates"),
        PlotSeries("front", candidates[non_dominated_mask(candidates)], "front"),
        PlotSeries("model a", np.eye(k)[:1], "finetuned"),
        PlotSeries("uniform TIES", np.full((1, k), 0.4), "merge"),
    ]
    names = [f"task{i}" for i in range(k)]
    for suffix in ("png", "svg"):
        out = plot_pareto(series, names, tmp_path / f"front.{suffix}", "test")
        assert out.stat().st_size > 5000
