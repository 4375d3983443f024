"""Greedy ``generate_until`` without token-by-token decoding where the answer is already known.

lm-eval scores a greedy generative task by decoding every document token by token (``HFLM.generate_until``:
batches of ``batch_size``, left-padded, until every row of the batch holds a stop sequence or
``max_gen_toks``), then cutting the decoded text at the stop sequences. For a model that answers right, the
greedy continuation is the task's target followed by a stop sequence, and one teacher-forced forward pass over
``context + target + stop`` shows it: where every position's argmax is the token fed after it, greedy decoding
produces exactly those tokens. :func:`greedy_texts` does that for all documents in one batched pass (phase 1),
then decodes only the documents whose continuation left the draft, with the model's own ``generate`` and
one row per document stopping as soon as its text is decided (phase 2).

The text lm-eval would return is decided once the greedy tokens so far hold a stop sequence that no later
token can move (:func:`decided_text`), the model emitted an end-of-sequence id (``generate`` pads the row
afterwards), or ``max_gen_toks`` tokens are out. The tokens are lm-eval's own: contexts encoded by ``HFLM``
(one document at a time, as a batch of one), texts decoded by ``HFLM.tok_decode`` and cut by lm-eval's
``postprocess_generated_text``.

Exactness: the two passes compute the same logits as lm-eval's decoding in another order (another batch
composition and padding, a full pass instead of a key/value cache), so they agree only up to float rounding.
Every greedy choice is therefore checked: if the gap between the best and second-best logit of any chosen
token is below :data:`DECISION_MARGIN` (far above the rounding differences measured on the zoo,
``benchmarks/results/eval_overhead.md``), an argmax could flip between the two orders and the caller gets
``None`` — it then runs lm-eval's own decoding for the whole objective. Only float32 models qualify.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

DECISION_MARGIN = 1e-3
"""Smallest gap between the best and the second-best logit a greedy choice may have (float32 logits); the
two computation orders differ by ~1e-6 on the zoo."""

_GREEDY_KEYS = frozenset({"until", "max_gen_toks", "do_sample", "temperature"})
_NEUTRAL_GENERATION = {
    # generation-config fields that change greedy decoding (logits processors, beams, other decoding
    # strategies, time or string stops), with the values that leave it plain
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "max_time": (None,),
    "stop_strings": (None,),
    "num_beams": (None, 1),
    "num_beam_groups": (None, 1),
    "diversity_penalty": (None, 0.0),
    "penalty_alpha": (None,),
    "dola_layers": (None,),
    "use_mtp": (None, False),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "force_words_ids": (None,),
    "constraints": (None,),
    "renormalize_logits": (None, False),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "remove_invalid_values": (None, False),
    "exponential_decay_length_penalty": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "sequence_bias": (None,),
    "token_healing": (None, False),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "prompt_lookup_num_tokens": (None,),
}
_TOKEN_BUDGET = 1 << 22
"""Most ``rows x positions x vocabulary`` logits one forward pass may hold (16 MiB of float32)."""


@dataclass(frozen=True)
class GreedyRequests:
    """One objective's greedy generation requests on one split, tokenised once.

    Attributes:
        contexts: Each document's context ids, as ``HFLM`` encodes them.
        drafts: Each document's likely greedy continuation (target + first stop sequence), as ids.
        stops: lm-eval's stop sequences, in its order (the task's ``until``, then the EOS string).
        max_gen_toks: Most tokens generated per document.
        pad_id: The tokenizer's padding id.
    """

    contexts: list[list[int]]
    drafts: list[list[int]]
    stops: list[str]
    max_gen_toks: int
    pad_id: int


def greedy_requests(lm: Any, instances: Sequence[Any], targets: Sequence[str]) -> GreedyRequests | None:
    """Tokenise ``instances`` (lm-eval ``generate_until`` requests) for :func:`greedy_texts`.

    Returns ``None`` where lm-eval's decoding is not plain greedy decoding of a causal model (sampling, beams or
    other generation options, thinking tokens, mixed precision, several generation settings, contexts that
    would be encoded differently in a batch) — the caller then keeps lm-eval's path.
    """
    if not instances or getattr(lm, "backend", None) != "causal" or lm.tokenizer.pad_token_id is None:
        return None
    if getattr(lm, "think_end_token", None) is not None or getattr(lm, "mixed_precision_dtype", None):
        return None
    if getattr(lm.tokenizer, "clean_up_tokenization_spaces", False):
        return None  # decoding more tokens may rewrite text already decoded (" ." -> ".")
    settings = [instance.args[1] for instance in instances]
    if any(setting != settings[0] for setting in settings) or any(i.repeats != 1 for i in instances):
        return None
    raw = dict(settings[0])
    if set(raw) - _GREEDY_KEYS or raw.get("do_sample") or raw.get("temperature", 0.0) != 0.0:
        return None
    kwargs = normalize_gen_kwargs(raw, lm.max_gen_toks)
    eos = lm.tok_decode(lm.eot_token_id, skip_special_tokens=False)
    stops = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
    max_gen_toks = int(kwargs.pop("max_gen_toks"))
    contexts_text = [instance.args[0] for instance in instances]
    bos = getattr(lm.tokenizer, "bos_token", None)
    if len({_starts_with(text, bos) for text in contexts_text}) > 1:
        return None  # lm-eval decides BOS handling per batch, from its first (longest) context
    limit = lm.max_length - max_gen_toks
    if limit <= 0:
        return None
    contexts = [
        lm.tok_batch_encode([text], left_truncate_len=limit, truncation=lm.truncation)[0][0].tolist()
        for text in contexts_text
    ]
    first_stop = next((stop for stop in stops if stop), "")
    drafts = [lm.tok_encode(str(target) + first_stop, add_special_tokens=False) for target in targets]
    return GreedyRequests(contexts, drafts, stops, max_gen_toks, int(lm.tokenizer.pad_token_id))


def greedy_texts(lm: Any, requests: GreedyRequests, golds: Sequence[str] | None = None) -> list[str | None]:
    """The texts lm-eval's greedy ``generate_until`` returns for ``requests`` with the model inside ``lm``.

    Args:
        golds: Each document's exact-match reference, for a plain exact-match metric (no normalisation, no
            filter). A document whose greedy text can no longer equal its reference is then decided at once,
            and its entry is the text so far, which differs from the reference (the stop guard: a broken model
            is not decoded to ``max_gen_toks``).

    Returns:
        One entry per document; ``None`` where a greedy choice was too close to call (see the module
        docstring) — lm-eval's own decoding must give that document's text. All ``None`` for a model that
        is not float32 or whose generation config changes greedy decoding.
    """
    model = lm.model
    count = len(requests.contexts)
    if next(model.parameters()).dtype != torch.float32 or not plain_greedy(model):
        return [None] * count
    rows = [_Row(requests, row, golds[row] if golds is not None else None) for row in range(count)]
    decide = _Decider(lm, requests, _eos_ids(model))
    with torch.no_grad():
        for group in _chunks(rows, requests, model.config.vocab_size):
            _follow_drafts(model, requests, group, decide)
        for group in _chunks([row for row in rows if row.open], requests, model.config.vocab_size):
            _decode(model, requests, group, decide)
    return [row.text for row in rows]


class _Row:
    """One document's greedy decoding: the tokens proven so far and, once decided, its text."""

    def __init__(self, requests: GreedyRequests, index: int, gold: str | None) -> None:
        self.context = requests.contexts[index]
        self.draft = requests.drafts[index][: requests.max_gen_toks]
        self.gold = gold
        self.tokens: list[int] = []
        self.text: str | None = None
        self.unsure = False

    @property
    def open(self) -> bool:
        return self.text is None and not self.unsure


