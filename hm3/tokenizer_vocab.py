"""Whether models give the same ids to the same tokens, read from their ``tokenizer.json`` files.

A merge adds embedding and head rows by id: row 17 of every model is averaged into row 17 of the merge. That is
only a merge of one token's rows where every model's tokenizer gives id 17 to the same token. Tokens a model
adds past the others' vocabulary are the vocabulary rule's business (:mod:`hm3.pool`); two models that give one
id to different tokens cannot be merged row by row.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from hm3.errors import UserError

TOKENIZER_JSON = "tokenizer.json"


def token_of_id(folder: Path) -> dict[int, str] | None:
    """Id -> token of the fast tokenizer saved in ``folder`` (added tokens included); None without one."""
    file = folder / TOKENIZER_JSON
    if not file.is_file():
        return None
    try:
        vocab = Tokenizer.from_file(str(file)).get_vocab(with_added_tokens=True)
    except Exception as error:  # the tokenizers library raises its own Exception for a bad file
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{file}: not a tokenizer file the tokenizers library reads ({first})") from None
    return {index: token for token, index in vocab.items()}


def conflicting_ids(own: dict[int, str], reference: dict[int, str], rows: int) -> list[int]:
    """Ids below ``rows`` (the merged vocabulary) that the two tokenizers give to different tokens."""
    return sorted(i for i, token in own.items() if i < rows and i in reference and reference[i] != token)
