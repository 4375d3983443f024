"""`hm3 pareto A B`: several runs in one table and one plot, their hypervolumes on one normalisation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli.main import main
from hm3.moo.hypervolume import REFERENCE_OFFSET
from hm3.pareto_report import pareto_report
from hm3.run_fingerprint import file_digest

REFERENCES = [
    {"label": "x", "kind": "finetuned", "scores": {"heldout": {"x": 0.4, "y": 0.0}}},
    {"label": "y", "kind": "finetuned", "scores": {"heldout": {"x": 0.0, "y": 0.4}}},
]


def _run(folder: Path, points: list[tuple[float, float]], objectives=("x", "y")) -> Path:
    """A run folder whose front has one member per held-out point (the search scores do not matter here)."""
    members = [
        {
            "id": f"{folder.name}{i:04d}",
            "preference": [0.5, 0.5],
            "merge": None,
            "path": None,
            "alignment": "none",
            "scores": {split: dict(zip(objectives, p, strict=True)) for split in ("search", "heldout")},
        }
        for i, p in enumerate(points)
    ]
    front = {
        "objectives": list(objectives),
        "higher_is_better": [True, True],
        "members": members,
        "references": REFERENCES,
    }
    folder.mkdir(parents=True)
    (folder / "front.json").write_text(json.dumps(front))
    (folder / "recipe.yaml").write_text("{}\n")  # what makes it a run folder (require_run_directory)
    return folder


def _box_union(a: tuple[float, float], b: tuple[float, float]) -> float:
    """The area two points dominate above the reference point (−0.1, −0.1): two boxes minus their overlap."""
    r = REFERENCE_OFFSET
    box = lambda p: (p[0] - r) * (p[1] - r)  # noqa: E731
    return box(a) + box(b) - box((min(a[0], b[0]), min(a[1], b[1])))


def test_two_runs_share_one_normalisation(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", [(0.4, 0.2), (0.2, 0.4)])
    b = _run(tmp_path / "b", [(0.8, 0.1), (0.3, 0.3)])
    alone = pareto_report(a)
    # alone: x and y both span [0, 0.4] (members and references), so A's members map to (1, .5) and (.5, 1)
    assert alone.runs[0].hypervolumes["front"] == pytest.approx(_box_union((1.0, 0.5), (0.5, 1.0)))
    both = pareto_report([a, b])
    # shared bounds: the union of both fronts and their references, x in [0, 0.8], y in [0, 0.4]
    assert both.normalization.lower == (0.0, 0.0) and both.normalization.upper == (0.8, 0.4)
    assert both.runs[0].hypervolumes["front"] == pytest.approx(_box_union((0.5, 0.5), (0.25, 1.0)))
    assert both.runs[1].hypervolumes["front"] == pytest.approx(_box_union((1.0, 0.25), (0.375, 0.75)))
    assert both.reference_hypervolumes["x"] == pytest.approx((0.5 + 0.1) * (0.0 + 0.1))
    assert [label for label, _ in both.references] == ["x", "y"]  # equal in both runs: shown once
    # the order of the runs changes nothing but the order of the rows
    swapped = pareto_report([b, a])
    assert swapped.runs[1].hypervolumes["front"] == pytest.approx(both.runs[0].hypervolumes["front"])


def test_two_copies_of_one_run_get_the_hypervolume_it_has_alone(tmp_path: Path) -> None:
    a = _run(tmp_path / "one" / "run", [(0.4, 0.2), (0.2, 0.4)])
    copy = tmp_path / "two" / "run"
    shutil.copytree(a, copy)
    report = pareto_report([a, copy])
    # the same folder name: the paths as given tell them apart
    assert [r.label for r in report.runs] == [str(a), str(copy)]
    volumes = [r.hypervolumes["front"] for r in report.runs]
    assert volumes[0] == volumes[1] == pytest.approx(pareto_report(a).runs[0].hypervolumes["front"])


def test_cli_prints_both_runs_and_one_plot(tmp_path: Path, capsys) -> None:
    a = _run(tmp_path / "hm3", [(0.4, 0.2), (0.2, 0.4)])
    b = _run(tmp_path / "nsga2", [(0.8, 0.1), (0.3, 0.3)])
    plot = tmp_path / "both.png"
    assert main(["pareto", str(a), str(b), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "one normalisation for all 2 runs" in out
    assert "front of hm3" in out and "front of nsga2" in out
    assert "x [0.000, 0.800], y [0.000, 0.400]" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["pareto", str(a)]) == 0  # one run: today's format
    out = capsys.readouterr().out
    assert "hypervolume (heldout): front 0.9600" in out and "normalisation: min-max" in out


@pytest.mark.parametrize("objectives", [("y", "x"), ("x", "z")], ids=["order", "names"])
def test_runs_with_other_objectives_are_refused(objectives, tmp_path: Path, capsys) -> None:
    a = _run(tmp_path / "a", [(0.4, 0.2)])
    b = _run(tmp_path / "b", [(0.4, 0.2)], objectives=objectives)
    front = json.loads((b / "front.json").read_text())
    front["references"] = []
    (b / "front.json").write_text(json.dumps(front))
    assert main(["pareto", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only runs of the same objectives" in err[0] and str(b) in err[0], err


def _with_recipe(run: Path, folder: str, seed: int = 0, fraction: float = 0.7, **objective) -> Path:
    """Give ``run`` a stored recipe: tasks in ``folder``, the split of ``seed`` and ``fraction``, and ``objective``'s
    settings on its first objective."""
    objectives = [
        {
            "name": name,
            "task": f"{folder}/tasks/toy_{name}.yaml",
            "metric": "exact_match",
            "num_fewshot": None,
        }
        for name in ("x", "y")
    ]
    objectives[0].update(objective)
    recipe = {
        "objectives": objectives,
        "split": {"search_fraction": fraction, "seed": seed, "screen_fraction": 0.25},
    }
    (run / "recipe.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    return run


def test_runs_scored_on_another_split_or_with_other_task_settings_are_refused(tmp_path: Path, capsys) -> None:
    a = _with_recipe(_run(tmp_path / "a", [(0.4, 0.2)]), "/zoo/small")
    # another zoo built alike (its tasks in another folder), another batch size or weight, another screen: scored alike
    b = _with_recipe(_run(tmp_path / "b", [(0.3, 0.3)]), "/zoo/deep", batch_size=64, weight=2.0)
    recipe = json.loads((b / "recipe.yaml").read_text())
    recipe["split"]["screen_fraction"] = 0.5
    (b / "recipe.yaml").write_text(json.dumps(recipe))
    assert len(pareto_report([a, b]).runs) == 2
    for i, (changed, field) in enumerate(
        [
            ({"seed": 1}, "split.seed: 0 -> 1"),
            ({"fraction": 0.8}, "split.search_fraction: 0.7 -> 0.8"),
            ({"metric": "acc"}, "objectives[0].metric: 'exact_match' -> 'acc'"),
            ({"num_fewshot": 5}, "objectives[0].num_fewshot: None -> 5"),
            ({"task": "gsm8k"}, "objectives[0].task: 'toy_x.yaml' -> 'gsm8k'"),
        ]
    ):
        other = _with_recipe(_run(tmp_path / f"other{i}", [(0.3, 0.3)]), "/zoo/small", **changed)
        line = _refused(capsys, str(a), str(other))
        assert (
            f"score their candidates differently ({field})" in line
            and "cannot share one normalisation" in line
        )
    (b / "recipe.yaml").write_text("[not, a, recipe]\n")
    line = _refused(capsys, str(a), str(b))
    assert line.endswith(f"{b}: its recipe.yaml is not a recipe, so how its scores were taken is unknown")


def _with_task_files(run: Path, folder: Path, rows: str, until: int = 8) -> Path:
    """Give ``run`` a task of its own in ``folder`` (a YAML naming its data by absolute path, as a zoo's do)
    holding ``rows``, generating ``until`` tokens at most, and the fingerprint that records both."""
    folder.mkdir(parents=True)
    data = folder / "toy_x.jsonl"
    data.write_text(rows)
    task = folder / "toy_x.yaml"
    task.write_text(
        f"task: toy_x\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"generation_kwargs: {{max_gen_toks: {until}}}\n"
    )
    files = {str(path): file_digest(path) for path in (task, data)}
    (run / "fingerprint.json").write_text(json.dumps({"format": 2, "files": files}))
    return run


def test_runs_whose_task_files_of_the_same_name_held_other_data_or_settings_are_refused(
    tmp_path: Path, capsys
) -> None:
    rows = '{"q": "1+1", "a": "2"}\n'
    a = _with_task_files(
        _with_recipe(_run(tmp_path / "a", [(0.4, 0.2)]), "/zoo/small"), tmp_path / "small", rows
    )
    # the same data and settings in another zoo's folder: compared alike
    b = _with_task_files(
        _with_recipe(_run(tmp_path / "b", [(0.3, 0.3)]), "/zoo/deep"), tmp_path / "deep", rows
    )
    assert len(pareto_report([a, b]).runs) == 2
    edited = _with_task_files(
        _with_recipe(_run(tmp_path / "edited", [(0.3, 0.3)]), "/zoo/small"),
        tmp_path / "edited_data",
        rows * 2,
    )
    line = _refused(capsys, str(a), str(edited))
    assert f"{a} and {edited} score their candidates differently (toy_x.jsonl holds other data)" in line
    longer = _with_task_files(
        _with_recipe(_run(tmp_path / "longer", [(0.3, 0.3)]), "/zoo/small"),
        tmp_path / "longer_data",
        rows,
        until=64,
    )
    assert "(toy_x.yaml holds other settings)" in _refused(capsys, str(b), str(longer))
    # a task file edited since its run recorded it cannot tell what that run scored with: not left out (the two
    # runs were compared on their data alone, and they did generate other lengths), refused
    edited_task = tmp_path / "longer_data" / "toy_x.yaml"
    edited_task.write_text("task: toy_x\n")
    line = _refused(capsys, str(b), str(longer))
    assert f"{b} and {longer}: cannot tell whether they scored toy_x.yaml with the same settings" in line
    assert f"{edited_task} has changed since {longer} started" in line
    edited_task.unlink()
    assert f"{edited_task} is gone since {longer} started" in _refused(capsys, str(longer), str(b))
    # other data is named before settings that cannot be told
    assert "(toy_x.jsonl holds other data)" in _refused(capsys, str(edited), str(longer))


def test_runs_of_one_task_file_edited_in_place_between_them_are_told_apart_by_what_each_recorded(
    tmp_path: Path, capsys
) -> None:
    """Two runs of one recipe, its task file edited in place between them (a shorter generation): each run's
    fingerprint holds the file's hash when it started. While both hashes agree the runs compare, whatever the file
    holds today; once they differ, the first run's settings are gone with the edit and the runs are refused,
    in either order (the first run's file was left out of the comparison, and both fronts shared one
    normalisation)."""
    rows = '{"q": "1+1", "a": "2"}\n'
    first = _with_task_files(
        _with_recipe(_run(tmp_path / "first", [(0.4, 0.2)]), "/zoo/small"), tmp_path / "tasks", rows
    )
    again = _run(tmp_path / "again", [(0.3, 0.3)])
    shutil.copy(first / "recipe.yaml", again / "recipe.yaml")
    shutil.copy(first / "fingerprint.json", again / "fingerprint.json")
    task = tmp_path / "tasks" / "toy_x.yaml"
    task.write_text(task.read_text().replace("max_gen_toks: 8", "max_gen_toks: 1"))
    assert len(pareto_report([first, again]).runs) == 2  # both scored the bytes they recorded alike
    second = _run(tmp_path / "second", [(0.3, 0.3)])
    shutil.copy(first / "recipe.yaml", second / "recipe.yaml")
    files = {str(path): file_digest(path) for path in (task, tmp_path / "tasks" / "toy_x.jsonl")}
    (second / "fingerprint.json").write_text(json.dumps({"format": 2, "files": files}))
    for a, b in ((first, second), (second, first)):
        line = _refused(capsys, str(a), str(b))
        assert line.startswith(f"hm3 pareto: {a} and {b}: cannot tell whether they scored toy_x.yaml"), line
        assert f"{task} has changed since {first} started" in line


def test_the_search_plot_draws_only_the_searched_candidates_of_the_search_split(tmp_path: Path) -> None:
    """Fine-tuned models and references are drawn as themselves, and held-out scores are not search scores: neither
    is an "all candidates" point (both were)."""
    from hm3.pareto_report import _searched_points

    records = [
        {"key": "a", "split": "search", "level": "merge", "scores": {"x": 0.1, "y": 0.2}},
        {"key": "b", "split": "heldout", "level": "merge", "scores": {"x": 0.9, "y": 0.9}},
        {
            "key": "c",
            "split": "search",
            "level": "finetuned",
            "finetuned": "x",
            "scores": {"x": 0.8, "y": 0.0},
        },
        {"key": "d", "split": "search", "level": "path", "scores": {"x": float("nan"), "y": 0.1}},
        {"key": "e", "split": "search", "level": "path", "scores": {"x": 0.3}},
    ]
    (tmp_path / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert _searched_points(tmp_path, ["x", "y"]).tolist() == [[0.1, 0.2]]


# -- where --plot may write --------------------------------------------------------------------------------------


def _refused(capsys, *args: str) -> str:
    """``hm3 pareto ARGS`` fails with exit code 2 and one line on stderr; returns that line."""
    assert main(["pareto", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_a_plot_path_that_is_a_link_or_a_folder_is_refused_before_any_front_is_read(
    tmp_path: Path, capsys
) -> None:
    run = _run(tmp_path / "run", [(0.4, 0.2)])
    (run / "front.json").write_text("{damaged")  # reading it would fail: the plot is checked first
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"not to be overwritten")
    link = tmp_path / "link.png"
    link.symlink_to(precious)
    assert f"--plot {link} is a symbolic link" in _refused(capsys, str(run), "--plot", str(link))
    assert precious.read_bytes() == b"not to be overwritten"
    folder = tmp_path / "dir.png"
    folder.mkdir()
    line = _refused(capsys, str(run), "--plot", str(folder))
    assert line == f"hm3 pareto: --plot {folder}: is a folder; name a .png or .svg file"
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert f"{blocked} is not a folder" in _refused(capsys, str(run), "--plot", str(blocked / "x" / "p.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dir.png",
        "file",
        "link.png",
        "precious.png",
        "run",
    ]


def test_a_plot_inside_what_a_run_reads_is_refused(tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    (images / "cat").mkdir(parents=True)
    picture = images / "cat" / "0001.png"
    picture.write_bytes(b"a photo")
    run = _run(tmp_path / "run", [(0.4, 0.2), (0.2, 0.4)])
    (run / "recipe.yaml").write_text(
        f"base_model: {tmp_path}/base\nmodels: [{tmp_path}/a]\nobjectives:\n"
        f"  - {{name: o, head: zeroshot, dataset: {{format: image_folder, path: {images}}}}}\n"
    )
    line = _refused(capsys, str(run), "--plot", str(picture))
    assert f"lies inside the data set {images}" in line
    assert picture.read_bytes() == b"a photo"
    assert main(["pareto", str(run), "--plot", str(run / "front.png")]) == 0  # beside the run's files: fine


def test_plot_pareto_replaces_a_link_rather_than_writing_through_it(tmp_path: Path) -> None:
    import numpy as np

    from hm3.moo.plots import PlotSeries, plot_pareto

    precious = tmp_path / "precious.svg"
    precious.write_text("keep")
    out = tmp_path / "plot.svg"
    out.symlink_to(precious)
    series = [PlotSeries("front", np.array([[0.1, 0.2], [0.2, 0.1]]), "front")]
    assert plot_pareto(series, ["x", "y"], out, "t") == out
    assert precious.read_text() == "keep" and not out.is_symlink() and "<svg" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.svg", "precious.svg"]  # no temporary left


def test_the_table_gives_each_merge_its_weights_and_a_preference_column_only_where_a_member_has_one(
    tmp_path: Path, capsys
) -> None:
    """Members of the optimised upper level belong to no one preference: no empty λ column, and what tells the
    merges apart — their coefficient per model, the density where it is not 1 — is shown."""
    run = _run(tmp_path / "upper", [(0.4, 0.2), (0.2, 0.4), (0.3, 0.3)])
    front = json.loads((run / "front.json").read_text())
    merges = [
        {"method": "task_arithmetic", "weights": [0.62, 1.1], "density": [1.0, 1.0]},
        {"method": "ties", "weights": [0.3, 0.9], "density": [0.7, 0.7]},
        {"method": "task_arithmetic", "weights": [[0.1, 0.5, 0.9], [0.2, 0.2, 0.2]], "density": [1.0, 1.0]},
    ]
    for member, merge in zip(front["members"], merges, strict=True):
        member["preference"], member["merge"] = [], merge
    (run / "front.json").write_text(json.dumps(front))
    assert main(["pareto", str(run)]) == 0
    out = capsys.readouterr().out
    assert "preference λ" not in out and "merge weights" in out
    assert "0.62 1.10" in out and "0.30 0.90, density 0.70" in out and "3 blocks per model" in out
    assert main(["pareto", str(_run(tmp_path / "paper", [(0.4, 0.2)]))]) == 0  # members of a preference
    assert "preference λ" in capsys.readouterr().out


def test_an_architecture_only_runs_members_are_the_base_model_or_a_path_over_it(
    tmp_path: Path, capsys
) -> None:
    """An architecture-only run has no merge: slot K of its pool holds the base model, which its members run
    (labelled so, not 'no merge merge') or route over."""
    run = _run(tmp_path / "arch", [(0.4, 0.2), (0.2, 0.4)])
    front = json.loads((run / "front.json").read_text())
    front["members"][1]["path"] = [[2, 0], [0, 1]]
    (run / "front.json").write_text(json.dumps(front))
    assert main(["pareto", str(run)]) == 0
    out = capsys.readouterr().out
    assert "base model" in out and "path of 2 layers over the base" in out and "no merge" not in out