class _Decider:
    """Whether a row's greedy tokens so far decide the text lm-eval's decoding returns."""

    def __init__(self, lm: Any, requests: GreedyRequests, eos_ids: frozenset[int]) -> None:
        self.lm, self.requests, self.eos_ids = lm, requests, eos_ids

    def __call__(self, row: _Row, tokens: list[int]) -> str | None:
        """The final text of ``row`` if its greedy tokens start with ``tokens``, else ``None`` while open."""
        text = self.lm.tok_decode(tokens)
        if (tokens and tokens[-1] in self.eos_ids) or len(tokens) >= self.requests.max_gen_toks:
            return postprocess_generated_text(text, self.requests.stops, None)  # nothing follows
        stable = _stable(text)
        decided = decided_text(stable, self.requests.stops)
        if (
            decided is None
            and row.gold is not None
            and not could_become(stable, row.gold, self.requests.stops)
        ):
            return text  # differs from the reference, as every later text would
        return decided

    def take(self, row: _Row, token: int, ties: list[int] | None) -> None:
        """Append one greedy choice to ``row``.

        Args:
            ties: ``None`` for a clear choice; else every token within :data:`DECISION_MARGIN` of the best —
                any of them could be lm-eval's choice. The row is then left to lm-eval, unless (plain exact
                match) none of them lets the text still become the reference: its score is 0 whichever it is.
        """
        if ties is not None and not self._all_wrong(row, ties):
            row.unsure = True
            return
        row.tokens.append(token)
        row.text = self(row, row.tokens)
        if ties is not None and row.text is None:
            row.text = self.lm.tok_decode(row.tokens)  # wrong whichever tie wins, and so every later text

    def _all_wrong(self, row: _Row, ties: list[int]) -> bool:
        if row.gold is None:
            return False
        for token in ties:
            if could_become(_stable(self.lm.tok_decode(row.tokens + [token])), row.gold, self.requests.stops):
                return False
        return True


