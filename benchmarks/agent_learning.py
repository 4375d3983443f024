"""Does the path agent learn? PPO vs the same agent untrained vs random local search vs evolution, equal budgets.

On the deep (12-layer) toy LM zoo, for each seed and each of three preferences, one merge — the recipe's
task-arithmetic merge with weights λ, the merge the path level starts from — and four path searches over the
K fine-tuned models plus that merge, each scoring the same number of new paths on the search split:

* ``ppo``: the paper's agent (``agent.actions: path``: PPO actor-critic building a path layer by layer,
  Wolpertinger), otherwise as the recipe configures it, every iteration spent;
* ``ppo_lr0``: the same agent with learning rate 0 — its prior alone (what the untrained policy samples);
* ``ppo_critic``: the agent with the critic ranking M' = 8 Wolpertinger neighbours (the default before
  stop 30 ranks none: M' = 1);
* ``ppo_edit``: the edit agent (``agent.actions: edit``, :mod:`hm3.routing.edits`) at its default learning
  rate (3e-3 since stop 39; before it, 3e-4 — that agent is ``ppo_edit_lr3e-4`` now, and the tables measured
  before stop 39 say so): each episode one edit of the best path so far, masked to the valid edits, paid the
  signed change of reward; ``ppo_edit_lr0`` the same with learning rate 0 — uniform over the valid edits:
  structured random local search; ``ppo_edit_lr3e-4``, ``ppo_edit_lr1e-3`` and ``ppo_edit_lr1e-2`` with
  learning rates 1/10, 1/3 and 10/3 of the default, and ``ppo_edit_epochs10`` with 10 PPO epochs per update
  instead of 4 (SB3's default; sensitivity rows: does a policy that moves further beat its prior?);
  ``ppo_edit_frame`` in a structured path space: the first and the last layer fixed (the merge's own:
  ``architecture_level.fixed_first: 1, fixed_last: 1``), the edits in the 10 slots between;
  ``ppo_edit_stats`` with a fitted map at every seam (``architecture_level.alignment: stats``: each step whose
  input comes from another model gets the per-channel scale and shift that give the residual stream the
  statistics its layer saw in its own model; the literature's "scale correction at the seams");
  ``ppo_edit_carried`` the edit agent carried across preferences: a seed's three searches run in order, each
  going on training the agent the one before trained (:func:`hm3.routing.agent.carry_agent`) — the first is
  ``ppo_edit``'s search; the later ones ask whether what PPO learnt on one merge pays on the next;
* ``local``: random local search around the identity path — one random edit (``evo_path.mutate_path``) of the
  best path so far, kept when it is at least as good;
* ``evolution``: ``evo_path``'s (μ + λ) path evolution at the same fixed merge (the path half of the baseline).

Reward: HM3's weighted-sum reward R(λ) (length penalty included), reported as the improvement over the merge's
own identity path (0 = the path level found nothing better than its starting merge). Per budget checkpoint the
best improvement so far; for the PPO variants also the greedy rollout of the policy at the end (scored
outside the budget) and, for the edit agents, where that rollout — the policy's favourite edit of the best path
— ranks among every valid edit of the best path, each scored outside the budget (:func:`favourite_edit`: what
tells a policy that learnt from its untrained prior, and whether the best is a local optimum at
all); and for every method the mean edit distance of its new paths from the best path at the
time (how many edits of the incumbent it tries).

Writes one section of ``benchmarks/results/agent_learning.md`` per build of the deep zoo (its weights'
fingerprint: a zoo built on another CPU vendor is another zoo, and a replicate), keeping the sections of the
other builds as they were measured, and its plot ``agent_learning_<fingerprint>.png``; seeds other than the
default 0, 1, 2 (a replicate on fresh seeds) make a section of their own, ``... seeds 3,4,5``. Each search's record
lives in ``benchmarks/scratch/agent_learning/`` and is reused, so an interrupted run continues.

    .venv/bin/python benchmarks/agent_learning.py               # 3 seeds, 3 preferences, 200 paths each
    BENCH_BUDGET=60 BENCH_SEEDS=0 .venv/bin/python benchmarks/agent_learning.py   # a first look
    BENCH_SEEDS=3,4,5 .venv/bin/python benchmarks/agent_learning.py   # a replicate on fresh seeds
    BENCH_METHODS=ppo_edit,ppo_edit_lr0,local .venv/bin/python benchmarks/agent_learning.py   # some rows
    BENCH_METHODS= .venv/bin/python benchmarks/agent_learning.py   # the table again, from the kept records
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from _bench import REPO, cpu_name, exit_with, kept_notes, marked_sections, offline, zoo_build, zoo_digest
from scipy import stats

offline()

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hm3.baselines.evo_path import CHILDREN, PARENTS, mutate_path  # noqa: E402
from hm3.errors import UserError  # noqa: E402
from hm3.evaluate.quiet import quiet_libraries  # noqa: E402
from hm3.merge.spec import MergeSpec  # noqa: E402
from hm3.moo.reward import reward_from_recipe  # noqa: E402
from hm3.recipe import load_recipe  # noqa: E402
from hm3.routing.agent import max_path_length, path_scorer_from_recipe, rollout, search_path  # noqa: E402
from hm3.routing.edits import EditSpace  # noqa: E402
from hm3.routing.path import InferencePath  # noqa: E402
from hm3.search.calibration import calibration_batch  # noqa: E402
from hm3.search.models import CandidateModels  # noqa: E402
from hm3.search.session import load_inputs  # noqa: E402
from hm3.zoo import ensure_zoo  # noqa: E402

RECIPE = REPO / "recipes" / "toy-lm-deep.yaml"
RESULTS = REPO / "benchmarks" / "results"
SCRATCH = REPO / "benchmarks" / "scratch" / "agent_learning"
DEFAULT_SEEDS = [0, 1, 2]
SEEDS = [int(s) for s in os.environ.get("BENCH_SEEDS", "0,1,2").split(",")]
BUDGET = int(os.environ.get("BENCH_BUDGET", "200"))
PREFERENCES = [(0.6, 0.2, 0.2), (0.2, 0.6, 0.2), (0.2, 0.2, 0.6)]
METHODS = [
    "ppo",
    "ppo_lr0",
    "ppo_critic",
    "ppo_edit",
    "ppo_edit_lr0",
    "ppo_edit_lr3e-4",
    "ppo_edit_lr1e-3",
    "ppo_edit_lr1e-2",
    "ppo_edit_epochs10",
    "ppo_edit_frame",
    "ppo_edit_stats",
    "ppo_edit_carried",
    "local",
    "evolution",
]
CHOSEN = [m for m in os.environ.get("BENCH_METHODS", ",".join(METHODS)).split(",") if m]
CHECKPOINTS = [c for c in (10, 25, 50, 100, 200, 400, 1000) if c < BUDGET] + [BUDGET]
FORMAT = {
    "ppo": 2,
    "ppo_lr0": 2,
    "ppo_critic": 2,
    "ppo_edit": 2,
    "ppo_edit_lr0": 2,
    "ppo_edit_lr3e-4": 2,
    "ppo_edit_lr1e-3": 2,
    "ppo_edit_lr1e-2": 2,
    "ppo_edit_epochs10": 2,
    "ppo_edit_frame": 2,
    "ppo_edit_stats": 2,
    "ppo_edit_carried": 1,
    "local": 1,
    "evolution": 1,
}
"""Version of a method's scratch records; bump it when what the method does changes, so older ones are redone
(2: the agent edits the incumbent, is paid its gain, and updates 8 times per search, stop 30; for
``ppo_edit_frame`` and ``ppo_edit_stats``: at the edit agent's default rate of stop 39, 3e-3)."""
CRITIC_NEIGHBOURS = 8
PAIRED = [
    ("ppo", "ppo_lr0"),
    ("ppo_edit", "ppo_edit_lr0"),
    ("ppo_edit_lr1e-2", "ppo_edit_lr0"),
    ("ppo_edit_epochs10", "ppo_edit_lr0"),
    ("ppo_edit", "local"),
]
"""Pairs compared search by search (same seed, same preference): each trained agent — the edit agent also with
the sensitivity rows' settings — against its own prior, and the edit agent against random local search."""
TIE = 1e-9
"""Best rewards closer than this count as equal."""


class PathSearch:
    """One preference's budgeted path search over a fixed merge: scores paths once each, counts new ones."""

    def __init__(self, models: CandidateModels, evaluator, recipe, preference, calibration=None) -> None:
        self.recipe = recipe
        self.preference = np.asarray(preference, dtype=np.float32)
        spec = MergeSpec.from_recipe(
            recipe.parameter_level, recipe.model_weights(list(preference)), recipe.seed
        )
        self.pool = models.routing_pool(spec)
        self.scorer = path_scorer_from_recipe(
            self.pool,
            lambda model: evaluator.score(model, split="search"),
            recipe,
            calibration if calibration is not None else models.calibration,
        )
        self.rewards = reward_from_recipe(recipe)
        self.identity = InferencePath.identity(self.pool.merged_index, self.pool.num_layers)
        self.t_max = max_path_length(self.pool, recipe)
        self.base = self.reward(self.identity)  # the starting merge: scored before every method, not counted
        self.curve: list[float] = []  # best improvement after each new path

    def edits(self) -> float:
        """Mean edit distance of each new path from the best path scored before it."""
        best, best_reward, distances = self.identity, self.base, []
        for path in list(self.scorer.scored)[1:]:
            distances.append(path.edit_distance(best))
            reward = self.reward(path)
            if reward > best_reward:
                best, best_reward = path, reward
        return float(np.mean(distances)) if distances else 0.0

    def reward(self, path: InferencePath) -> float:
        return float(self.rewards.reward(self.scorer.score(path), self.preference, len(path)))

    def new_paths(self) -> int:
        return len(self.scorer.scored) - 1

    def record_curve(self) -> None:
        best = max(
            float(self.rewards.reward(scores, self.preference, len(path)))
            for path, scores in self.scorer.scored.items()
        )
        best -= self.base
        while len(self.curve) < self.new_paths():
            self.curve.append(best)


def run_ppo(
    search: PathSearch, seed: int, update: dict, architecture: dict | None = None, carried=None
) -> tuple[float, object]:
    """HM3's agent with ``update`` to its settings (and ``architecture`` to the architecture level's), every
    iteration spent — a fresh one, or ``carried`` on from an earlier preference; returns its greedy rollout's
    gain and the agent."""
    agent = search.recipe.agent.model_copy(update={"patience": None, "iterations": BUDGET + 1, **update})
    level = search.recipe.architecture_level.model_copy(update=architecture or {})
    recipe = search.recipe.model_copy(update={"agent": agent, "architecture_level": level})
    original = search.scorer.score

    def counted(path: InferencePath) -> dict[str, float]:  # the curve, one point per new path
        scores = original(path)
        search.record_curve()
        return scores

    search.scorer.score = counted  # type: ignore[method-assign]
    result = search_path(
        search.pool,
        search.scorer,
        search.preference,
        recipe,
        seed=seed,
        candidates=BUDGET + 1,
        carried=carried,
    )
    search.scorer.score = original  # type: ignore[method-assign]
    return float(search.reward(result.rollout_path) - search.base), result.agent


def favourite_edit(search: PathSearch, agent) -> dict | None:
    """Where the trained edit policy's favourite edit of the search's best path stands among every valid edit of
    that path, each scored on the search split (outside the budget, after the search's own record is taken).

    The greedy rollout alone does not say whether a policy learnt: the untrained prior's favourite is the argmax
    of near-zero logits, an edit no experience chose. Ranked among all the edits it could have picked (percentile:
    the share of the other edits it beats, ties counting half), an edit drawn at random sits at 0.5 on average; a
    policy that learnt which edits pay for this λ ranks its favourite near the top. None for the path agent (its
    rollout is a whole path, not an edit)."""
    if agent is None or agent.config is None or agent.config.actions != "edit":
        return None
    best = max(search.scorer.scored, key=search.reward)  # ties: the first scored, as the search's best
    best_reward = search.reward(best)
    space = EditSpace(*agent.summaries.shape[:2], agent.max_length, agent.frame)
    edits = {space.apply(best, int(action)) for action in np.flatnonzero(space.mask(best))}
    rewards = {edit: search.reward(edit) for edit in edits}
    pick = rollout(agent, search.preference, best)
    if pick not in rewards or len(rewards) < 2:
        return None
    mine = rewards.pop(pick)
    others = np.array(list(rewards.values()))
    beaten = (others < mine - TIE).sum() + 0.5 * (np.abs(others - mine) <= TIE).sum()
    return {
        "percentile": float(beaten / len(others)),
        "gain": float(mine - best_reward),
        "best_gain": float(max(mine, others.max()) - best_reward),
        "edits": len(others) + 1,
    }


def run_local(search: PathSearch, seed: int) -> None:
    """Random local search: one random edit of the best path so far, kept when not worse."""
    rng = np.random.default_rng(seed)
    best, best_reward = search.identity, search.base
    while search.new_paths() < BUDGET:
        steps = mutate_path(
            list(best.steps), search.pool.num_models, search.pool.num_layers, search.t_max, rng
        )
        path = InferencePath(tuple(steps))
        reward = search.reward(path)
        search.record_curve()
        if reward >= best_reward:
            best, best_reward = path, reward


def run_evolution(search: PathSearch, seed: int) -> None:
    """``evo_path``'s (μ + λ) evolution of the path at the fixed merge."""
    rng = np.random.default_rng(seed)
    population = [(search.base, list(search.identity.steps))]
    while search.new_paths() < BUDGET:
        children = []
        for _ in range(CHILDREN):
            _, parent = population[int(rng.integers(len(population)))]
            steps = mutate_path(parent, search.pool.num_models, search.pool.num_layers, search.t_max, rng)
            children.append((search.reward(InferencePath(tuple(steps))), steps))
            search.record_curve()
            if search.new_paths() >= BUDGET:
                break
        population = sorted(population + children, key=lambda item: -item[0])[:PARENTS]


def record_file(seed: int, index: int, method: str) -> Path:
    return SCRATCH / f"seed{seed}-pref{index}-{method}-budget{BUDGET}.json"


def kept_record(seed: int, index: int, method: str, digest: str) -> dict | None:
    """A search's record from the scratch folder, if it was made on this zoo build and format."""
    file = record_file(seed, index, method)
    if file.is_file():
        record = json.loads(file.read_text())
        if record.get("zoo") == digest and record.get("format") == FORMAT[method]:
            return record
    return None


def run_one(context, seed: int, index: int, method: str, digest: str, carried=None) -> dict:
    """One search, reused from the scratch folder when it was made on this zoo build and format (a carried
    search only with ``carried`` None: :func:`run_carried` decides). Its record holds the agent trained (under
    ``"agent"``, not written) for the next preference of a carried chain."""
    kept = kept_record(seed, index, method, digest)
    if kept is not None and carried is None and method != "ppo_edit_carried":
        return kept
    file = record_file(seed, index, method)
    recipe, models, evaluator = context
    started = time.perf_counter()
    recipe, calibration = recipe.model_copy(update={"seed": seed}), None
    if method == "ppo_edit_stats":  # the scorer fits a map at every seam, on the recipe's calibration batch
        level = recipe.architecture_level.model_copy(update={"alignment": "stats"})
        recipe = recipe.model_copy(update={"architecture_level": level})
        calibration = calibration_batch(evaluator, level.calibration_samples)
    search = PathSearch(models, evaluator, recipe, PREFERENCES[index], calibration)
    gain, agent = None, None
    with quiet_libraries():
        if method == "ppo":
            gain, agent = run_ppo(search, seed, {"actions": "path"})
        elif method == "ppo_lr0":
            gain, agent = run_ppo(search, seed, {"actions": "path", "learning_rate": 0.0})
        elif method == "ppo_critic":
            gain, agent = run_ppo(
                search, seed, {"actions": "path", "wolpertinger_neighbours": CRITIC_NEIGHBOURS}
            )
        elif method in ("ppo_edit", "ppo_edit_stats"):
            gain, agent = run_ppo(search, seed, {"actions": "edit"})
        elif method == "ppo_edit_carried":
            gain, agent = run_ppo(search, seed, {"actions": "edit"}, carried=carried)
        elif method == "ppo_edit_lr0":
            gain, agent = run_ppo(search, seed, {"actions": "edit", "learning_rate": 0.0})
        elif method == "ppo_edit_epochs10":
            gain, agent = run_ppo(search, seed, {"actions": "edit", "n_epochs": 10})
        elif method.startswith("ppo_edit_lr"):
            rate = float(method.removeprefix("ppo_edit_lr"))
            gain, agent = run_ppo(search, seed, {"actions": "edit", "learning_rate": rate})
        elif method == "ppo_edit_frame":
            gain, agent = run_ppo(search, seed, {"actions": "edit"}, {"fixed_first": 1, "fixed_last": 1})
        elif method == "local":
            run_local(search, seed)
        else:
            run_evolution(search, seed)
    search.record_curve()
    record = {
        "format": FORMAT[method],
        "zoo": digest,
        "curve": search.curve[:BUDGET],
        "edits": search.edits(),
        "rollout": gain,
        "base": search.base,
        "distinct": search.new_paths(),
        "seconds": time.perf_counter() - started,
    }
    with quiet_libraries():  # outside the budget and the search's time: the scorer's paths are counted above
        record["favourite"] = favourite_edit(search, agent)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    partial = file.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    partial.replace(file)  # a kill never leaves half a record
    return {**record, "agent": agent}


def run_carried(context, seed: int, digest: str) -> None:
    """``ppo_edit_carried`` for one seed: the preferences in order, each search going on training the edit agent
    the one before trained (the first starts fresh, as ``ppo_edit``). The chain is redone whole unless every
    search of it is kept: a later search needs the agent the earlier ones trained, which is not stored."""
    method = "ppo_edit_carried"
    if all(kept_record(seed, i, method, digest) for i in range(len(PREFERENCES))):
        return
    agent = None
    for index in range(len(PREFERENCES)):
        agent = run_one(context, seed, index, method, digest, carried=agent)["agent"]


def section_key(build: str) -> str:
    """A section's key: the zoo build, and the seeds where they are not the default ones (a replicate on fresh
    seeds is a section of its own and leaves the default seeds' table as it was)."""
    return build if SEEDS == DEFAULT_SEEDS else f"{build} seeds {','.join(map(str, SEEDS))}"


def section_marker(key: str, end: str) -> str:
    return f"<!-- zoo build {key}: {end} -->"


def paired(records: dict[str, list[dict]]) -> list[str]:
    """Per pair of :data:`PAIRED` both measured: at each checkpoint past the first PPO update, in how many
    searches the first method's best is ahead of, behind or equal to the second's (and of the equal ones, how
    many are both at the ceiling: the best any method in the table found in that search), and the mean
    difference."""
    searches = len(next(iter(records.values()), []))
    ceilings = [max(found[i]["curve"][-1] for found in records.values()) for i in range(searches)]
    lines = []
    for first, second in PAIRED:
        if first not in records or second not in records:
            continue
        cells = []
        for checkpoint in [c for c in CHECKPOINTS if c >= 50]:
            pairs = [
                (
                    a["curve"][min(checkpoint, len(a["curve"])) - 1],
                    b["curve"][min(checkpoint, len(b["curve"])) - 1],
                )
                for a, b in zip(records[first], records[second], strict=True)
            ]
            differences = np.array([a - b for a, b in pairs])
            ahead, behind = int((differences > TIE).sum()), int((differences < -TIE).sum())
            capped = sum(
                abs(a - b) <= TIE and a >= ceiling - TIE
                for (a, b), ceiling in zip(pairs, ceilings, strict=True)
            )
            cells.append(
                f"at {checkpoint} paths {ahead} ahead / {behind} behind / {len(differences) - ahead - behind} "
                f"equal, {capped} of them at the ceiling ({differences.mean():+.4f})"
            )
        cells.append(significance(differences))
        cells.append(f"per preference at {checkpoint} paths: " + ", ".join(by_preference(differences)))
        ranks = [
            (a["favourite"]["percentile"], b["favourite"]["percentile"])
            for a, b in zip(records[first], records[second], strict=True)
            if a.get("favourite") and b.get("favourite")
        ]
        if len(ranks) == len(records[first]):
            rank_gaps = np.array([a - b for a, b in ranks])
            cells.append(
                f"favourite edit ranked higher in {int((rank_gaps > TIE).sum())} / lower in "
                f"{int((rank_gaps < -TIE).sum())} ({rank_gaps.mean():+.2f})"
            )
        lines.append(f"- `{first}` against `{second}`, search by search: " + "; ".join(cells) + ".")
    if lines:
        lines = [
            "Paired (the same seed and preference, so the same merge and the same first paths until the first "
            "PPO update; 'at the ceiling': both at the best any method of this table found in that search, where "
            "learning has nothing left to win):",
            "",
            *lines,
            "",
        ]
    return lines


def by_preference(differences: np.ndarray) -> list[str]:
    """The paired differences of each preference (the records run seed by seed, preference by preference)."""
    cells = []
    for index, preference in enumerate(PREFERENCES):
        mine = differences[index :: len(PREFERENCES)]
        ahead, behind = int((mine > TIE).sum()), int((mine < -TIE).sum())
        cells.append(
            f"{preference} {ahead} ahead / {behind} behind / {len(mine) - ahead - behind} equal ({mine.mean():+.4f})"
        )
    return cells


def significance(differences: np.ndarray) -> str:
    """Whether the paired differences at the last checkpoint could be chance: the two-sided sign test and
    Wilcoxon signed-rank test over the searches that differ (equal ones dropped), and a 95% bootstrap interval
    of the mean difference over all searches (10,000 resamples, fixed seed)."""
    differing = differences[np.abs(differences) > TIE]
    if len(differing) == 0:
        return "no search differs"
    ahead = int((differing > 0).sum())
    sign = stats.binomtest(ahead, len(differing), 0.5).pvalue
    signed_rank = stats.wilcoxon(differing).pvalue
    draws = np.random.default_rng(0).integers(0, len(differences), (10_000, len(differences)))
    low, high = np.percentile(differences[draws].mean(axis=1), [2.5, 97.5])
    return (
        f"two-sided over the {len(differing)} that differ: sign test p = {_p(sign)}, Wilcoxon signed-rank p = "
        f"{_p(signed_rank)}; mean difference 95% bootstrap interval [{low:+.4f}, {high:+.4f}]"
    )


def _p(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def table(records: dict[str, list[dict]], build: str, digest: str) -> list[str]:
    """One zoo build's table and plot: a row per method with every search of every seed and preference."""
    rows = []
    plt.figure()
    for method, found in records.items():
        curves = np.array([r["curve"] + [r["curve"][-1]] * (BUDGET - len(r["curve"])) for r in found])
        cells = [f"{curves[:, c - 1].mean():+.4f} ± {curves[:, c - 1].std():.4f}" for c in CHECKPOINTS]
        rollouts = [r["rollout"] for r in found if r["rollout"] is not None]
        rollout = f"{np.mean(rollouts):+.4f} ± {np.std(rollouts):.4f}" if rollouts else "—"
        improved = sum(r["curve"][-1] > 0 for r in found)
        seconds = np.mean([r["seconds"] for r in found])
        firsts = [next((i + 1 for i, v in enumerate(r["curve"]) if v > 0), None) for r in found]
        ranked = sorted(np.inf if f is None else f for f in firsts)  # never found: last
        median = ranked[(len(ranked) - 1) // 2]
        first_cell = "—" if np.isinf(median) else f"{int(median)}"
        edits = [r["edits"] for r in found if "edits" in r]
        edit_cell = f"{np.mean(edits):.2f}" if edits else "—"
        rank_cell = optimum_cell = "—"  # only where every search of the row has its favourite edit ranked
        if all(r.get("favourite") for r in found):
            ranks = [r["favourite"]["percentile"] for r in found]
            optima = sum(r["favourite"]["best_gain"] <= TIE for r in found)
            rank_cell, optimum_cell = f"{np.mean(ranks):.2f} ± {np.std(ranks):.2f}", f"{optima}/{len(found)}"
        rows.append(
            f"| {method} | "
            + " | ".join(cells)
            + f" | {rollout} | {rank_cell} | {optimum_cell} | {improved}/{len(found)} | {first_cell}"
            + f" | {edit_cell} | {seconds:.0f} |"
        )
        plt.plot(range(1, BUDGET + 1), curves.mean(axis=0), label=method)
    plt.xlabel("new paths scored")
    plt.ylabel("best R(λ) − R(merge), mean over seeds × preferences")
    plt.title(f"deep toy LM zoo {build}: path search, {len(SEEDS)} seeds × {len(PREFERENCES)} preferences")
    plt.legend()
    plt.grid(alpha=0.3)
    key = section_key(build)
    plot = f"agent_learning_{key.replace(' seeds ', '_seeds').replace(',', '-')}.png"
    plt.savefig(RESULTS / plot, dpi=120, bbox_inches="tight")
    plt.close()
    return [
        section_marker(key, "start"),
        f"## Deep zoo `{build}` (built on {cpu_name()})"
        + ("" if SEEDS == DEFAULT_SEEDS else f", seeds {', '.join(map(str, SEEDS))}"),
        "",
        f"Command: `{'' if SEEDS == DEFAULT_SEEDS else 'BENCH_SEEDS=' + ','.join(map(str, SEEDS)) + ' '}"
        f".venv/bin/python benchmarks/agent_learning.py` (budget {BUDGET} new paths per search, seeds "
        f"{SEEDS}, preferences {PREFERENCES})  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; scratch records `{digest}`",
        "",
        "| method | "
        + " | ".join(f"{c} paths" for c in CHECKPOINTS)
        + " | greedy rollout | favourite edit's rank | best at a local optimum | improved | first better | edits"
        " | s per search |",
        "|---|" + "---:|" * (len(CHECKPOINTS) + 7),
        *rows,
        "",
        *paired(records),
        f"Plot: `{plot}` (mean best-so-far improvement against paths scored).",
        section_marker(key, "end"),
    ]


def main() -> None:
    unknown = [m for m in CHOSEN if m not in METHODS]
    if unknown:
        raise UserError(f"BENCH_METHODS: unknown method {unknown[0]!r}; choose among {', '.join(METHODS)}")
    build = zoo_build(ensure_zoo("lm", size="deep"))
    recipe = load_recipe(RECIPE)
    digest = zoo_digest(recipe)
    inputs = load_inputs(recipe)
    context = (recipe, CandidateModels(inputs.pool, recipe, inputs.calibration), inputs.evaluator)
    started = time.perf_counter()
    for method in CHOSEN:
        for seed in SEEDS:
            for index in range(len(PREFERENCES)):
                print(
                    f"[{time.perf_counter() - started:6.0f} s] seed {seed} preference {index} {method}",
                    flush=True,
                )
                if method == "ppo_edit_carried":
                    if index == 0:
                        run_carried(context, seed, digest)
                else:
                    run_one(context, seed, index, method, digest)
    records: dict[str, list[dict]] = {}  # every method with all its searches on this build, run now or before
    for method in METHODS:
        found = [kept_record(s, i, method, digest) for s in SEEDS for i in range(len(PREFERENCES))]
        if all(found):
            records[method] = found
    results = RESULTS / "agent_learning.md"
    others = [
        line
        for key, lines in marked_sections(results, "zoo build").items()
        if key != section_key(build)
        for line in ["", *lines]
    ]
    lines = [
        "# Does the path agent learn? (issue 21)",
        "",
        "Deep toy LM zoo (`recipes/toy-lm-deep.yaml`), the merge fixed at task arithmetic with weights λ; each "
        "cell is the best reward improvement over that merge's identity path after that many new paths, mean ± "
        "std over seeds × preferences (0: nothing better than the merge found). 'Greedy rollout': the trained "
        "policy's deterministic path at the end, its improvement. 'Favourite edit's rank' (edit agents; sections "
        "from stop 45 on): the policy's most likely edit of the search's best path at the end, ranked among every "
        "valid edit of that path, each scored outside the budget — the share of the others it beats (ties half): "
        "an edit drawn at random ranks 0.5 on average, the untrained prior's favourite (the argmax of near-zero "
        "logits) wherever its logits' accidents put it; a policy that learnt which edits pay for λ ranks near 1. "
        "'Best at a local optimum': searches whose final best path no single edit improves (the same scorings). "
        "'Improved': searches whose best beats the merge. "
        "'First better': median number of new paths until the first one better than the merge (— when fewer than "
        "half the searches found one). 'Edits': mean edit distance of a new path from the best path at the time. "
        "One section per build of the zoo (the fingerprint of its weights: another CPU vendor builds another zoo "
        "from the same seed, README), each measured on its own build.",
        "",
        *table(records, build, digest),
        *others,
        *kept_notes(results),
    ]
    results.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    exit_with(main, "agent_learning.py")
