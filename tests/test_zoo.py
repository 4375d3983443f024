"""The toy model zoo: layout, the facts the demo relies on (specialists conflict), determinism, lm-eval parity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures_zoo import lm_zoo_micro, vit_zoo_micro  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

# Bounds on the micro zoos. The small zoo's fact is "each specialist >= base + 0.30 on its own task"; the micro
# LMs (2 layers, 1000 fine-tuning steps, to build in about a minute) meet the same bound with room under every
# CPU's numerics: the build pins them (hm3/zoo/numerics.py), but MKL honours the pin on Intel CPUs only, so an
# AMD CPU builds other bits. At 500 fine-tuning steps the addition specialist sat on its learning transition
# (0.84 on an AMD EPYC; 0.20-0.51 under four numerics on an Intel Xeon, where the pinned build gave 0.33 against
# this bound's 0.30); at 1000 it scored 0.90-1.00 under all four (benchmarks/results/zoo_build.md).
MICRO_LM_MARGIN = 0.30
MICRO_VIT_MARGIN = 0.30


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _scores(zoo: Path) -> dict:
    return json.loads((zoo / "scores.json").read_text())


def _specialist_facts(zoo: Path, margin: float) -> None:
    scores = _scores(zoo)
    manifest = json.loads((zoo / "zoo.json").read_text())
    specialists = [m for m in manifest["models"] if m["task"] is not None]
    assert len(specialists) >= 3
    for model in specialists:
        own, base = scores["scores"][model["name"]][model["task"]], scores["scores"]["base"][model["task"]]
        assert own >= base + margin, f"{model['name']}: {own:.3f} vs base {base:.3f} on {model['task']}"
    id_tasks = [t for t, info in scores["tasks"].items() if not info["ood"]]
    for model in scores["scores"]:
        best_everywhere = all(
            scores["scores"][model][t] >= max(row[t] for row in scores["scores"].values()) for t in id_tasks
        )
        assert not best_everywhere, f"{model} is best on every task: the specialists do not conflict"


def test_lm_zoo_layout(lm_zoo_micro: Path) -> None:  # noqa: F811
    manifest = json.loads((lm_zoo_micro / "zoo.json").read_text())
    assert (manifest["kind"], manifest["family"], manifest["size"], manifest["seed"]) == (
        "lm",
        "llama",
        "micro",
        0,
    )
    assert [m["name"] for m in manifest["models"]] == ["base", "addition", "reversal", "sorting"]
    for model in manifest["models"]:
        folder = lm_zoo_micro / model["path"]
        assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
        assert not list(folder.glob("*.bin"))
    for task in manifest["tasks"]:
        config = yaml.safe_load((lm_zoo_micro / task["yaml"]).read_text())
        data_file = Path(config["dataset_kwargs"]["data_files"]["test"])
        assert data_file == (lm_zoo_micro / task["data"]).resolve()
        assert config["target_delimiter"] == "" and config["generation_kwargs"]["until"] == ["\n"]
        rows = [json.loads(line) for line in data_file.read_text().splitlines()]
        assert len(rows) == 100 and set(rows[0]) == {"prompt", "target"}
    leftovers = lm_zoo_micro.parent.glob(f".{lm_zoo_micro.name}.building-*")  # other sessions may be building
    assert not [p for p in leftovers if not _alive(int(p.name.rsplit("-", 1)[-1]))]


def test_lm_specialists_conflict(lm_zoo_micro: Path) -> None:  # noqa: F811
    _specialist_facts(lm_zoo_micro, MICRO_LM_MARGIN)


def test_vit_specialists_conflict(vit_zoo_micro: Path) -> None:  # noqa: F811
    _specialist_facts(vit_zoo_micro, MICRO_VIT_MARGIN)


def test_vit_zoo_data_and_heads(vit_zoo_micro: Path) -> None:  # noqa: F811
    import numpy as np
    from safetensors.torch import load_file
    from transformers import CLIPVisionModel

    manifest = json.loads((vit_zoo_micro / "zoo.json").read_text())
    for task in manifest["tasks"]:
        with np.load(vit_zoo_micro / task["data"]) as data:
            assert data["pixel_values"].dtype == np.float32 and data["pixel_values"].shape[1:] == (1, 8, 8)
            assert data["labels"].dtype == np.int64 and len(data["labels"]) == len(data["pixel_values"])
        model = CLIPVisionModel.from_pretrained(vit_zoo_micro / task["name"])
        head = load_file(str(vit_zoo_micro / task["head"]))
        assert head["weight"].shape == (10, model.config.hidden_size) and head["bias"].shape == (10,)
        assert (
            json.loads((vit_zoo_micro / task["name"] / "head.json").read_text())["trained_on"] == task["name"]
        )


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tokenizer_round_trip_through_auto_tokenizer(family: str, lm_zoo_micro: Path, tmp_path: Path) -> None:  # noqa: F811
    """transformers 5 picks Qwen2Tokenizer for a qwen2 folder; spaces and newlines must survive it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hm3.zoo.lm_train import lm_config, new_lm, save_lm
    from hm3.zoo.tokenizer import build_tokenizer, encode_bytes

    if family == "llama":
        folder = lm_zoo_micro / "addition"
    else:  # a qwen2 folder written by the same code path the zoo uses
        folder = tmp_path / "qwen2"
        save_lm(new_lm(lm_config("qwen2", 32, 1, 2), 0), build_tokenizer(), folder)
    assert AutoModelForCausalLM.from_pretrained(folder).config.model_type == family
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for text in ["12 + 34 = 46\n", "abc def>fed cba", "  leading and trailing  ", "907+93=1000\nxyz~xyz"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == [byte + 3 for byte in text.encode()] == encode_bytes(text)  # encode_bytes: training ids
        assert tokenizer.decode(ids) == text


def _other_capability() -> str:
    """A torch CPU capability other than the one this process runs with (``default`` or ``avx2``)."""
    import torch

    return "avx2" if torch.backends.cpu.get_cpu_capability().lower() == "default" else "default"


@pytest.mark.parametrize(
    ("kind", "fixture"), [("lm", "lm_zoo_micro"), ("vit", "vit_zoo_micro")], ids=["lm", "vit"]
)
def test_build_gives_the_same_bits_under_another_cpu_capability(
    kind: str, fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A user's CPU decides torch's and MKL's kernels; the build pins both in its own process, so a build
    started under another capability (and MKL limited to older instructions) gives the fixture's weights."""
    reference = request.getfixturevalue(fixture)
    env = {**os.environ, "ATEN_CPU_CAPABILITY": _other_capability(), "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
    out = tmp_path / reference.name
    command = [sys.executable, "-m", "cli.main", "zoo", "build", "--kind", kind, "--size", "micro", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    built, expected = (json.loads((folder / "zoo.json").read_text()) for folder in (out, reference))
    assert built["fingerprint"] == expected["fingerprint"] != ""
    for manifest in (built, expected):
        numerics = manifest["numerics"]
        pinned = (numerics["cpu_capability"], numerics["mkl_cbwr"], numerics["threads"], numerics["onednn"])
        assert pinned == ("default", "AVX2", 1, False)
    assert _scores(out)["scores"] == _scores(reference)["scores"]


def test_fingerprint_is_of_the_weights_and_shown_in_scores_md(lm_zoo_micro: Path, tmp_path: Path) -> None:  # noqa: F811
    """The fingerprint covers every tensor byte, not how the file is laid out; scores.md shows it."""
    import shutil

    from safetensors.torch import load_file, save_file

    from hm3.zoo.fingerprint import short, zoo_fingerprint

    fingerprint = json.loads((lm_zoo_micro / "zoo.json").read_text())["fingerprint"]
    assert zoo_fingerprint(lm_zoo_micro) == fingerprint
    assert f"`{short(fingerprint)}`" in (lm_zoo_micro / "scores.md").read_text()
    copy = tmp_path / "zoo"
    shutil.copytree(lm_zoo_micro / "sorting", copy / "sorting")
    shutil.copytree(lm_zoo_micro / "base", copy / "base")
    before = zoo_fingerprint(copy)
    tensors = load_file(str(copy / "sorting" / "model.safetensors"))
    save_file(
        dict(reversed(list(tensors.items()))), str(copy / "sorting" / "model.safetensors"), {"other": "1"}
    )
    assert zoo_fingerprint(copy) == before  # same tensors, other order and metadata on disk
    name = next(iter(tensors))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float(tensors[name].view(-1)[0]) + 1e-6  # one entry's last bits
    save_file(tensors, str(copy / "sorting" / "model.safetensors"))
    assert zoo_fingerprint(copy) != before


@pytest.mark.slow
def test_lm_eval_cli_reproduces_scores(lm_zoo_micro: Path) -> None:  # noqa: F811
    """The lm_eval command line, offline, gives the score recorded in scores.json (within 0.01)."""
    task, model = "toy_sorting", "sorting"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [
        str(Path(sys.executable).with_name("lm_eval")), "--model", "hf",
        "--model_args", f"pretrained={lm_zoo_micro / model}", "--include_path", str(lm_zoo_micro / "tasks"),
        "--tasks", task, "--device", "cpu", "--batch_size", "64",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=True)
    row = next(line for line in result.stdout.splitlines() if line.startswith("|") and "exact_match" in line)
    cells = [cell.strip() for cell in row.split("|")]
    measured = float(cells[cells.index("exact_match") + 2])  # after the higher-is-better arrow
    expected = _scores(lm_zoo_micro)["scores"][model][task]
    assert abs(measured - expected) <= 0.01, f"lm_eval CLI {measured} vs scores.json {expected}"


def test_finished_zoo_is_not_rebuilt(lm_zoo_micro: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    from rich.console import Console

    from hm3.zoo import build_zoo

    before = (lm_zoo_micro / "zoo.json").stat().st_mtime_ns
    assert build_zoo("lm", size="micro", out=lm_zoo_micro, console=Console(stderr=False)) == lm_zoo_micro
    assert "already built" in capsys.readouterr().out
    assert (lm_zoo_micro / "zoo.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("stale", ["no build entry", "older version", "other preset"])
def test_stale_zoo_is_rebuilt(
    stale: str,
    vit_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A finished-looking zoo built by an older builder or with other settings is rebuilt, not reused."""
    import hm3.zoo.vit_build as vit_build
    from hm3.zoo import build_zoo

    manifest = json.loads((vit_zoo_micro / "zoo.json").read_text())
    if stale == "no build entry":
        manifest.pop("build")
        manifest["builder"] = "81519e2bdd7cc38f"  # what builds before version 2 wrote
    elif stale == "older version":
        manifest["build"]["version"] -= 1
    else:
        manifest["build"]["preset"]["finetune_epochs"] += 1
    target = tmp_path / "vit-clip-micro"
    target.mkdir()
    (target / "zoo.json").write_text(json.dumps(manifest))

    def rebuild_started(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vit_build, "train_vit_base", rebuild_started)
    with pytest.raises(KeyboardInterrupt):
        build_zoo("vit", size="micro", out=target, in_process=True)
    assert json.loads((target / "zoo.json").read_text()) == manifest  # the old zoo stays until a rebuild ends


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hm3.zoo.vit_build as vit_build
    from hm3.zoo import build_zoo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vit_build, "train_vit_base", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_zoo("vit", size="micro", out=tmp_path / "zoo" / "vit-clip-micro", in_process=True)
    assert list((tmp_path / "zoo").iterdir()) == []


def test_dead_builds_are_cleaned_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A staging folder left by a killed build (its pid gone) is removed by the next build of that zoo."""
    import hm3.zoo.vit_build as vit_build
    from hm3.zoo import build_zoo

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    leftover = tmp_path / f".vit-clip-micro.building-{int(dead.stdout)}"
    (leftover / "base").mkdir(parents=True)
    other_zoo = tmp_path / f".vit-clip-small.building-{int(dead.stdout)}"
    other_zoo.mkdir()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vit_build, "train_vit_base", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_zoo("vit", size="micro", out=tmp_path / "vit-clip-micro", in_process=True)
    assert not leftover.exists() and other_zoo.exists()


def test_a_dead_builds_folder_a_live_process_still_writes_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging folder whose build's process is gone but whose lock a process still holds (a training child
    that outlived it) is left alone, and removed once the lock is let go (the next build deleted it before:
    the child then died with a traceback, leaving a partial folder)."""
    import fcntl

    import hm3.zoo.vit_build as vit_build
    from hm3.zoo import build_zoo

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    leftover = tmp_path / f".vit-clip-micro.building-{int(dead.stdout)}"
    (leftover / "base").mkdir(parents=True)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vit_build, "train_vit_base", interrupted)
    writer = os.open(leftover, os.O_RDONLY)  # the lock the orphaned child would hold
    try:
        fcntl.flock(writer, fcntl.LOCK_EX)
        with pytest.raises(KeyboardInterrupt):
            build_zoo("vit", size="micro", out=tmp_path / "vit-clip-micro", in_process=True)
        assert (leftover / "base").is_dir()
    finally:
        os.close(writer)
    with pytest.raises(KeyboardInterrupt):
        build_zoo("vit", size="micro", out=tmp_path / "vit-clip-micro", in_process=True)
    assert not leftover.exists()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux: read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state_and_parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(state_and_parent[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Whether process ``pid`` still runs (Linux; a killed process nobody reaped yet, a zombie, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _gone_within(pid: int, seconds: float) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _running(pid)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the child through Linux's /proc")
def test_a_killed_build_takes_its_training_child_with_it(tmp_path: Path) -> None:
    """SIGKILL of ``hm3 zoo build`` while its child trains ends the child too (it trained on as an orphan, and
    a rebuild started meanwhile deleted the folder it wrote into); the next build clears the staging folder."""
    import signal
    import time

    from hm3.zoo.staging import remove_dead_builds

    out = tmp_path / "vit-clip-micro"
    command = [sys.executable, "-m", "cli.main", "zoo", "build", "--kind", "vit", "--size", "micro", "--out", str(out)]  # fmt: skip
    parent = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = tmp_path / f".vit-clip-micro.building-{parent.pid}"
    children: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while not (staging.is_dir() and any(staging.iterdir())) and time.monotonic() < deadline:
            assert parent.poll() is None, "the build ended before it could be killed"
            time.sleep(0.05)
        children = _children(parent.pid)
        assert len(children) == 1, "the build's child is not writing its staging folder"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _gone_within(children[0], 5), "the training child outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()
        for child in children:
            if _running(child):
                os.kill(child, signal.SIGKILL)
    remove_dead_builds(out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the child through Linux's /proc")
@pytest.mark.parametrize("how", ["parent-death signal", "watching thread"])
def test_a_child_dies_with_its_parent(how: str) -> None:
    """:func:`hm3.zoo.staging.die_with_parent` by either of its means: Linux's, and the portable fallback."""
    import signal

    fallback = "staging._parent_death_signal = lambda: False; " if how == "watching thread" else ""
    child = (
        f"import os, time; import hm3.zoo.staging as staging; {fallback}"
        "staging.die_with_parent(os.getppid()); print('ready', flush=True); time.sleep(60)"
    )
    parent_code = (
        "import subprocess, sys; "
        f"child = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE); "
        "assert child.stdout.readline() == b'ready\\n'; print(child.pid, flush=True); child.wait()"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=REPO, stdout=subprocess.PIPE)
    pid = int(parent.stdout.readline())
    try:
        assert _running(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _gone_within(pid, 3), f"the child outlived its parent ({how})"
    finally:
        parent.kill()
        parent.wait()
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


def test_recipes_point_into_their_zoos() -> None:
    """The toy recipes name their zoos' folders, exactly as the builder lays them out."""
    layouts = {
        "toy-lm.yaml": ("lm-llama-small", ["addition", "reversal", "sorting"], "tasks/toy_{}.yaml"),
        "toy-lm-deep.yaml": ("lm-llama-deep", ["addition", "reversal", "sorting"], "tasks/toy_{}.yaml"),
        "toy-vit.yaml": ("vit-clip-small", ["rotated", "inverted", "permuted"], "data/{}_test.npz"),
    }
    for recipe_name, (zoo, names, data) in layouts.items():
        recipe = yaml.safe_load((REPO / "recipes" / recipe_name).read_text())
        assert recipe["base_model"]["path"] == f"../zoo/{zoo}/base"
        assert [(m["name"], m["path"]) for m in recipe["models"]] == [(n, f"../zoo/{zoo}/{n}") for n in names]
        for objective, name in zip(recipe["objectives"], names, strict=True):
            where = objective.get("task") or objective["dataset"]["path"]
            assert where == f"../zoo/{zoo}/" + data.format(name)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kind", "vit", "--family", "qwen2"], "does not apply"),
        (["--kind", "lm", "--family", "clip"], "does not apply"),
        (["--kind", "lm", "--out", "/proc/hm3-zoo/x"], "cannot create"),
        (["--kind", "vit", "--size", "deep"], "--kind lm only"),
        (["--kind", "lm", "--seed", "-1"], "--seed must be an integer in [0, 2^31), not -1"),
        (["--kind", "lm", "--seed", str(2**40)], f"not {2**40}"),  # a traceback from the build process before
    ],
)
def test_cli_user_errors(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    assert main(["zoo", "build", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_pretraining_corpus_is_not_the_tasks() -> None:
    """The generic corpus teaches sub-skills (palindromes, sorted strings, progressions) but never a task:
    none of the tasks' operators, and no line a task prompt (so the base scores 0 and specialists must learn)."""
    import random

    from hm3.zoo.lm_tasks import TASKS, TaskSizes, pretraining_line

    rng = random.Random(0)
    lines = [pretraining_line(rng) for _ in range(20000)]
    assert not [line for line in lines if set(line) & set("+>:=")]
    prompts = {TASKS[t](random.Random(i), TaskSizes(2, 7), False)[0] for t in TASKS for i in range(200)}
    assert not prompts & set(lines)
    words = [w for line in lines for w in line.split(" ") if len(w) >= 4]
    assert sum(w == w[::-1] for w in words) > len(words) // 10  # the mirror sub-skill is there


@pytest.mark.parametrize("force", [False, True])
def test_build_never_replaces_a_folder_it_did_not_write(
    force: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out`` on a user's folder (no zoo manifest) is refused before any training, ``--force`` or not, and
    the folder is left as it was (the build once deleted such a folder when it moved its result into place)."""
    from cli.main import main

    mine = tmp_path / "my-models"
    (mine / "llama-7b").mkdir(parents=True)
    (mine / "llama-7b" / "model.safetensors").write_bytes(b"weights")
    flags = ["zoo", "build", "--kind", "lm", "--size", "micro", "--out", str(mine)]
    assert main(flags + (["--force"] if force else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no zoo hm3 built" in err[0]
    assert (mine / "llama-7b" / "model.safetensors").read_bytes() == b"weights"
    assert [p.name for p in tmp_path.iterdir()] == ["my-models"]  # no staging folder left either


def test_force_never_replaces_what_a_user_put_into_a_zoo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--force`` replaces a zoo hm3 built, but not one a user has put their own files into."""
    from cli.main import main
    from hm3.zoo.config import MANIFEST

    zoo = tmp_path / "lm-llama-micro"
    (zoo / "base").mkdir(parents=True)
    (zoo / "my-finetune").mkdir()
    manifest = {"kind": "lm", "family": "llama", "size": "micro", "seed": 0, "models": [{"path": "base"}]}
    (zoo / MANIFEST).write_text(json.dumps(manifest))
    assert main(["zoo", "build", "--kind", "lm", "--size", "micro", "--out", str(zoo), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "my-finetune" in err[0] and "will not replace" in err[0]
    assert (zoo / "my-finetune").is_dir() and (zoo / MANIFEST).is_file()


def _edit(zoo: Path, edit: str) -> None:
    """Change a built zoo as a user might: one tensor's values, a deleted weights file, a deleted model."""
    import shutil

    from safetensors.torch import load_file, save_file

    if edit == "tensor set to 1":
        tensors = load_file(str(zoo / "rotated" / "model.safetensors"))
        name = next(iter(tensors))
        tensors[name] = tensors[name].clone().fill_(1)
        save_file(tensors, str(zoo / "rotated" / "model.safetensors"))
    elif edit == "weights deleted":
        (zoo / "permuted" / "model.safetensors").unlink()
    else:
        shutil.rmtree(zoo / "inverted")


def _cached_copy(reference: Path, folder: Path, checksums: bool) -> Path:
    """A copy of a built zoo whose manifest records checksums (``checksums``: as a build does now) or not (as
    builds before them)."""
    import shutil

    from hm3.zoo.integrity import file_checksums

    shutil.copytree(reference, folder)
    manifest = json.loads((folder / "zoo.json").read_text())
    manifest.pop("checksums", None)
    if checksums:
        manifest["checksums"] = file_checksums(folder, manifest["files"])
    (folder / "zoo.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("checksums", [True, False], ids=["checksums", "built before checksums"])
@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("tensor set to 1", ("rotated/model.safetensors is not the file", "a *.safetensors file is not")),
        ("weights deleted", ("permuted/model.safetensors is missing",) * 2),
        ("model folder deleted", ("inverted/config.json is missing",) * 2),
    ],
)
def test_an_edited_or_incomplete_zoo_is_refused_not_reused(
    edit: str,
    named: tuple[str, str],
    checksums: bool,
    vit_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A finished zoo whose files are not those its build wrote is neither used (it was, as "already built",
    with its old scores and fingerprint) nor rebuilt unasked: one line names the folder and the first file that
    differs, and the command that rebuilds it."""
    import hm3.zoo.build as build
    from cli.main import main

    zoo = _cached_copy(vit_zoo_micro, tmp_path / "vit-clip-micro", checksums)
    _edit(zoo, edit)
    before = sorted(p.relative_to(zoo) for p in zoo.rglob("*"))

    def trained(*args, **kwargs):
        raise AssertionError("the build started training over the edited zoo")

    monkeypatch.setattr(build, "_build_in_child", trained)
    assert main(["zoo", "build", "--kind", "vit", "--size", "micro", "--out", str(zoo)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and not captured.out, captured
    assert f"zoo {zoo} is not as its build left it: {named[0 if checksums else 1]}" in err[0]
    assert f"`hm3 zoo build --kind vit --size micro --out {zoo} --force` rebuilds it" in err[0]
    assert sorted(p.relative_to(zoo) for p in zoo.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["vit-clip-micro"]


@pytest.mark.parametrize("checksums", [True, False], ids=["checksums", "built before checksums"])
def test_an_untouched_zoo_is_reused(
    checksums: bool,
    vit_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A copy of a built zoo, with a user's file beside the build's, is found built (the check reads only what
    the build wrote)."""
    from cli.main import main

    zoo = _cached_copy(vit_zoo_micro, tmp_path / "vit-clip-micro", checksums)
    (zoo / "rotated" / "NOTES.md").write_text("mine\n")
    assert main(["zoo", "build", "--kind", "vit", "--size", "micro", "--out", str(zoo)]) == 0
    assert "already built" in capsys.readouterr().err


def _zoo_files(folder: Path) -> dict:
    """Lay out a language micro zoo's files in ``folder`` (small stand-ins; nothing trained); returns the
    manifest's contents for them."""
    models = [{"name": name, "path": name, "task": None} for name in ("base", "addition")]
    checkpoint = (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    )
    tasks = [{"name": "toy_addition", "yaml": "tasks/toy_addition.yaml", "data": "data/toy_addition.jsonl"}]
    files = [f"{model['path']}/{name}" for model in models for name in checkpoint]
    files += ["scores.md", "scores.json", tasks[0]["yaml"], tasks[0]["data"]]
    for file in files:
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        (folder / file).write_text("{}\n")
    return {"fingerprint": "sha256:" + "0" * 64, "models": models, "tasks": tasks}


def _built_zoo(folder: Path, listed: bool) -> None:
    """A language micro zoo in ``folder`` whose manifest lists its files (``listed``) or, as the manifests of
    zoos built before they did, not."""
    import hm3.zoo.build as build
    from hm3.zoo.config import MANIFEST, ZooConfig

    build._write_manifest(folder, ZooConfig("lm", "llama", "micro"), _zoo_files(folder), 1.0)
    if not listed:
        manifest = json.loads((folder / MANIFEST).read_text())
        del manifest["files"]
        (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("listed", [True, False], ids=["files listed", "built before files were listed"])
@pytest.mark.parametrize(
    ("user_file", "named"),
    [
        ("addition/NOTES.md", "addition/NOTES.md"),
        ("tasks/my_custom_task.yaml", "tasks/my_custom_task.yaml"),
        ("himole_tasks/my_task.yaml", "himole_tasks/my_task.yaml"),
        ("base/checkpoints/step-10.pt", "base/checkpoints/"),
    ],
)
def test_force_never_replaces_a_users_file_deep_in_a_zoo(
    user_file: str,
    named: str,
    listed: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A user's file in a model's folder, in tasks/ or in himole_tasks/ is refused with one line before any
    training (the check once compared top-level names only, and ``--force`` deleted such files)."""
    import hm3.zoo.build as build
    from cli.main import main

    zoo = tmp_path / "lm-llama-micro"
    _built_zoo(zoo, listed)
    (zoo / user_file).parent.mkdir(parents=True, exist_ok=True)
    (zoo / user_file).write_text("mine\n")

    def trained(*args, **kwargs):
        raise AssertionError("the build started training before it refused the folder")

    monkeypatch.setattr(build, "_build_in_child", trained)
    assert main(["zoo", "build", "--kind", "lm", "--size", "micro", "--out", str(zoo), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "will not replace" in err[0] and named in err[0]
    assert (zoo / user_file).read_text() == "mine\n"
    assert [p.name for p in tmp_path.iterdir()] == ["lm-llama-micro"]


@pytest.mark.parametrize("listed", [True, False], ids=["files listed", "built before files were listed"])
def test_force_replaces_a_zoo_with_the_himole_tasks_hm3_wrote(
    listed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hm3 himole tasks --zoo`` writes into the zoo; a rebuild replaces those files with the zoo they were
    derived from and says so, and the new manifest lists every file the build wrote."""
    import io

    from rich.console import Console

    import hm3.zoo.build as build
    from hm3.himole.shifted import FOLDER, write_shifted_tasks
    from hm3.zoo import build_zoo, read_manifest

    zoo = tmp_path / "lm-llama-micro"
    _built_zoo(zoo, listed)
    write_shifted_tasks(zoo)
    (zoo / FOLDER / ".toy_addition_rare.yaml.tmp").write_text("")  # left by an interrupted `hm3 himole tasks`
    assert build.foreign_files(zoo, read_manifest(zoo)) == []

    def built(config, staging, target: Path, quiet: bool) -> None:  # the files of a build, no training
        build._write_manifest(staging.folder, config, _zoo_files(staging.folder), 2.0)

    monkeypatch.setattr(build, "_build_in_child", built)
    out = io.StringIO()
    assert build_zoo("lm", size="micro", out=zoo, force=True, console=Console(file=out, width=300)) == zoo
    manifest = read_manifest(zoo)
    assert manifest["build_seconds"] == 2.0 and not (zoo / FOLDER).exists()
    assert f"removed {zoo / FOLDER}" in out.getvalue() and f"hm3 himole tasks --zoo {zoo}" in out.getvalue()
    assert manifest["files"] == sorted(
        p.relative_to(zoo).as_posix() for p in zoo.rglob("*") if p.is_file() and p.name != "zoo.json"
    )
    assert list(manifest["checksums"]) == manifest["files"]
    assert [p.name for p in tmp_path.iterdir()] == ["lm-llama-micro"]  # nothing left beside it


def test_zoo_scoring_prints_nothing_of_lm_evals_own_outside_a_git_repository(
    lm_zoo_micro: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """lm-eval's request bars and its `git describe` ("fatal: not a git repository", written to the terminal
    by git itself) stay out of the build's display; the score is the one scores.json records."""
    from hm3.zoo.scores import lm_scores

    monkeypatch.chdir(tmp_path)  # not a git repository
    scores = lm_scores({"sorting": lm_zoo_micro / "sorting"}, lm_zoo_micro / "tasks", ["toy_sorting"])
    captured = capfd.readouterr()
    assert "fatal" not in captured.err and "it/s" not in captured.err, captured.err[-500:]
    assert scores["sorting"]["toy_sorting"] == _scores(lm_zoo_micro)["scores"]["sorting"]["toy_sorting"]
