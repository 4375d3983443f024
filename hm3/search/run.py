"""`hm3 merge --recipe`: the bilevel multi-objective search of HM3, from a recipe to a Pareto front.

1. **Fine-tuned models.** Each is scored on the search split; the ideal point z* is the best score per
   objective among them (oriented so that higher is better).
2. **Preferences.** The K simplex corners, the centre and N Dirichlet(1, …, 1) samples
   (:func:`hm3.moo.preferences.preference_vectors`, the recipe's ``preferences``).
3. **For each λ**, the upper level merges parameters with weights λ (the recipe's method; with
   ``density_search`` / ``scale_search``, every listed density × scale is merged and the best scalarized one kept), and the lower level
   searches an inference path over the K fine-tuned models plus that merged model with the PPO/Wolpertinger
   agent (``agent.mode: per_preference``: one agent per λ, ``agent.iterations`` new candidates each;
   ``conditioned``: one preference-conditioned agent trained on the centre merge, rolled out for every λ).
   Every scored candidate is appended to ``candidates.jsonl`` at once. A finished preference is written to
   ``preferences/pNNN.json`` (atomically) with its agent in ``policy/pNNN/``.
4. **The front** (:mod:`hm3.search.finish`): the non-dominated candidates on the search split, scored on the
   held-out split with the references (the fine-tuned models and uniform TA / TIES / DARE-TIES merges).

**Resume.** Everything is deterministic given the recipe's seed, so a resumed run redoes the interrupted
preference exactly as the first attempt would have, answering every candidate already in
``candidates.jsonl`` from the log (no evaluation) — the agent sees the same rewards and takes the same steps.
Finished preferences are read back from ``preferences/``. A resumed run is the same run: the run store refuses
to resume one whose recipe, task or data files or models changed (:mod:`hm3.run_fingerprint`), and every
candidate key holds the run's scoring fingerprint (:attr:`Search.scoring`).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hm3.routing.path import InferencePath
from hm3.search.log import CandidateLog
from hm3.search.models import CandidateModels
from hm3.search.progress import SearchProgress

if TYPE_CHECKING:
    from hm3.evaluate import Evaluator
    from hm3.merge.spec import MergeSpec
    from hm3.output_guard import InputPath
    from hm3.pool import ModelPool
    from hm3.recipe import Recipe
    from hm3.routing.agent import PathAgent
    from hm3.routing.scoring import RewardSpec
    from hm3.store import RunStore

PREFERENCES_DIR = "preferences"
POLICY_DIR = "policy"
CONDITIONED_POLICY = "conditioned"


@dataclass
class Search:
    """Everything one search holds: the recipe, the run store, the models, the scorer, the candidate log."""

    recipe: Recipe
    store: RunStore
    pool: ModelPool
    evaluator: Evaluator
    log: CandidateLog
    models: CandidateModels
    progress: SearchProgress
    ideal: list[float] = field(default_factory=list)
    finetuned_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    scoring: str = ""
    """What decides a score in this run (:mod:`hm3.run_fingerprint`); part of every candidate key."""

    @property
    def objectives(self) -> list[str]:
        return list(self.recipe.objective_names)

    def score_search(self, model: Any) -> dict[str, float]:
        return self.evaluator.score(model, split="search")

    def rewards(self) -> RewardSpec:
        from hm3.routing.agent import reward_spec_from_recipe

        return reward_spec_from_recipe(self.recipe, self.ideal)


@dataclass
class SearchInputs:
    """What a search loads before it touches its run folder: the objectives, the placed pool, the calibration
    batch. Loading them runs every check that can fail before work starts (no such device, a model that does
    not load or fit, a task that does not load), so a failed start leaves no run folder behind."""

    evaluator: Evaluator
    pool: ModelPool
    calibration: dict[str, Any] | None


def load_inputs(recipe: Recipe) -> SearchInputs:
    """Load and check the objectives and the pool (checked before any model weight is read), then place it."""
    from hm3.evaluate import Evaluator
    from hm3.placement import Placement, check_fits, resolve_device
    from hm3.pool import ModelPool
    from hm3.search.calibration import calibration_batch

    placement = Placement(resolve_device(recipe.device), recipe.dtype)  # the quick checks first
    preferences(recipe)  # the preference vectors are drawn here too, so a seed they refuse fails now
    pool = ModelPool.from_recipe(recipe)
    check_fits(pool.parameters_per_model, len(pool.models) + 2, placement)
    evaluator = Evaluator.from_recipe(recipe)
    pool.place(placement.device, placement.torch_dtype)
    calibration = None
    if recipe.architecture_level.enabled and recipe.architecture_level.alignment == "stats":
        batch = calibration_batch(evaluator, recipe.architecture_level.calibration_samples)
        calibration = {
            name: value.to(placement.device, placement.torch_dtype if value.is_floating_point() else None)
            for name, value in batch.items()
        }
    return SearchInputs(evaluator, pool, calibration)


def start_search(
    recipe_file: str | Path,
    out: str | Path | None = None,
    *,
    force: bool = False,
    default_folder: str | Path | None = None,
) -> tuple[RunStore, Recipe, SearchInputs]:
    """Start a new run of a recipe file: check where it goes, validate and load, and only then create its
    folder (locked), so that a refused or failed start leaves no folder and replaces nothing.

    Args:
        recipe_file: The recipe.
        out: The run folder; None: ``default_folder``, else the recipe's ``output.dir``, else
            ``runs/<recipe name>``.
        force: Replace the run hm3 wrote in the folder (never an input, never anything else).
        default_folder: The folder when ``out`` is None (``hm3 baseline``: ``runs/<recipe>-<method>``).

    Returns:
        The run store (locked; close it when done), the validated recipe, and its loaded inputs.

    Raises:
        UserError: the folder overlaps an input, holds something ``force`` may not replace, or is in use
            (checked first, before anything loads); the recipe does not validate; an input does not load.
    """
    from hm3.recipe import load_recipe
    from hm3.search.finish import run_folder
    from hm3.store import RunStore
    from hm3.validation import validate_recipe_file

    recipe = load_recipe(recipe_file)
    folder = Path(out or default_folder or run_folder(recipe_file, None, recipe.output.dir))
    sources: list[InputPath] = [("recipe", recipe_file)]
    RunStore.check_new(folder, recipe, force, sources)
    recipe = validate_recipe_file(recipe_file).recipe
    loaded = load_inputs(recipe)
    return RunStore.create(folder, recipe, force, sources), recipe, loaded


def open_search(
    recipe: Recipe, store: RunStore, progress: SearchProgress, inputs: SearchInputs | None = None
) -> Search:
    """The search of ``recipe`` in ``store``: its inputs (loaded now when not given) and the run's log."""
    loaded = inputs if inputs is not None else load_inputs(recipe)
    return Search(
        recipe=recipe,
        store=store,
        pool=loaded.pool,
        evaluator=loaded.evaluator,
        log=CandidateLog(store),
        models=CandidateModels(loaded.pool, recipe, loaded.calibration),
        progress=progress,
        scoring=store.scoring_key(recipe),
    )


