"""The Pareto front a run delivers (``front.json``), and its hypervolume against reference models.

``front.json``::

    {
      "objectives": ["addition", "reversal", "sorting"],
      "higher_is_better": [true, true, true],
      "members": [                       # the non-dominated candidates, each a model a user can export
        {"id": "3f2a...", "preference": [0.5, 0.3, 0.2],
         "merge": {...},                 # the parameter-level merge spec (method, weights, density, seed)
         "path": [[0, 0], [3, 1], ...],  # the inference path, null for a plain parameter merge
         "alignment": "none",
         "scores": {"search": {"addition": 0.61, ...}, "heldout": {"addition": 0.58, ...}},
         "mergekit": "mergekit/3f2a....yml"}
      ],
      "references": [                    # what the front is compared with
        {"label": "addition", "kind": "finetuned", "scores": {...}},
        {"label": "uniform ties", "kind": "merge", "merge": {...}, "scores": {...}}
      ]
    }

Membership is decided on the search split (the only scores the search saw); the held-out scores are reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from hm3.errors import UserError
from hm3.merge.spec import MergeSpec
from hm3.moo.hypervolume import Normalization
from hm3.moo.pareto import non_dominated_mask
from hm3.moo.scalarization import oriented

Split = Literal["search", "heldout"]


@dataclass
class FrontMember:
    """One model on the front, as data (it is built again from this to be exported)."""

    id: str
    preference: list[float]
    merge: dict[str, Any] | None
    path: list[list[int]] | None
    alignment: str
    scores: dict[str, dict[str, float]]
    mergekit: str | None = None

    def vector(self, objectives: list[str], split: Split, directions: list[bool]) -> np.ndarray:
        """Scores on ``split`` in objective order, oriented so higher is better."""
        values = self.scores[split]
        return np.array([oriented(values[o], d) for o, d in zip(objectives, directions, strict=True)])


@dataclass
class Reference:
    """A model the front is compared with: a fine-tuned specialist, a uniform merge, a baseline's best."""

    label: str
    kind: str
    scores: dict[str, dict[str, float]]
    merge: dict[str, Any] | None = None

    def vector(self, objectives: list[str], split: Split, directions: list[bool]) -> np.ndarray:
        values = self.scores[split]
        return np.array([oriented(values[o], d) for o, d in zip(objectives, directions, strict=True)])


@dataclass
class ParetoFront:
    """The front of a run and the references it is compared with."""

    objectives: list[str]
    higher_is_better: list[bool]
    members: list[FrontMember]
    references: list[Reference] = field(default_factory=list)

    @classmethod
    def from_json(cls, payload: Any, source: str = "front.json") -> ParetoFront:
        """The front :meth:`to_json` wrote, its shape checked: the type of every field, finite scores and
        preference weights, merges :class:`~hm3.merge.spec.MergeSpec` takes (an edited or foreign file is a
        UserError naming the field).

        Args:
            payload: The parsed JSON.
            source: The file it came from, for messages.
        """
        problem = _front_problem(payload)
        if problem is None:
            try:
                return cls(
                    objectives=list(payload["objectives"]),
                    higher_is_better=list(payload["higher_is_better"]),
                    members=[FrontMember(**m) for m in payload["members"]],
                    references=[Reference(**r) for r in payload.get("references", [])],
                )
            except TypeError as error:  # a missing or unknown field of a member or reference
                problem = str(error)
        raise UserError(f"{source}: not an hm3 front ({problem})")

    def to_json(self) -> dict[str, Any]:
        return {
            "objectives": self.objectives,
            "higher_is_better": self.higher_is_better,
            "members": [asdict(m) for m in self.members],
            "references": [asdict(r) for r in self.references],
        }

    def member_points(self, split: Split) -> np.ndarray:
        """Member scores on ``split``, [members, objectives], higher is better."""
        rows = [m.vector(self.objectives, split, self.higher_is_better) for m in self.members]
        return np.array(rows).reshape(-1, len(self.objectives))

    def reference_points(self, split: Split) -> dict[str, np.ndarray]:
        """Reference scores on ``split`` by label, higher is better (references not scored on it left out)."""
        return {
            r.label: r.vector(self.objectives, split, self.higher_is_better)
            for r in self.references
            if split in r.scores
        }

    def compared_points(self, split: Split) -> np.ndarray:
        """Every point this front is compared on: its members and its references, [points, objectives]."""
        return np.vstack([self.member_points(split), *self.reference_points(split).values()])

    def hypervolumes(self, split: Split, normalization: Normalization | None = None) -> dict[str, Any]:
        """Hypervolume of the front and of each reference model alone, on one shared normalisation.

        Args:
            split: The scores to use.
            normalization: The bounds to use (``hm3 pareto A B``: fitted on every run compared); None: fitted
                on this front's members and references.
        """
        front = self.member_points(split)
        references = self.reference_points(split)
        if normalization is None:
            normalization = Normalization.fit(self.compared_points(split))
        return {
            "split": split,
            "front": normalization.hypervolume(front),
            "references": {label: normalization.hypervolume(p[None, :]) for label, p in references.items()},
            "normalization": normalization.to_dict(),
        }


