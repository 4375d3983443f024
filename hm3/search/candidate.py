"""One candidate of a search: what it is, its key, and how it is written to and read from the run's log.

Every method (HM3, its ablations, the baselines), the front, ``hm3 export`` and ``--resume`` describe a
candidate with this one value, so that the same model has the same key wherever it is built:

* a **fine-tuned model** — ``Candidate.finetuned_model("addition")``;
* a **parameter merge** run as itself — ``Candidate(merge=spec_data)`` (``path`` None);
* an **inference path** over the K fine-tuned models and a merge (slot K) — ``Candidate(merge, path,
  alignment)``; ``merge`` None puts the base model in slot K (the architecture-only pool).

:meth:`Candidate.routed` is the one way a path becomes a candidate: the identity path over slot K is the plain
merge (``path`` None, alignment ``none`` — no seam to align), whoever built it. The key of a score
(:meth:`Candidate.key`) hashes the candidate, the split, the objectives and the run's scoring fingerprint
(:mod:`hm3.run_fingerprint`); the front's member id is the first 12 hex digits of the candidate's own hash
(:meth:`Candidate.content_key`), the same on every split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hm3.evaluate.cache import candidate_key
from hm3.front import FrontMember
from hm3.merge.spec import MergeSpec
from hm3.routing.path import InferencePath
from hm3.routing.pool import RoutingPool

LEVELS = ("finetuned", "reference", "merge", "path")
"""What a logged candidate was scored for: a fine-tuned model or a reference merge (scored for every method
alike, never charged to a budget), the upper level's merges and the lower level's paths (charged)."""
SEARCHED_LEVELS = ("merge", "path")


@dataclass(frozen=True, eq=False)
class Candidate:
    """A model the search can score, as data.

    Attributes:
        merge: The parameter merge (:class:`~hm3.merge.spec.MergeSpec` as JSON data), or None (slot K holds
            the base model).
        path: The inference path's steps over models 0..K, or None: slot K's model itself.
        alignment: ``none`` or ``stats`` (fitted at every seam of a routed path).
        finetuned: A fine-tuned model's name (then the other fields are unused).
    """

    merge: Mapping[str, Any] | None = None
    path: tuple[tuple[int, int], ...] | None = None
    alignment: str = "none"
    finetuned: str | None = None

    @classmethod
    def finetuned_model(cls, name: str) -> Candidate:
        return cls(finetuned=name)

    @classmethod
    def of_merge(cls, spec: MergeSpec | Mapping[str, Any] | None) -> Candidate:
        """The plain merge ``spec`` (None: the base model)."""
        return cls(merge=_merge_data(spec))

    @classmethod
    def routed(
        cls,
        spec: MergeSpec | Mapping[str, Any] | None,
        path: InferencePath | Sequence[Sequence[int]] | None,
        alignment: str,
        pool: RoutingPool,
    ) -> Candidate:
        """The path ``path`` over ``pool`` (the K models and ``spec``'s merge); the identity path over slot K,
        or None, is the plain merge."""
        if path is None:
            return cls.of_merge(spec)
        steps = path if isinstance(path, InferencePath) else InferencePath.from_data(path)
        if steps == InferencePath.identity(pool.merged_index, pool.num_layers):
            return cls.of_merge(spec)
        return cls(merge=_merge_data(spec), path=steps.steps, alignment=alignment)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Candidate:
        """The candidate of a ``candidates.jsonl`` record or a front member's data."""
        if record.get("finetuned") is not None:
            return cls.finetuned_model(str(record["finetuned"]))
        path = record.get("path")
        return cls(
            merge=record.get("merge"),
            path=None if path is None else tuple((int(m), int(layer)) for m, layer in path),
            alignment=str(record.get("alignment") or "none"),
        )

    @property
    def is_plain(self) -> bool:
        """A plain merge (or the base model): no path of its own."""
        return self.finetuned is None and self.path is None

    def inference_path(self, pool: RoutingPool) -> InferencePath:
        """The path the candidate runs over ``pool`` (the identity over slot K for a plain merge)."""
        if self.path is None:
            return InferencePath.identity(pool.merged_index, pool.num_layers)
        return InferencePath(self.path)

    def merge_spec(self) -> MergeSpec | None:
        """The merge as a :class:`MergeSpec` (None for the base model's slot)."""
        if self.merge is None:
            return None
        return MergeSpec.from_record(dict(self.merge), "a merge in the run's candidates.jsonl or front.json")

    def data(self) -> dict[str, Any]:
        """The candidate as JSON data (what its hashes are taken over, and what the log records); the merge's
        keys in sorted order, so that a candidate built now and one read back from the log write the same
        front."""
        if self.finetuned is not None:
            return {"finetuned": self.finetuned}
        return {
            "merge": None if self.merge is None else dict(sorted(self.merge.items())),
            "path": None if self.path is None else [list(step) for step in self.path],
            "alignment": self.alignment,
        }

    def content_key(self) -> str:
        """sha256 of the candidate alone (the front member id is its first 12 digits)."""
        return candidate_key(self.data())

    def key(self, split: str, objectives: Sequence[str], scoring: str) -> str:
        """The key of the candidate's scores on ``split`` for ``objectives`` under the run's ``scoring``."""
        return candidate_key(
            {**self.data(), "split": split, "objectives": list(objectives), "scoring": scoring}
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Candidate) and self.content_key() == other.content_key()

    def __hash__(self) -> int:
        return hash(self.content_key())


def member_candidate(member: FrontMember) -> Candidate:
    """The candidate a front member is (built again from its data)."""
    return Candidate.from_record({"merge": member.merge, "path": member.path, "alignment": member.alignment})


def _merge_data(spec: MergeSpec | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    if isinstance(spec, MergeSpec):
        return spec.model_dump(mode="json")
    return dict(spec)