def score_finetuned(search: Search) -> None:
    """Score the K fine-tuned models on the search split; set the ideal point z*."""
    from hm3.moo.scalarization import oriented

    names = search.pool.model_names
    search.progress.stage("fine-tuned models (search split)", len(names))
    for index, name in enumerate(names):
        spec = {
            "finetuned": name,
            "split": "search",
            "objectives": search.objectives,
            "scoring": search.scoring,
        }
        search.finetuned_scores[name] = search.log.score_once(
            spec,
            lambda index=index: search.score_search(search.models.finetuned(index)),
            split="search",
            kind="finetuned",
            label=name,
        )
        search.progress.advance()
    directions = [o.higher_is_better for o in search.recipe.objectives]
    search.ideal = [
        max(oriented(scores[o], up) for scores in search.finetuned_scores.values())
        for o, up in zip(search.objectives, directions, strict=True)
    ]
    search.store.log(f"ideal point z* (search split, oriented): {search.ideal}")


def preferences(recipe: Recipe) -> np.ndarray:
    """The preference vectors of the run, in the order they are searched."""
    from hm3.moo.preferences import preference_vectors

    config = recipe.preferences
    return preference_vectors(
        len(recipe.objectives),
        config.count,
        recipe.seed if config.seed is None else config.seed,
        include_corners=config.include_corners,
        include_centre=config.include_centre,
    )