def _follow_drafts(model: Any, requests: GreedyRequests, rows: list[_Row], decide: _Decider) -> None:
    """Phase 1: one teacher-forced pass over ``context + draft`` per row; keep the greedy tokens it proves."""
    logits = _forward(model, [row.context + row.draft for row in rows], requests.pad_id)
    choices = _Choices(logits)
    for position, row in enumerate(rows):
        start = len(row.context) - 1
        for step in range(min(len(row.draft) + 1, requests.max_gen_toks)):
            token, ties = choices(position, start + step)
            decide.take(row, token, ties)
            if not row.open or step >= len(row.draft) or token != row.draft[step]:
                break


def _decode(model: Any, requests: GreedyRequests, rows: list[_Row], decide: _Decider) -> None:
    """Phase 2: greedy decoding of the open rows, each row stopping once its text is decided."""
    prompts = [row.context + row.tokens for row in rows]
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(rows), width), requests.pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for position, prompt in enumerate(prompts):
        input_ids[position, width - len(prompt) :] = torch.tensor(prompt)
        attention[position, width - len(prompt) :] = 1
    device = next(model.parameters()).device
    generated = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        max_new_tokens=requests.max_gen_toks - min(len(row.tokens) for row in rows),
        do_sample=False,
        pad_token_id=requests.pad_id,
        use_cache=True,
        output_logits=True,
        return_dict_in_generate=True,
        stopping_criteria=[_DecidedRows(rows, width, decide)],
    )
    choices = _Choices(torch.stack(generated.logits, dim=1).float().cpu())  # rows x steps x vocabulary
    for position, row in enumerate(rows):
        for step in range(len(generated.logits)):
            if not row.open:
                break
            decide.take(row, *choices(position, step))
        if row.open:
            row.unsure = True  # generate stopped before the row was decided: never guessed