def select_front(
    candidates: list[FrontMember], objectives: list[str], directions: list[bool]
) -> list[FrontMember]:
    """The non-dominated candidates on the search split (exact duplicates of scores collapse to the first)."""
    if not candidates:
        return []
    points = np.array([c.vector(objectives, "search", directions) for c in candidates])
    mask = non_dominated_mask(points)
    chosen: list[FrontMember] = []
    seen: list[np.ndarray] = []
    for candidate, point, keep in zip(candidates, points, mask, strict=True):
        if keep and not any(np.array_equal(point, s) for s in seen):
            chosen.append(candidate)
            seen.append(point)
    return chosen


def _front_problem(payload: Any) -> str | None:
    """What makes ``payload`` not a front :meth:`ParetoFront.to_json` could have written, or None: the type of
    every field hm3 reads is checked, every score and preference weight must be finite, and a merge must be one
    :class:`~hm3.merge.spec.MergeSpec` takes (a hand-edited file is refused here, not deep inside a report)."""
    if not isinstance(payload, dict):
        return f"a JSON {type(payload).__name__}, not an object"
    objectives, directions = payload.get("objectives"), payload.get("higher_is_better")
    if not isinstance(objectives, list) or not objectives or not all(isinstance(o, str) for o in objectives):
        return "'objectives' is not a list of names"
    if len(set(objectives)) < len(objectives):
        return "'objectives' names an objective twice"
    if not isinstance(directions, list) or len(directions) != len(objectives):
        return "'higher_is_better' does not match 'objectives'"
    if not all(isinstance(d, bool) for d in directions):
        return "'higher_is_better' is not a list of true/false"
    members, references = payload.get("members"), payload.get("references", [])
    if not isinstance(members, list) or not isinstance(references, list):
        return "'members' or 'references' is not a list"
    for i, member in enumerate(members):
        problem = _member_problem(f"members[{i}]", member, objectives)
        if problem:
            return problem
    for i, reference in enumerate(references):
        problem = _reference_problem(f"references[{i}]", reference, objectives)
        if problem:
            return problem
    return None


def _member_problem(where: str, member: Any, objectives: list[str]) -> str | None:
    """What is wrong with one entry of ``members``, or None (a missing or unknown field: the dataclass says)."""
    problem = _scores_problem(where, member, objectives, ("search", "heldout"))
    if problem:
        return problem
    identifier = member.get("id", "missing")  # missing: the dataclass names it
    if not isinstance(identifier, str) or not identifier:
        return f"{where}.id is not a non-empty string"
    preference = member.get("preference", [])
    if not isinstance(preference, list) or not all(is_finite_number(p) for p in preference):
        return f"{where}.preference is not a list of finite numbers"
    path = member.get("path")
    if path is not None and not (
        isinstance(path, list)
        and all(isinstance(s, list) and len(s) == 2 and all(_is_index(i) for i in s) for s in path)
    ):
        return f"{where}.path is not null or a list of [model, layer] pairs"
    for name in ("alignment", "mergekit"):
        value = member.get(name)
        if value is not None and not isinstance(value, str):
            return f"{where}.{name} is not a string"
    return _merge_problem(where, member.get("merge"))


def _reference_problem(where: str, reference: Any, objectives: list[str]) -> str | None:
    """What is wrong with one entry of ``references``, or None."""
    problem = _scores_problem(where, reference, objectives, ())
    if problem:
        return problem
    for name in ("label", "kind"):
        if not isinstance(reference.get(name, ""), str):
            return f"{where}.{name} is not a string"
    return _merge_problem(where, reference.get("merge"))


def _scores_problem(where: str, entry: Any, objectives: list[str], required: tuple[str, ...]) -> str | None:
    """Whether ``entry`` has a finite score for each objective on each split it names and on ``required``."""
    scores = entry.get("scores") if isinstance(entry, dict) else None
    if not isinstance(scores, dict):
        return f"{where} has no 'scores' object"
    for split in sorted({*required, *scores}):
        values = scores.get(split)
        if not isinstance(values, dict) or not all(o in values for o in objectives):
            return f"{where}.scores.{split} lacks a number for each objective"
        for objective in objectives:
            if not is_finite_number(values[objective]):
                return f"{where}.scores.{split}.{objective} is not a finite number"
    return None


def _merge_problem(where: str, merge: Any) -> str | None:
    """Whether ``merge`` is null or a merge spec hm3 can build (finite weights, a known method...)."""
    if merge is None:
        return None
    try:
        MergeSpec.from_record(merge, where)
    except UserError as error:
        return str(error)
    return None


def is_finite_number(value: Any) -> bool:
    """A finite JSON number (NaN and Infinity parse as floats; a boolean is not a score)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
