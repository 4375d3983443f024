"""The end of a search: the front, its held-out scores, the references, ``summary.json`` and mergekit files.

* **Front.** Every candidate of every preference, kept if no other candidate is at least as good on every
  objective and better on one — decided on the search split, the only data the search saw.
* **Held-out.** Each member is built again from its data (merge spec + path) and scored on the held-out split.
* **References**, scored on both splits: the K fine-tuned models, and uniform-weight merges (weights 1/K) with
  ``task_arithmetic``, ``ties`` and ``dare_ties`` at the recipe's density.
* **Summary.** Hypervolume of the front and of each reference alone, on both splits, with one normalisation
  per split shared by everything compared (:mod:`hm3.moo.hypervolume`), and the front's margin over each.
* **mergekit.** ``mergekit/<id>.yml`` per member: the parameter merge itself, or — for a routed member — a
  ``passthrough`` config over the K models and the merged one, which ``mergekit/<id>.merge.yml`` writes first
  (the path in the passthrough file). Members with ``stats`` alignment have no mergekit form.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hm3.front import FrontMember, ParetoFront, Reference, select_front
from hm3.routing.path import InferencePath
from hm3.store import FRONT_FILE, SUMMARY_FILE

if TYPE_CHECKING:
    from hm3.merge.spec import MergeSpec
    from hm3.search.session import Search

UNIFORM_METHODS = ("task_arithmetic", "ties", "dare_ties")
MERGED_MODELS_DIR = "merged"


def flatten(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates of per-preference results as one list of ``{preference, merge, path, alignment, scores}``
    (``path`` None: the plain parameter merge)."""
    out = []
    for result in results:
        for candidate in result["candidates"]:
            plain = candidate["path"] == result["merged_path"]
            out.append(
                {
                    "preference": result["preference"],
                    "merge": result["merge"],
                    "path": None if plain else candidate["path"],
                    "alignment": "none" if plain else result["alignment"],
                    "scores": candidate["scores"],
                }
            )
    return out


def front_candidates(candidates: list[dict[str, Any]]) -> list[FrontMember]:
    """Candidates as front members; duplicates by content (merge, path, alignment) collapse to the first.

    A candidate with ``merge`` None runs ``path`` over the K fine-tuned models and the base model (slot K), with
    the base's embeddings and head — the architecture-only ablation.
    """
    from hm3.evaluate.cache import candidate_key

    members: dict[str, FrontMember] = {}
    for candidate in candidates:
        key = candidate_key(
            {"merge": candidate["merge"], "path": candidate["path"], "alignment": candidate["alignment"]}
        )
        if key not in members:
            members[key] = FrontMember(
                id=key[:12],
                preference=list(candidate.get("preference") or []),
                merge=candidate["merge"],
                path=candidate["path"],
                alignment=candidate["alignment"],
                scores={"search": dict(candidate["scores"])},
            )
    return list(members.values())


def _spec(data: dict[str, Any]) -> MergeSpec:
    from hm3.merge.spec import MergeSpec

    return MergeSpec.from_record(data, "a merge in the run's candidates.jsonl or front.json")


def score_heldout(search: Search, member: FrontMember) -> dict[str, float]:
    """The member's held-out scores (from the log, or built and scored once)."""
    spec = None if member.merge is None else _spec(member.merge)
    routing = search.models.routing_pool(spec)
    path = (
        InferencePath.from_data(member.path)
        if member.path is not None
        else InferencePath.identity(routing.merged_index, routing.num_layers)
    )
    alignment = member.alignment

    def compute() -> dict[str, float]:
        return search.evaluator.score(search.models.candidate(spec, path, alignment), split="heldout")

    return search.log.score_once(
        {
            "merge": member.merge,
            "path": path.to_data(),
            "alignment": alignment,
            "split": "heldout",
            "objectives": search.objectives,
            "scoring": search.scoring,
        },
        compute,
        split="heldout",
        kind="path",
        merge=member.merge,
        path=path.to_data(),
        alignment=alignment,
    )


def references(search: Search) -> list[Reference]:
    """The fine-tuned models and the uniform merges, scored on both splits."""
    from hm3.merge.spec import MergeSpec

    out: list[Reference] = []
    names = search.pool.model_names
    for index, name in enumerate(names):
        scores = {"search": search.finetuned_scores[name]}
        scores["heldout"] = search.log.score_once(
            {
                "finetuned": name,
                "split": "heldout",
                "objectives": search.objectives,
                "scoring": search.scoring,
            },
            lambda index=index: search.evaluator.score(search.models.finetuned(index), split="heldout"),
            split="heldout",
            kind="finetuned",
            label=name,
        )
        out.append(Reference(label=name, kind="finetuned", scores=scores))
    level = search.recipe.parameter_level
    uniform = [1.0 / len(names)] * len(names)
    for method in UNIFORM_METHODS:
        spec = MergeSpec.from_recipe(
            level.model_copy(
                update={"method": method, "density": level.effective_density, "drop_rate": None}
            ),
            uniform,
            search.recipe.seed,
        )
        label = f"uniform {method}"
        data = spec.model_dump(mode="json")
        scores = {}
        for split in ("search", "heldout"):

            def compute(split: str = split, spec: MergeSpec = spec) -> dict[str, float]:
                from hm3.routing.builder import build_routed_model

                routing = search.models.routing_pool(spec)
                path = InferencePath.identity(routing.merged_index, routing.num_layers)
                return search.evaluator.score(build_routed_model(routing, path), split=split)

            scores[split] = search.log.score_once(
                {
                    "reference": label,
                    "merge": data,
                    "split": split,
                    "objectives": search.objectives,
                    "scoring": search.scoring,
                },
                compute,
                split=split,
                kind="reference",
                label=label,
                merge=data,
            )
            search.progress.advance()
        out.append(Reference(label=label, kind="merge", scores=scores, merge=data))
    return out


