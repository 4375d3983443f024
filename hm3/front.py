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

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

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
    def from_json(cls, payload: dict[str, Any]) -> ParetoFront:
        return cls(
            objectives=list(payload["objectives"]),
            higher_is_better=list(payload["higher_is_better"]),
            members=[FrontMember(**m) for m in payload["members"]],
            references=[Reference(**r) for r in payload.get("references", [])],
        )

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

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
        return {r.label: r.vector(self.objectives, split, self.higher_is_better) for r in self.references}

    def hypervolumes(self, split: Split) -> dict[str, Any]:
        """Hypervolume of the front and of each reference model alone, on one shared normalisation."""
        front = self.member_points(split)
        references = self.reference_points(split)
        normalization = Normalization.fit(front, *references.values())
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