def merge_for(
    search: Search, preference: np.ndarray, density: float | None = None, scale: float = 1.0
) -> MergeSpec:
    """The parameter-level merge of preference λ (weights mapped from objectives to models)."""
    from hm3.merge.spec import MergeSpec

    recipe = search.recipe
    return MergeSpec.from_recipe(
        recipe.parameter_level,
        recipe.model_weights(list(preference)),
        recipe.seed,
        density=density,
        scale=scale,
    )


def logged_scorer(search: Search, spec: MergeSpec | None, preference, index: int | None):
    """The routing pool of ``spec``'s merge and a path scorer over it that answers from the run's log and
    appends every new candidate to it (and to the live display) as it is scored."""
    recipe = search.recipe
    rewards = search.rewards()
    lam = [float(v) for v in preference]
    merge = None if spec is None else spec.model_dump(mode="json")

    def on_candidate(path: InferencePath, scores: dict[str, float]) -> None:
        search.log.record(
            scorer.key_of(path),
            scores,
            split="search",
            kind="path",
            preference=index,
            merge=merge,
            path=path.to_data(),
            alignment=recipe.architecture_level.alignment,
        )
        search.progress.candidate(rewards.reward(scores, lam, len(path)))

    routing = search.models.routing_pool(spec)
    scorer = search.models.path_scorer(
        routing,
        search.score_search,
        on_candidate=on_candidate,
        cache=search.log,
        cache_spec={"merge": merge, "scoring": search.scoring},
    )
    return routing, scorer


def run_preference(
    search: Search, index: int, preference: np.ndarray, agent: PathAgent | None, parameter_level: bool = True
) -> dict:
    """Search one preference: the upper-level merge, then the lower-level path search. Returns its record.

    With ``parameter_level`` False (the architecture-only ablation) there is no merge: slot K of the pool holds
    the base model, whose embeddings and head the paths use.
    """
    from hm3.routing.agent import search_path

    recipe = search.recipe
    rewards = search.rewards()
    started = time.perf_counter()
    lam = [float(v) for v in preference]

    level = recipe.parameter_level
    settings = itertools.product(level.density_search or [None], level.scale_search or [1.0])
    best: tuple[float, MergeSpec | None] | None = None
    for density, scale in settings if parameter_level else []:
        spec = merge_for(search, preference, density, scale)
        routing, scorer = logged_scorer(search, spec, lam, index)
        identity = InferencePath.identity(routing.merged_index, routing.num_layers)
        reward = rewards.reward(scorer.score(identity), lam, len(identity))
        if best is None or reward > best[0]:
            best = (reward, spec)
    spec = best[1] if best is not None else None
    routing, scorer = logged_scorer(search, spec, lam, index)
    identity = InferencePath.identity(routing.merged_index, routing.num_layers)
    if recipe.architecture_level.enabled:
        result = search_path(
            routing, scorer, lam, recipe, seed=recipe.seed + index, ideal=search.ideal, agent=agent
        )
        candidates = result.candidates
        if agent is None and result.agent is not None:
            result.agent.save(search.store.subdirectory(f"{POLICY_DIR}/p{index:03d}"))
    else:
        scores = scorer.score(identity)
        candidates = [(identity, scores, rewards.reward(scores, lam, len(identity)))]
    return {
        "index": index,
        "preference": lam,
        "merge": None if spec is None else spec.model_dump(mode="json"),
        "alignment": recipe.architecture_level.alignment,
        "merged_path": identity.to_data(),
        "candidates": [
            {"path": path.to_data(), "scores": scores, "reward": reward}
            for path, scores, reward in candidates
        ],
        "seconds": round(time.perf_counter() - started, 3),
    }


def conditioned_agent(search: Search, vectors: np.ndarray) -> PathAgent:
    """The shared preference-conditioned agent: loaded from ``policy/conditioned``, or trained on the centre
    preference's merge (its candidates are logged like any other) and saved there."""
    from hm3.folder_swap import fsync_tree
    from hm3.routing.agent import PathAgent, train_conditioned_agent

    folder = search.store.directory / POLICY_DIR / CONDITIONED_POLICY
    if PathAgent.saved_in(folder):
        return PathAgent.load(folder, allow_pickle=search.recipe.allow_pickle)
    centre = np.full(len(search.objectives), 1.0 / len(search.objectives))
    spec = merge_for(search, centre)
    routing, scorer = logged_scorer(search, spec, centre, None)
    search.progress.start_preference(0, 1, centre, search.recipe.agent.iterations)
    search.progress.print("training the preference-conditioned agent on the centre merge")
    agent = train_conditioned_agent(
        routing, scorer, search.recipe, seed=search.recipe.seed, ideal=search.ideal
    )
    staging = search.store.subdirectory(f"{POLICY_DIR}/.{CONDITIONED_POLICY}.tmp")
    agent.save(staging)
    fsync_tree(staging)  # durable before it is published
    staging.rename(folder)
    return agent