def write_mergekit_files(search: Search, member: FrontMember) -> str | None:
    """``mergekit/<id>.yml`` for one member (None when its alignment has no mergekit form)."""
    from hm3.merge.mergekit_export import to_mergekit_yaml

    if member.alignment != "none" or member.merge is None:
        return None
    folder = search.store.subdirectory("mergekit")
    spec = _spec(member.merge)  # type: ignore[arg-type]
    model_paths = [m.folder for m in search.pool.models]
    merge_yaml = to_mergekit_yaml(spec, model_paths, search.pool.base.folder)
    if member.path is None:
        (folder / f"{member.id}.yml").write_text(
            f"# hm3 front member {member.id}: parameter merge, preference {member.preference}\n" + merge_yaml
        )
        return f"mergekit/{member.id}.yml"
    from hm3.routing.save import passthrough_yaml

    merged_folder = (search.store.directory / MERGED_MODELS_DIR / member.id).resolve()
    (folder / f"{member.id}.merge.yml").write_text(
        f"# step 1 of 2 for hm3 front member {member.id}: the parameter merge; write it with\n"
        f"#   mergekit-yaml {folder / f'{member.id}.merge.yml'} {merged_folder}\n" + merge_yaml
    )
    routing = search.models.routing_pool(spec)
    previous = routing.folders[routing.merged_index]
    routing.folders[routing.merged_index] = merged_folder
    try:
        text = passthrough_yaml(routing, InferencePath.from_data(member.path))
    finally:
        routing.folders[routing.merged_index] = previous
    (folder / f"{member.id}.yml").write_text(
        f"# step 2 of 2 for hm3 front member {member.id} (preference {member.preference}): the routed model;\n"
        f"# run {member.id}.merge.yml first, it writes {merged_folder}\n" + text
    )
    return f"mergekit/{member.id}.yml"


def finish_run(
    search: Search,
    scored: list[dict[str, Any]],
    seconds: float,
    method: str = "hm3",
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Select the front among ``scored`` candidates, score it and the references on the held-out split, write
    front.json and summary.json; returns the summary.

    Args:
        search: The open search.
        scored: Every candidate the method produced (see :func:`front_candidates`).
        seconds: Wall time of this session.
        method: ``hm3`` or a baseline's name (recorded in the summary).
        details: Method-specific facts for the summary (preferences, budget, wall time per part).
    """
    recipe = search.recipe
    directions = [o.higher_is_better for o in recipe.objectives]
    candidates = front_candidates(scored)
    members = select_front(candidates, search.objectives, directions)
    search.progress.stage("held-out scores of the front", len(members))
    for member in members:
        member.scores["heldout"] = score_heldout(search, member)
        search.progress.advance()
    search.progress.stage("references (fine-tuned, uniform merges)", 2 * len(UNIFORM_METHODS))
    refs = references(search)
    for member in members:
        member.mergekit = write_mergekit_files(search, member)
    front = ParetoFront(search.objectives, directions, members, refs)
    search.store.write_json(FRONT_FILE, front.to_json())
    summary = summarize(search, front, len(candidates), seconds, method, details or {})
    search.store.write_json(SUMMARY_FILE, summary)
    search.store.log(
        f"finished: {len(members)} front members, held-out hypervolume {summary['heldout']['front']:.4f}"
    )
    return summary


def summarize(
    search: Search, front: ParetoFront, distinct: int, seconds: float, method: str, details: dict[str, Any]
) -> dict[str, Any]:
    """``summary.json``: hypervolumes with their normalisation, margins, counts, wall time, reference scores."""
    per_split = {}
    for split in ("heldout", "search"):
        volumes = front.hypervolumes(split)  # type: ignore[arg-type]
        volumes["margin_over"] = {
            label: volumes["front"] - value for label, value in volumes["references"].items()
        }
        per_split[split] = volumes
    search_records = [r for r in search.log.records if r.get("split") == "search"]
    return {
        "objectives": front.objectives,
        "higher_is_better": front.higher_is_better,
        "hypervolume_definition": (
            "each objective min-max normalised over every compared point (front members and references) "
            "on that split; reference point -0.1 on every normalised axis; exact computation"
        ),
        "heldout": per_split["heldout"],
        "search": per_split["search"],
        "front_members": len(front.members),
        "method": method,
        **details,
        "distinct_candidates": distinct,
        "candidates_scored_search_split": len(search_records),
        "candidates_scored_this_session": search.log.new,
        "ideal_point_search": search.ideal,
        "wall_seconds_this_session": round(seconds, 3),
        "references": {r.label: r.scores for r in front.references},
    }


def run_folder(recipe_file: str | Path, out: str | None, configured: str | None) -> Path:
    """Where a new run goes: ``--out``, else the recipe's ``output.dir``, else ``runs/<recipe name>``."""
    if out:
        return Path(out)
    if configured:
        return Path(configured)
    return Path("runs") / Path(recipe_file).stem
