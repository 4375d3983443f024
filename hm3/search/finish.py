"""The end of a search: the front from the whole log, its held-out scores, the references, ``summary.json``
and mergekit files.

* **Front.** Every candidate the run scored on the search split at a searched level (``merge``, ``path``) —
  whatever produced it: a method's candidates, the settings ``density_search`` / ``scale_search`` did not keep,
  the conditioned agent's training paths — kept if no other is at least as good on every objective and
  better on one, decided on the search split, the only data the search saw.
* **Held-out.** Each member is built again from its data (:class:`~hm3.search.candidate.Candidate`) and scored
  on the held-out split.
* **References** (:mod:`hm3.search.references`), scored on both splits.
* **Summary.** Hypervolume of the front and of each reference alone, on both splits, with one normalisation
  per split shared by everything compared (:mod:`hm3.moo.hypervolume`), the front's margin over each, and the
  budget's ledger.
* **mergekit.** ``mergekit/<id>.yml`` per member: the parameter merge itself, or — for a routed member — a
  ``passthrough`` config over the K models and the merged one, which ``mergekit/<id>.merge.yml`` writes first
  (the path in the passthrough file). Members with ``stats`` alignment have no mergekit form.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hm3.front import FrontMember, ParetoFront, select_front
from hm3.merge.mergekit_export import to_mergekit_yaml
from hm3.moo.reward import objective_directions
from hm3.routing.path import InferencePath
from hm3.routing.save import passthrough_yaml
from hm3.search.budget import CHARGED_SPLITS, BudgetedEvaluator, Ledger
from hm3.search.candidate import SEARCHED_LEVELS, Candidate, member_candidate
from hm3.search.references import REFERENCES, UNIFORM_METHODS, references
from hm3.search.session import Search
from hm3.store import FRONT_FILE, SUMMARY_FILE

MERGED_MODELS_DIR = "merged"


def logged_candidates(search: Search) -> list[Mapping[str, Any]]:
    """Every search-split record of the run's log at a searched level: by preference (records of none
    first), each preference's in the order they were scored — the same order whether the preferences ran one
    after another or on Ray workers that finished in another order."""
    records = [
        record
        for record in search.log.records
        if record.get("split") == "search" and record.get("level") in SEARCHED_LEVELS
    ]
    return sorted(records, key=lambda r: -1 if r.get("preference_index") is None else r["preference_index"])


def front_candidates(records: list[Mapping[str, Any]]) -> list[FrontMember]:
    """Log records as front members; one per candidate (the first record of it), its id the candidate's
    content hash.

    A candidate with ``merge`` None runs ``path`` over the K fine-tuned models and the base model (slot K), with
    the base's embeddings and head — the architecture-only ablation.
    """
    members: dict[str, FrontMember] = {}
    for record in records:
        candidate = Candidate.from_record(record)
        key = candidate.content_key()
        if key not in members:
            data = candidate.data()
            members[key] = FrontMember(
                id=key[:12],
                preference=list(record.get("preference") or []),
                merge=data["merge"],
                path=data["path"],
                alignment=data["alignment"],
                scores={"search": dict(record["scores"])},
            )
    return list(members.values())


def write_mergekit_files(search: Search, member: FrontMember) -> str | None:
    """``mergekit/<id>.yml`` for one member (None when its alignment has no mergekit form)."""
    if member.alignment != "none" or member.merge is None:
        return None
    folder = search.store.subdirectory("mergekit")
    spec = member_candidate(member).merge_spec()
    assert spec is not None
    if spec.dtype is None:  # the search merged in the pool's dtype (mergekit: in the stored one)
        spec = spec.model_copy(update={"dtype": search.recipe.dtype})
    model_paths = [m.folder for m in search.pool.models]
    merge_yaml = to_mergekit_yaml(spec, model_paths, search.pool.base.folder)
    if spec.row.is_random:
        merge_yaml = (
            f"# {spec.method} draws random masks: mergekit draws its own (mergekit-yaml --random-seed), so this\n"
            "# merges the same way with other masks, not into the tensors hm3 scored (hm3 export writes those)\n"
            + merge_yaml
        )
    if member.path is None:
        (folder / f"{member.id}.yml").write_text(
            f"# hm3 front member {member.id}: parameter merge, preference {member.preference}\n" + merge_yaml
        )
        return f"mergekit/{member.id}.yml"

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
    seconds: float,
    method: str = "hm3",
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Select the front among every candidate in the run's log, score it and the references on the held-out
    split, write front.json and summary.json; returns the summary.

    Args:
        search: The open search.
        seconds: Wall time of this session.
        method: ``hm3`` or a baseline's name (recorded in the summary).
        details: Method-specific facts for the summary (preferences, budget, ledger, wall time per part).
    """
    recipe = search.recipe
    directions = list(objective_directions(recipe))
    candidates = front_candidates(logged_candidates(search))
    members = select_front(candidates, search.objectives, directions)
    evaluations = BudgetedEvaluator(search, REFERENCES)
    search.progress.stage("held-out scores of the front", len(members))
    for member in members:
        member.scores["heldout"] = evaluations.score(
            member_candidate(member), level="path" if member.path else "merge", split="heldout"
        )
        search.progress.advance()
    search.progress.stage("references (fine-tuned, uniform merges)", 2 * len(UNIFORM_METHODS))
    refs = references(search, evaluations)
    for member in members:
        member.mergekit = write_mergekit_files(search, member)
    front = ParetoFront(search.objectives, directions, members, refs)
    search.store.write_json(FRONT_FILE, front.to_json())
    summary = summarize(search, front, len(candidates), seconds, method, details or {})
    summary["ledger"]["finish"] = evaluations.ledger.to_json()
    search.store.write_json(SUMMARY_FILE, summary)
    search.store.log(
        f"finished: {len(members)} front members, held-out hypervolume {summary['heldout']['front']:.4f}"
    )
    return summary


def summarize(
    search: Search, front: ParetoFront, distinct: int, seconds: float, method: str, details: dict[str, Any]
) -> dict[str, Any]:
    """``summary.json``: hypervolumes with their normalisation, margins, counts, budget and ledger, wall time,
    reference scores."""
    per_split = {}
    for split in ("heldout", "search"):
        volumes = front.hypervolumes(split)  # type: ignore[arg-type]
        volumes["margin_over"] = {
            label: volumes["front"] - value for label, value in volumes["references"].items()
        }
        per_split[split] = volumes
    search_records = [r for r in search.log.records if r.get("split") == "search"]
    details = dict(details)
    ledger = {"method": Ledger.combine(details.pop("ledgers", []))}
    charged = {  # each candidate once per split, however many budgets were charged for it
        r["key"]: r.get("documents", search.documents(r["split"]))
        for r in search.log.records
        if r.get("split") in CHARGED_SPLITS and r.get("level") in SEARCHED_LEVELS
    }
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
        "ledger": ledger,
        "budget_used": round(sum(charged.values()) / search.documents("search"), 4),
        "distinct_candidates": distinct,
        "candidates_scored_search_split": len(search_records),
        "candidates_scored_this_session": search.log.new,
        "ideal_point_search": search.ideal,
        "nadir_point_search": search.nadir,
        "objective_normalisation": (
            "rewards and scalarizations use each objective mapped to [0, 1] = [nadir, ideal] of the "
            "fine-tuned models on the search split (oriented); Tchebycheff measures the shortfall from "
            "ideal + 0.01"
        ),
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
