"""The search / held-out split of each objective's evaluation documents.

Every document is keyed by ``sha256(seed + canonical JSON of the document)``. The documents are sorted by that
key and the first ``round(search_fraction * n)`` go to ``search``, the rest to ``heldout`` (the *exact-count*
variant: 70% of 10 documents is always 7, never 6 or 8 by chance). Because the key depends only on a document's
content and the seed, the split does not change when the source file is reordered, and a document keeps its side
when other documents are added or removed (up to the boundary moving by one).

Identical documents get identical keys; they are kept together (same side) and ordered by their position, so
the split is still deterministic. When ``n >= 2`` both sides get at least one document.

Indices returned are positions in the task's evaluation documents, sorted ascending (file order), so that
``limit`` takes the first documents of a split in file order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

SplitName = Literal["search", "heldout", "all"]
SPLIT_NAMES: tuple[str, ...] = ("search", "heldout", "all")


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
    """

    search: tuple[int, ...]
    heldout: tuple[int, ...]

    def limited(self, split: str, limit: int | None) -> list[int]:
        """The first ``limit`` positions of ``split`` (all of them when ``limit`` is None or 0)."""
        chosen = list(self.indices(split))
        return chosen[:limit] if limit else chosen

    def indices(self, split: str) -> tuple[int, ...]:
        """Positions of ``split`` (``search``, ``heldout`` or ``all``), ascending."""
        if split == "search":
            return self.search
        if split == "heldout":
            return self.heldout
        if split == "all":
            return tuple(sorted(self.search + self.heldout))
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLIT_NAMES)}")


def split_documents(documents: Iterable[Any], search_fraction: float, seed: int) -> DocumentSplit:
    """Split documents into ``search`` and ``heldout`` by content hash (exact-count variant).

    Args:
        documents: The evaluation documents (JSON-like mappings, or ``bytes`` for binary content).
        search_fraction: Share of the documents in ``search``, in (0, 1).
        seed: Split seed (``recipe.split.seed``).

    Returns:
        The two disjoint sets of positions, covering every document.
    """
    keys = [document_key(doc, seed) for doc in documents]
    return split_by_keys(keys, search_fraction)


def split_by_keys(keys: Sequence[str], search_fraction: float) -> DocumentSplit:
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
    return DocumentSplit(search=tuple(sorted(order[:count])), heldout=tuple(sorted(order[count:])))
