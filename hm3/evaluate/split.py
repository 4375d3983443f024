"""The search / held-out split of each objective's evaluation documents.

Every document is keyed by ``sha256(seed + canonical JSON of the document)``. The documents are sorted by that
key and the first ``round(search_fraction * n)`` go to ``search``, the rest to ``heldout`` (the *exact-count*
variant: 70% of 10 documents is always 7, never 6 or 8 by chance). Because the key depends only on a document's
content and the seed, the split does not change when the source file is reordered, and a document keeps its side
when other documents are added or removed (up to the boundary moving by one). The content is the document as
the data set loads it: a change of the data's schema (a field added in one row appears, as None, in every row;
an integer column with one float becomes a float column) changes every key and so the whole split; a resumed run
notices it, as the data file changed. Documents that differ in any field, one the task never shows included, are
keyed apart and may land on different sides.

Identical documents get identical keys; they are kept together (same side) and ordered by their position, so
the split is still deterministic. When ``n >= 2`` both sides get at least one document.

Indices returned are positions in the task's evaluation documents, sorted ascending (file order), so that
``limit`` takes the first documents of a split in file order.

The ``screen`` split is a part of ``search``: its first ``screen_fraction`` in key order (at least one document),
on which a path search scores a new path first, scoring it fully only if it looks as good as the best path
(:func:`hm3.routing.agent.training_reward`). Like the split itself it is a random subset fixed by content and
seed; with an objective's ``limit`` it is taken from the limited search documents.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

SplitName = Literal["search", "heldout", "all", "screen"]
SPLIT_NAMES: tuple[str, ...] = ("search", "heldout", "all", "screen")
SCREEN_FRACTION = 0.25
"""The default share of the search split a screened candidate is scored on first."""


def canonical_json(document: Any) -> str:
    """A document as canonical JSON: sorted keys, no spaces, non-JSON values as their ``str``."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def document_key(document: Any, seed: int) -> str:
    """The hex sha256 of the seed and the document's canonical JSON (bytes are hashed as they are)."""
    digest = hashlib.sha256(f"hm3-split:{seed}:".encode())
    digest.update(document if isinstance(document, bytes) else canonical_json(document).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class DocumentSplit:
    """Positions of the documents on each side of the split.

    Attributes:
        search: Positions scored during the search (ascending).
        heldout: Positions kept for the final models (ascending).
        search_order: The search positions in content-key order (the order ``screen`` takes them in); empty:
            file order.
        screen_fraction: The share of the search positions in ``screen``.
    """

    search: tuple[int, ...]
    heldout: tuple[int, ...]
    search_order: tuple[int, ...] = ()
    screen_fraction: float = SCREEN_FRACTION

    def limited(self, split: str, limit: int | None) -> list[int]:
        """The first ``limit`` positions of ``split`` (all of them when ``limit`` is None or 0); ``screen`` is
        taken from the limited search positions."""
        if split == "screen":
            return self._screen(self.limited("search", limit))
        chosen = list(self.indices(split))
        return chosen[:limit] if limit else chosen

    def _screen(self, search: Sequence[int]) -> list[int]:
        """The first ``screen_fraction`` of ``search`` in key order (at least one), ascending."""
        allowed = set(search)
        ordered = [p for p in self.search_order or self.search if p in allowed]
        count = min(len(ordered), max(1, round(self.screen_fraction * len(ordered))))
        return sorted(ordered[:count])

    def indices(self, split: str) -> tuple[int, ...]:
        """Positions of ``split`` (``search``, ``heldout``, ``all`` or ``screen``), ascending."""
        if split == "screen":
            return tuple(self._screen(self.search))
        if split == "search":
            return self.search
        if split == "heldout":
            return self.heldout
        if split == "all":
            return tuple(sorted(self.search + self.heldout))
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLIT_NAMES)}")


def split_documents(
    documents: Iterable[Any], search_fraction: float, seed: int, screen_fraction: float = SCREEN_FRACTION
) -> DocumentSplit:
    """Split documents into ``search`` and ``heldout`` by content hash (exact-count variant).

    Args:
        documents: The evaluation documents (JSON-like mappings, or ``bytes`` for binary content).
        search_fraction: Share of the documents in ``search``, in (0, 1).
        seed: Split seed (``recipe.split.seed``).
        screen_fraction: Share of ``search`` in ``screen``, in (0, 1).

    Returns:
        The two disjoint sets of positions, covering every document.
    """
    keys = [document_key(doc, seed) for doc in documents]
    return split_by_keys(keys, search_fraction, screen_fraction)


def split_by_keys(
    keys: Sequence[str], search_fraction: float, screen_fraction: float = SCREEN_FRACTION
) -> DocumentSplit:
    """The split for documents whose content keys are already computed (see :func:`document_key`)."""
    if not 0 < search_fraction < 1:
        raise ValueError(f"search_fraction must be in (0, 1), got {search_fraction}")
    n = len(keys)
    order = sorted(range(n), key=lambda i: (keys[i], i))
    count = round(search_fraction * n)
    if n >= 2:
        count = min(max(count, 1), n - 1)
    # identical documents share a key: move the boundary so that they stay on one side
    while 0 < count < n and keys[order[count]] == keys[order[count - 1]]:
        count += 1
    if not 0 < screen_fraction < 1:
        raise ValueError(f"screen_fraction must be in (0, 1), got {screen_fraction}")
    return DocumentSplit(
        search=tuple(sorted(order[:count])),
        heldout=tuple(sorted(order[count:])),
        search_order=tuple(order[:count]),
        screen_fraction=screen_fraction,
    )
