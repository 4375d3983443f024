"""The zoo's tokenizer: one token per byte (so one per ASCII character), loadable by ``AutoTokenizer``.

The vocabulary is three special tokens followed by the 256 byte symbols of GPT-2's byte-level alphabet
(``"Ġ"`` for space, ``"Ċ"`` for newline, printable ASCII as itself), with no merges. Storing the symbols in
byte-level form is what makes the tokenizer survive transformers 5's ``AutoTokenizer``: for a ``qwen2``
folder it instantiates ``Qwen2Tokenizer`` whatever ``tokenizer_config.json`` says, and that class rebuilds
the pre-tokenizer as a byte-level one; a plain character vocabulary (a literal ``" "`` token) would then
silently lose every space and newline. With byte-level symbols both the llama path (``TokenizersBackend``)
and the qwen2 path (``Qwen2Tokenizer``) encode text identically: token id = byte value + 3.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, str, str] = ("<pad>", "<s>", "</s>")
"""Padding, beginning and end of sequence; ids 0, 1 and 2."""

VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


def encode_bytes(text: str) -> list[int]:
    """The token ids :func:`build_tokenizer` gives ``text`` (no special tokens): each UTF-8 byte + 3."""
    offset = len(SPECIAL_TOKENS)
    return [byte + offset for byte in text.encode()]


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte value 0..255 (``bytes_to_unicode``), in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbol = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbol:
            symbol[b] = chr(256 + extra)
            extra += 1
    return [symbol[b] for b in range(256)]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level (character-level for ASCII) tokenizer with no merges and no automatic special tokens.

    Returns:
        A ``PreTrainedTokenizerFast``; ``encode("12+3=")`` gives one id per character and adds no BOS/EOS,
        so training text and lm-eval prompts tokenize the same way.
    """
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *byte_symbols()])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    pad, bos, eos = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        model_max_length=64,
        padding_side="left",
    )