class _DecidedRows:
    """A ``generate`` stopping criterion: a row is done once its text is decided (its later tokens are pads)."""

    def __init__(self, rows: list[_Row], width: int, decide: _Decider) -> None:
        self.rows, self.width, self.decide = rows, width, decide

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = [
            self.decide(row, row.tokens + input_ids[position, self.width :].tolist()) is not None
            for position, row in enumerate(self.rows)
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def plain_greedy(model: Any) -> bool:
    """Whether ``generate(do_sample=False)`` on ``model`` is plain argmax decoding (its generation config
    adds no logits processor, beam or other strategy that lm-eval's decoding would pick up)."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return True
    return all(getattr(config, field, None) in neutral for field, neutral in _NEUTRAL_GENERATION.items())


def decided_text(text: str, stops: Sequence[str]) -> str | None:
    """lm-eval's cut of any generation that starts with ``text``, or ``None`` while later text could change it.

    ``postprocess_generated_text`` cuts at each stop sequence in turn. A stop found in ``text`` cuts there
    whatever follows, unless an earlier stop sequence in the order, not yet in ``text``, could still appear
    across its end and cut before it completes.
    """
    safe = len(text)  # text[:safe] survives every cut that later tokens could cause
    for stop in stops:
        if not stop:
            continue
        at = text.find(stop)
        if at < 0:
            safe = min(safe, len(text) - len(stop) + 1)
            continue
        if at + len(stop) > safe:
            return None
        return postprocess_generated_text(text[:at], stops, None)
    return None


def could_become(text: str, gold: str, stops: Sequence[str]) -> bool:
    """Whether a generation starting with ``text`` could still be cut to exactly ``gold`` (conservative)."""
    if gold.startswith(text):
        return True
    if not text.startswith(gold):
        return False
    rest = text[len(gold) :]  # a stop sequence would have to start right where gold ends
    return any(stop and (stop.startswith(rest) or rest.startswith(stop)) for stop in stops)


class _Choices:
    """The greedy choice at each position of a ``rows x positions x vocabulary`` logits tensor, and the tokens
    tied with it within :data:`DECISION_MARGIN` where the choice is not clear."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        top = torch.topk(logits, k=2, dim=-1)
        self.best = top.indices[..., 0].tolist()
        self.clear = ((top.values[..., 0] - top.values[..., 1]) >= DECISION_MARGIN).tolist()

    def __call__(self, row: int, position: int) -> tuple[int, list[int] | None]:
        if self.clear[row][position]:
            return self.best[row][position], None
        values = self.logits[row, position]
        ties = torch.nonzero(values >= values.max() - DECISION_MARGIN).flatten().tolist()
        return self.best[row][position], ties


def _forward(model: Any, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """Logits of right-padded ``sequences`` (positions past a row's end are padding, never read)."""
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention[row, : len(sequence)] = 1
    device = next(model.parameters()).device
    return model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float().cpu()


def _chunks(rows: Sequence[_Row], requests: GreedyRequests, vocabulary: int) -> list[list[_Row]]:
    """``rows`` in groups whose padded logits stay within :data:`_TOKEN_BUDGET`."""
    groups: list[list[_Row]] = []
    group: list[_Row] = []
    width = 0
    for row in rows:
        length = len(row.context) + requests.max_gen_toks + 1
        if group and (len(group) + 1) * max(width, length) * vocabulary > _TOKEN_BUDGET:
            groups.append(group)
            group, width = [], 0
        group.append(row)
        width = max(width, length)
    return groups + ([group] if group else [])


def _eos_ids(model: Any) -> frozenset[int]:
    """The ids at which ``generate`` ends a row (the model's generation config)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)


def _stable(text: str) -> str:
    """The part of a decoded text no later token can change: all but a trailing run of replacement characters
    (bytes of a character not complete yet; the ones before a complete character are final)."""
    return text.rstrip("\ufffd")


def _starts_with(text: str, prefix: str | None) -> bool:
    return bool(prefix) and text.startswith(prefix)  # type: ignore[arg-type]