def run_search(
    recipe: Recipe,
    store: RunStore,
    progress: SearchProgress,
    method: str = "hm3",
    parameter_level: bool = True,
    details: dict[str, Any] | None = None,
    ray_address: str | None = None,
    workers: int | None = None,
    inputs: SearchInputs | None = None,
) -> dict[str, Any]:
    """Run (or finish) the search of ``recipe`` in ``store``; returns the summary (also in summary.json).

    Args:
        recipe: The recipe (``architecture_level.enabled: false`` gives the parameter-only ablation).
        store: The run directory.
        progress: The live display.
        method: Name recorded in the summary (``hm3``, ``param_only``, ``arch_only``).
        parameter_level: False: no parameter merge, paths over the fine-tuned models and the base.
        details: More facts for the summary (a baseline's budget).
        ray_address: Run the preferences on Ray (``local``, ``auto``, ``HOST:PORT``); None: the recipe's
            ``distributed.ray_address``, else in this process.
        workers: Ray actors (None: the recipe's ``distributed.workers``, else one per cluster CPU).
        inputs: The loaded inputs (:func:`start_search`); None: loaded now.
    """
    from hm3.search.finish import finish_run

    started = time.perf_counter()
    search = open_search(recipe, store, progress, inputs)
    if search.log.loaded:
        progress.print(f"resuming: {search.log.loaded} candidates already scored in {store.candidates_path}")
    store.log(f"search started ({search.log.loaded} candidates in the log)")
    score_finetuned(search)
    vectors = preferences(recipe)
    folder = store.subdirectory(PREFERENCES_DIR)
    done = [folder / f"p{i:03d}.json" for i in range(len(vectors))]
    progress.start_preferences(len(vectors), sum(f.is_file() for f in done))
    agent = None
    needs_agent = recipe.architecture_level.enabled and recipe.agent.mode == "conditioned"
    if needs_agent and not all(f.is_file() for f in done):
        agent = conditioned_agent(search, vectors)

    def save(record: dict) -> None:
        store.write_json(f"{PREFERENCES_DIR}/p{record['index']:03d}.json", record)
        best = max(record["candidates"], key=lambda c: c["reward"])
        store.log(
            f"preference {record['index']} {record['preference']}: {len(record['candidates'])} candidates, "
            f"best R {best['reward']:.4f}, {record['seconds']:.1f} s"
        )
        progress.finish_preference()

    pending = [(i, v) for i, (v, file) in enumerate(zip(vectors, done, strict=True)) if not file.is_file()]
    address = ray_address or recipe.distributed.ray_address
    if address and pending:
        from hm3.search.distributed import run_preferences_on_ray

        initial = search.log.loaded
        agent_folder = store.directory / POLICY_DIR / CONDITIONED_POLICY if agent is not None else None
        run_preferences_on_ray(
            search,
            pending,
            parameter_level,
            agent_folder,
            address,
            workers or recipe.distributed.workers,
            save,
        )
        search.log = CandidateLog(store)  # the workers appended their candidates to the file
        search.log.new, search.log.loaded = search.log.loaded - initial, initial
    for index, preference in pending if not address else []:
        progress.start_preference(index, len(vectors), preference, recipe.agent.iterations)
        save(run_preference(search, index, preference, agent, parameter_level))
    results = [store.read_json(f"{PREFERENCES_DIR}/{file.name}") for file in done]
    from hm3.search.finish import flatten

    summary_details = {
        **(details or {}),
        "preferences": len(results),
        "evaluations_used": len(
            {c["key"] for c in search.log.records if c.get("kind") == "path" and c.get("split") == "search"}
        ),
        "search_seconds_per_preference": [r["seconds"] for r in results],
    }
    return finish_run(search, flatten(results), time.perf_counter() - started, method, summary_details)
