"""A search on Ray actors (``hm3 merge --ray-address local|auto|HOST:PORT``): the upper level's merges scored in
batches, and the preference subproblems.

The run's actors (:class:`RayWorkers`) start at their first use and serve the whole run. Each opens the run on
its own — its own copy of the model pool and of the evaluator, on its own device. The optimised upper level
proposes ``parameter_level.batch`` merges at a time (NSGA-II: a generation) and the actors score them together
(:meth:`RayWorkers.score`); the driver logs and charges each, in order, as it arrives, exactly as a run in one
process would. Then each actor searches the preferences the driver hands it with
:func:`hm3.search.preference.run_preference`, the very function the sequential search calls, with the same
per-preference seed. Every candidate an actor's path search scores is appended by the actor to the run's
``candidates.jsonl`` (one line per ``write``, ``O_APPEND``, fsynced), so the run directory must be on a file
system every node sees (always true for ``local``). The driver writes each finished preference to
``preferences/`` as results come in; a killed distributed run resumes like any other, sequentially or
distributed.

Nothing here imports Ray unless a distributed run is asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hm3.errors import UserError
from hm3.merge.spec import MergeSpec
from hm3.routing.agent import PathAgent
from hm3.search.candidate import Candidate
from hm3.search.log import CandidateLog
from hm3.search.preference import run_preference
from hm3.search.progress import SearchProgress
from hm3.search.session import Search, open_search
from hm3.store import RunStore


class PreferenceWorker:
    """A Ray actor: one copy of the pool and the evaluator, scoring candidates and searching preferences, one
    at a time."""

    def __init__(
        self,
        recipe: Any,
        run_directory: str,
        scale: tuple[list[float], list[float]],
        parameter_level: bool,
    ) -> None:
        self.search = open_search(recipe, RunStore(Path(run_directory)), SearchProgress(enabled=False))
        self.search.ideal, self.search.nadir = list(scale[0]), list(scale[1])
        self.parameter_level = parameter_level
        self.agents: dict[str, PathAgent] = {}

    def score(self, candidate: dict) -> tuple[dict[str, float], float]:
        """The search-split scores of a candidate (:meth:`Candidate.data`) and the seconds they took; the
        driver logs and charges them."""
        start = time.perf_counter()
        model = self.search.models.build(Candidate.from_record(candidate))
        scores = self.search.evaluator.score(model, split="search")
        return {name: float(value) for name, value in scores.items()}, time.perf_counter() - start

    def run(
        self,
        index: int,
        preference: list[float],
        merge: dict | None = None,
        path_level_paid: bool = True,
        shares_with: list[int] | None = None,
        agent_folder: str | None = None,
    ) -> dict:
        spec = None if merge is None else MergeSpec.model_validate(merge)
        agent = None
        if agent_folder is not None:
            if agent_folder not in self.agents:
                self.agents[agent_folder] = PathAgent.load(
                    agent_folder, allow_pickle=self.search.recipe.allow_pickle
                )
            agent = self.agents[agent_folder]
        # what other workers logged since (the probe preference's paths above all) is answered, not re-scored
        self.search.log = CandidateLog(self.search.store)
        return run_preference(
            self.search,
            index,
            np.asarray(preference),
            agent,
            self.parameter_level,
            spec,
            path_level_paid=path_level_paid,
            shares_with=shares_with or [],
        )


class RayWorkers:
    """A distributed run's actors: started at their first use (one :class:`PreferenceWorker` each, as many as
    ``workers`` or the cluster's CPUs, at most ``needed``: more would only load the pool), kept for the run,
    killed by :meth:`close`."""

    def __init__(
        self, search: Search, parameter_level: bool, address: str, workers: int | None, needed: int
    ) -> None:
        self.search, self.parameter_level = search, parameter_level
        self.address, self.workers, self.needed = address, workers, max(1, needed)
        self._actors: list[Any] | None = None

    @property
    def actors(self) -> list[Any]:
        if self._actors is None:
            import ray

            count = min(connect(self.address, self.workers), self.needed)
            cluster = ray.cluster_resources()
            options, recipe = actor_placement(self.search.recipe, cluster)
            if options.get("num_gpus"):
                count = min(count, int(cluster["GPU"]))
            worker_class = ray.remote(**options)(PreferenceWorker)
            scale = (self.search.ideal, self.search.nadir)
            directory = str(self.search.store.directory.resolve())
            self._actors = [
                worker_class.remote(recipe, directory, scale, self.parameter_level) for _ in range(count)
            ]
            self.search.store.log(f"ray: {count} workers at {self.address}")
        return self._actors

    def score(self, candidates: list[Candidate]) -> Iterator[tuple[dict[str, float], float]]:
        """Score ``candidates`` on the search split, spread over the actors; (scores, seconds) of each, in
        order, as they arrive (:meth:`hm3.search.budget.BudgetedEvaluator.score_many` logs them)."""
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        yield from pool.map(lambda actor, candidate: actor.score.remote(candidate.data()), candidates)

    def close(self) -> None:
        if self._actors is not None:
            import ray

            for actor in self._actors:
                ray.kill(actor)
            self._actors = None


def connect(address: str, workers: int | None) -> int:
    """Start or join the Ray cluster; returns the number of workers to use."""
    try:
        import ray
    except ImportError as error:  # the `ray` extra is optional
        raise UserError("distributed search needs Ray: pip install 'hm3[ray]'") from error
    if not ray.is_initialized():
        # Ray's own start-up lines (its token authentication notice, "Started a local Ray instance") would land
        # in the search's display: only its errors are shown
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        try:
            if address == "local":
                ray.init(num_cpus=workers, **options)
            else:
                ray.init(address=address, **options)
        except ConnectionError as error:
            raise UserError(f"cannot reach the Ray cluster at {address}: {error}") from error
    available = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(workers or available, available))


def actor_placement(recipe: Any, cluster: dict[str, float]) -> tuple[dict[str, float], Any]:
    """Ray resources of one worker, and the recipe the worker opens.

    A recipe on a GPU (``device: cuda``, or ``auto`` on a cluster with GPUs) gives each worker a GPU
    of its own: Ray makes that GPU the worker's only visible one, so the worker's recipe says ``cuda``. Otherwise
    a worker takes one CPU and keeps the recipe's device.
    """
    device = str(recipe.device)
    wants_gpu = device.startswith("cuda") or (device == "auto" and cluster.get("GPU", 0) >= 1)
    if not wants_gpu:
        return {"num_cpus": 1}, recipe
    if cluster.get("GPU", 0) < 1:
        raise UserError(
            f"device {device}: the Ray cluster has no GPU; use device: cpu or a cluster with GPUs"
        )
    return {"num_cpus": 1, "num_gpus": 1}, recipe.model_copy(update={"device": "cuda"})


def run_preferences_on_ray(
    search: Search,
    workers: RayWorkers,
    pending: list[tuple[int, np.ndarray]],
    agent_folder: Path | None,
    on_result: Callable[[dict], None],
    merges: dict[int, MergeSpec] | None = None,
    probe: int | None = None,
    path_level_paid: Callable[[], bool] = lambda: True,
    groups: dict[int, list[int]] | None = None,
) -> None:
    """Search the ``pending`` (index, λ) preferences on the run's Ray actors; ``on_result`` gets each record as
    it lands (``merges``: the optimised upper level's merge of each preference). ``probe``: a pending preference
    searched first and alone, after whose record (``on_result``) ``path_level_paid()`` gives every other
    preference's verdict (:mod:`hm3.search.allocation`). ``groups``: for each preference, the earlier ones that
    search the same merge (:func:`hm3.search.preference.merge_groups`); it starts only once they are done, as in
    a sequential run."""
    import ray

    if not pending:
        return
    actors = workers.actors
    groups = groups or {}
    folder = None if agent_folder is None else str(agent_folder)
    queue = sorted(pending, key=lambda item: item[0] != probe)  # the probe first
    probing = probe is not None and bool(queue) and queue[0][0] == probe
    unfinished = {index for index, _ in pending}
    running: dict[Any, tuple[Any, int]] = {}
    idle = list(actors)

    def start(position: int) -> None:
        index, preference = queue.pop(position)
        paid = True if index == probe else path_level_paid()
        actor = idle.pop(0)
        task = actor.run.remote(*_task(index, preference, merges), paid, groups.get(index, []), folder)
        running[task] = (actor, index)

    def dispatch() -> None:
        while idle and queue:
            position = next_ready(queue, unfinished, groups)
            if position is None:
                return  # every queued preference waits for an earlier search of its merge
            start(position)

    if probing:
        start(0)  # the probe alone: its verdict is in before the others start
    else:
        dispatch()
    while running:
        done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        search.progress.stage_count(_logged_lines(search))
        for reference in done:
            actor, index = running.pop(reference)
            on_result(ray.get(reference))
            unfinished.discard(index)
            idle.append(actor)
        if done:  # (after the probe: its verdict is in)
            dispatch()


def next_ready(queue: list[tuple[int, Any]], waiting: set[int], groups: dict[int, list[int]]) -> int | None:
    """The position in ``queue`` of the first preference none of whose earlier searches of the same merge
    (``groups``) is still ``waiting`` (queued or running), or None."""
    for position, (index, _) in enumerate(queue):
        if not waiting.intersection(groups.get(index, [])):
            return position
    return None


def _task(index: int, preference: np.ndarray, merges: dict[int, MergeSpec] | None) -> tuple:
    merge = (merges or {}).get(index)
    return index, [float(v) for v in preference], None if merge is None else merge.model_dump(mode="json")


def _logged_lines(search: Search) -> int:
    try:
        with open(search.store.candidates_path, "rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0
