"""``hm3 export RUN --member ID --out DIR``: a front member as a model folder you can load and ship.

The member is built again from its data (merge spec, path, alignment) exactly as the search scored it, and
saved with :func:`hm3.routing.save.save_routed_model`: a Hugging Face checkpoint (``from_pretrained`` loads
it; routed members with ``stats`` alignment carry their maps and load with ``hm3.load_merged``), written to a
temporary folder and renamed into place. ``out`` may not be, contain or lie inside the run or any model, task
or data file the run reads; ``force`` replaces only a model folder hm3 wrote. Exporting reads the run without
locking it (nothing is written there), after checking that its inputs are still the ones it was scored on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hm3.errors import UserError
from hm3.export import check_output_folder
from hm3.front import FrontMember, ParetoFront
from hm3.output_guard import announce_replacement, recipe_inputs
from hm3.routing.save import save_routed_model
from hm3.search.candidate import Candidate, member_candidate
from hm3.search.session import load_candidate_models
from hm3.store import FRONT_FILE, RunStore

if TYPE_CHECKING:
    from hm3.recipe import Recipe
    from hm3.search.models import CandidateModels


def find_member(front: ParetoFront, wanted: str) -> FrontMember:
    """The member whose id starts with ``wanted`` (UserError if none or several)."""
    matches = [m for m in front.members if m.id.startswith(wanted)]
    if len(matches) != 1:
        known = ", ".join(m.id for m in front.members)
        problem = "no" if not matches else "more than one"
        raise UserError(f"{problem} front member has an id starting with {wanted!r}; the front has: {known}")
    return matches[0]


def export_member(run: str | Path, wanted: str, out: str | Path, force: bool = False) -> Path:
    """Write front member ``wanted`` of ``run`` to ``out``; returns ``out``."""
    store, recipe = RunStore.resume(run, lock=False, use="export from")
    front = ParetoFront.from_json(store.read_json(FRONT_FILE))
    member = find_member(front, wanted)
    check_export_folder(run, recipe, out, force)
    candidate = member_candidate(member)
    if candidate.content_key()[:12] != member.id:
        raise UserError(f"front member {member.id}: its merge, path or alignment was edited in {FRONT_FILE}")
    models = load_candidate_models(recipe)
    title = f"hm3 front member {member.id}"
    return export_candidate(
        models, recipe, run, candidate, out, force, title, member.preference, member.scores
    )


def check_export_folder(run: str | Path, recipe: Recipe, out: str | Path, force: bool) -> None:
    """Refuse an output folder that is, holds or lies inside the run or an input (before anything loads)."""
    inputs = [("run", run), *recipe_inputs(recipe)]
    announce_replacement(check_output_folder(Path(out), force=force, expected_bytes=None, inputs=inputs))


def export_candidate(
    models: CandidateModels,
    recipe: Recipe,
    run: str | Path,
    candidate: Candidate,
    out: str | Path,
    force: bool,
    title: str,
    preference: Sequence[float],
    scores: Mapping[str, Any],
) -> Path:
    """Build ``candidate`` again from ``models`` and save it to ``out`` with a model card; returns ``out``."""
    routing = models.routing_pool(candidate.merge_spec())
    path = candidate.inference_path(routing)
    alignment = None
    if not candidate.is_plain and candidate.alignment != "none":
        aligner = models.path_scorer(routing).aligner
        assert aligner is not None
        alignment = aligner.fit(path)
    last = "the merged model" if candidate.merge is not None else "the base model"  # slot K (arch-only: base)
    sources = (
        ", ".join(f"{i} {model.name}" for i, model in enumerate(recipe.models))
        + f", {len(recipe.models)} {last}"
    )
    card = "\n".join(
        [
            f"# {title}",
            "",
            f"From run `{Path(run).resolve()}`, "
            + (f"preference λ = {list(preference)}." if preference else "scored for no single preference."),
            "",
            "- parameter merge: "
            + (
                "none (paths over the fine-tuned models and the base)"
                if candidate.merge is None
                else f"`{json.dumps(candidate.merge)}`"
            ),
            f"- inference path: {last + ' itself' if candidate.is_plain else f'{path} (model:layer; models {sources})'}",
            f"- alignment: {candidate.alignment}",
            f"- scores: `{json.dumps(scores)}`",
            "",
        ]
    )
    return save_routed_model(
        routing,
        path,
        Path(out),
        alignment=alignment,
        shard_size=recipe.output.shard_size,
        force=force,
        model_card=card,
    )
