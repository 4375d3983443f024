"""``tokenizer_source`` of a mergekit configuration: the merged model's vocabulary, and each model's embedding
and head rows re-indexed to it, as mergekit does (``mergekit.tokenizer.build`` and ``.embed``).

The output vocabulary is the base model's tokenizer (``tokenizer_source: base``) or one model folder's
(``tokenizer_source: /models/chat``); tokens are matched by their text. Before merging, each model's rows
are put at the output ids of its tokens; a token a model lacks gets, in that model, the row of the one model
that has it, else the base model's row (when the base is among the tensor's inputs and has the token), else
the average of the rows of the models that have it, else zeros. Merging those rows then keeps the base's
rows for tokens only the base knows (a ``linear`` merge of identical rows, a zero task vector). The merged
model has exactly as many rows as the output vocabulary has tokens, and its ``vocab_size`` says so.

Refused, with the reason: ``union`` (it builds a new tokenizer), ``base`` without ``base_model``, a model
whose tokenizer does not load (mergekit would silently assume the base's vocabulary), a base tokenizer with
ids beyond its model's ``vocab_size`` (mergekit strips those), a token whose id lies beyond its model's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hm3.checkpoint import Checkpoint
from hm3.errors import UserError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Vocabulary:
    """The output vocabulary and, for each referenced model, where its rows go.

    Attributes:
        tokenizer_folder: The folder whose tokenizer the merged model gets.
        size: Tokens in the output vocabulary (rows of the merged embeddings and head).
        rows: Per plan model index: for each output token id, the model's row of that token (-1: the model
            lacks it); None for a model no slice reads.
    """

    tokenizer_folder: Path
    size: int
    rows: tuple[np.ndarray | None, ...]

    def is_identity(self, index: int, stored_rows: int) -> bool:
        """Whether model ``index``'s tensor of ``stored_rows`` rows is already in output order."""
        rows = self.rows[index]
        return rows is not None and stored_rows == self.size and bool((rows == np.arange(self.size)).all())


@dataclass(frozen=True)
class VocabularyGroup:
    """The inputs of one vocabulary tensor, as mergekit's alignment sees them.

    Attributes:
        models: Plan model indices, in the slice's source order (the base included).
        base: The slice's base model, when it is among them.
    """

    models: tuple[int, ...]
    base: int | None


def read_vocabulary(
    source: str,
    base: int | None,
    referenced: Sequence[int],
    checkpoints: Sequence[Checkpoint],
    source_folder: Path,
) -> Vocabulary:
    """The output vocabulary of ``tokenizer_source`` and every referenced model's rows in it.

    Args:
        source: ``base`` or a model reference (already resolved to ``source_folder``).
        base: Index of ``base_model`` among ``checkpoints``, or None.
        referenced: Indices of the models the slices read.
        checkpoints: Every model of the plan, by index.
        source_folder: The folder of the tokenizer the merged model gets.

    Raises:
        UserError: see the module docstring.
    """
    if source == "base" and base is None:
        raise UserError(
            "tokenizer_source: base needs base_model (mergekit would take an arbitrary model's tokenizer)"
        )
    vocabularies = {index: _tokens(checkpoints[index]) for index in referenced}
    if base is not None:
        vocabularies.setdefault(base, _tokens(checkpoints[base]))  # mergekit reads it even when unmerged
        limit = _vocab_size(checkpoints[base], vocabularies[base])
        beyond = sorted(token for token, i in vocabularies[base].items() if i >= limit)
        if beyond:
            raise UserError(
                f"tokenizer_source: the tokenizer of base model {checkpoints[base].name} has {len(beyond)} "
                f"token(s) with ids beyond its vocab_size {limit} (e.g. {beyond[0]!r}); mergekit strips them "
                "from the merged tokenizer, hm3 does not: use a tokenizer without them"
            )
    output = vocabularies[base] if source == "base" else _tokens_of_folder(source_folder, source)  # type: ignore[index]
    if sorted(output.values()) != list(range(len(output))):
        raise UserError(f"tokenizer_source: the ids of {source}'s tokenizer are not 0..{len(output) - 1}")
    rows: list[np.ndarray | None] = [None] * len(checkpoints)
    for index, vocabulary in vocabularies.items():
        checkpoint = checkpoints[index]
        limit = _vocab_size(checkpoint, vocabulary)
        placed = np.full(len(output), -1, dtype=np.int64)
        for token, new_id in output.items():
            old_id = vocabulary.get(token)
            if old_id is None:
                continue
            if old_id >= limit:
                raise UserError(
                    f"tokenizer_source: model {checkpoint.name}: token {token!r} has id {old_id}, beyond its "
                    f"vocab_size {limit} (mergekit fails on it)"
                )
            placed[new_id] = old_id
        rows[index] = placed
    return Vocabulary(source_folder, len(output), tuple(rows))


def _tokens(checkpoint: Checkpoint) -> dict[str, int]:
    return _tokens_of_folder(checkpoint.folder, f"model {checkpoint.name}")


def _tokens_of_folder(folder: Path, name: str) -> dict[str, int]:
    """Token text -> id of the tokenizer in ``folder``, loaded as mergekit loads it (a fast tokenizer)."""
    # not at the top: only a config with tokenizer_source needs it (a seconds-long import, torch included),
    # and a fused mergekit run never imports torch (hm3.merge.mergekit_run)
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    except Exception as error:  # (transformers raises OSError, ValueError, KeyError... for a missing one)
        raise UserError(
            f"tokenizer_source: {name} has no tokenizer hm3 can load ({type(error).__name__}); mergekit would "
            "assume the base's vocabulary for it: put the tokenizer in its folder"
        ) from None
    return dict(tokenizer.get_vocab())


def _vocab_size(checkpoint: Checkpoint, vocabulary: dict[str, int]) -> int:
    value = checkpoint.config.get("vocab_size")
    return int(value) if isinstance(value, int) else len(vocabulary)


def check_rows(
    vocabulary: Vocabulary, index: int, checkpoint: Checkpoint, tensor_name: str, stored_rows: int
) -> None:
    """Refuse a vocabulary tensor with fewer rows than its tokenizer's ids need.

    Raises:
        UserError: a token's id is beyond the tensor's rows.
    """
    rows = vocabulary.rows[index]
    if rows is not None and rows.size and int(rows.max()) >= stored_rows:
        raise UserError(
            f"model {checkpoint.name}: tensor {tensor_name} has {stored_rows} rows, but its tokenizer has "
            f"id {int(rows.max())}"
        )


def aligned(
    tensors: Sequence[torch.Tensor], group: VocabularyGroup, vocabulary: Vocabulary
) -> list[torch.Tensor]:
    """Each of ``tensors`` (one per model of ``group``, same dtype) with its rows at the output token ids,
    the rows a model lacks filled as the module docstring says (mergekit's ``PermutedVocabulary``)."""
    # not at the top: a fused mergekit run never imports torch (hm3.merge.mergekit_run)
    import torch

    positions = [torch.from_numpy(vocabulary.rows[index]) for index in group.models]  # type: ignore[arg-type]
    present = torch.stack([p >= 0 for p in positions])
    count = present.sum(0)
    gathered = [t.index_select(0, p.clamp(min=0)) for t, p in zip(tensors, positions, strict=True)]
    missing = count < len(positions)
    if not bool(missing.any()):
        return gathered
    default = torch.zeros_like(gathered[0])
    for k, rows in enumerate(gathered):
        sole = missing & (count == 1) & present[k]
        default[sole] = rows[sole]
    shared = missing & (count >= 2)
    if group.base is not None:
        b = group.models.index(group.base)
        from_base = shared & present[b]
        default[from_base] = gathered[b][from_base]
        shared &= ~present[b]
    if bool(shared.any()):
        total = torch.zeros_like(default)
        for k, rows in enumerate(gathered):
            owned = shared & present[k]
            total[owned] = total[owned] + rows[owned]  # mergekit: zeros, plus each owner's row in order
        for owners in count[shared].unique().tolist():
            chosen = shared & (count == owners)
            default[chosen] = total[chosen] / owners
    for k, rows in enumerate(gathered):
        rows[~present[k]] = default[~present[k]]
    return gathered
