"""The mixture's math: LoRA experts on an FFN block, the two-level gate, the auxiliary losses.

The *gate* (the paper's "router") scores a block's experts for each token and keeps the top-k; *gating* is
that choice. Not to be confused with the FFN's ``gate_proj``, a projection of the base model that every expert
adapts, nor with :mod:`hm3.routing`, the inference-path search.

For a token with hidden state ``h`` (the FFN input) in a block with N groups of M experts::

    G_sen = W_sen · pool(h)              N scores, repeated over each group's M experts
    G_tok = W_tok · h                    N·M scores
    p     = softmax(G_sen ⊙ G_tok)       (``moe-lora``, ``hydra-lora``: softmax(G_tok))
    G     = keep the top-k of p, renormalised to sum to 1
    o     = FFN(h) + Σ_i G_i · (FFN_i(h) − FFN(h))

where ``FFN_i`` is the block's FFN with expert i's LoRA updates on its gate, up and down projections
(``hydra-lora``: every expert's update ``B_i·A`` shares one ``A`` per projection, HydraLoRA's asymmetric
structure). Because
the kept weights sum to 1 this is Σ_i G_i · FFN_i(h), and with all LoRA ``B`` matrices at zero it is the base
FFN exactly. ``pool(h)`` is the mean of the sequence's non-padding FFN inputs up to and including the token
(a causal mean: teacher-forced training and cached generation gate identically).

Each expert runs only on the tokens that kept it, and all kept (token, expert) pairs run as one batch: the
experts' LoRA matrices are concatenated along their rank, and each pair's low-rank projection is masked to its
expert's block before the up-projection, so a block costs a fixed handful of operations whatever its number of
experts (a loop over the experts costs a few milliseconds of operator overhead per expert on a CPU, most of a
toy model's training step) and the extra arithmetic is the rank's, E·r instead of r. The blocks of one model share a
:class:`GatingContext` (the forward's padding mask and the pooling state between generation steps), which
:func:`hm3.himole.model.attach_mixture` creates and feeds. Everything here is plain torch.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

GatingKind = Literal["hierarchical", "token", "single"]
"""``hierarchical``: sentence ⊙ token gate (HiMoLE); ``token``: token gate only (MoE-LoRA); ``single``:
one expert, no gate (LoRA)."""


class LoRAExpert(nn.Module):
    """LoRA updates ``scale · B·A·dropout(x)`` of an FFN's ``gate_proj``, ``up_proj`` and ``down_proj``.

    ``A`` starts Kaiming-uniform and ``B`` at zero (as peft does), so a fresh expert changes nothing.

    Args:
        hidden: Model width (input of gate/up, output of down).
        intermediate: FFN width.
        rank: LoRA rank r.
        alpha: LoRA alpha; updates are scaled by alpha / r.
        dropout: Dropout on the LoRA input.
        shared: An expert whose ``A`` matrices this one uses instead of its own (HydraLoRA: one ``A``, many
            ``B`` heads); its parameters then hold only the ``B`` matrices.
    """

    PROJECTIONS = ("gate", "up", "down")

    def __init__(
        self,
        hidden: int,
        intermediate: int,
        rank: int,
        alpha: float,
        dropout: float,
        shared: LoRAExpert | None = None,
    ) -> None:
        super().__init__()
        shapes = {
            "gate": (hidden, intermediate),
            "up": (hidden, intermediate),
            "down": (intermediate, hidden),
        }
        # a list: the shared expert is not a submodule of this one, and its A is not in this state dict
        self.shared = [] if shared is None else [shared]
        for name, (fan_in, fan_out) in shapes.items():
            if shared is None:
                self.register_parameter(f"{name}_A", nn.Parameter(torch.empty(rank, fan_in)))
            self.register_parameter(f"{name}_B", nn.Parameter(torch.zeros(fan_out, rank)))
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``A`` Kaiming-uniform (unless shared), ``B`` zero."""
        for name in self.PROJECTIONS:
            if not self.shared:
                nn.init.kaiming_uniform_(getattr(self, f"{name}_A"), a=math.sqrt(5))
            nn.init.zeros_(getattr(self, f"{name}_B"))

    def down_projection(self, name: str) -> torch.Tensor:
        """The ``A`` matrix of projection ``name``: this expert's, or the one it shares."""
        owner = self.shared[0] if self.shared else self
        return getattr(owner, f"{name}_A")

    def update(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The LoRA update of projection ``name`` (``gate``, ``up`` or ``down``) for inputs ``x`` [T, in]."""
        a, b = self.down_projection(name), getattr(self, f"{name}_B")
        return (self.dropout(x) @ a.t()) @ b.t() * self.scale


def gating_weights(
    token_logits: torch.Tensor,
    sentence_logits: torch.Tensor | None,
    experts_per_group: int,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gating weights of each token.

    Args:
        token_logits: ``G_tok`` [T, N·M].
        sentence_logits: ``G_sen`` [T, N] (the sentence scores seen by each token), or None (token-level only).
        experts_per_group: M; group g owns experts ``g·M .. g·M + M − 1``.
        top_k: Experts kept per token.

    Returns:
        ``(weights [T, k], experts [T, k], probabilities [T, N·M])``: the kept weights sum to 1 per token; the
        probabilities are the full softmax (the load-balancing loss uses them).
    """
    scores = token_logits
    if sentence_logits is not None:
        scores = token_logits * sentence_logits.repeat_interleave(experts_per_group, dim=-1)
    probabilities = torch.softmax(scores, dim=-1)
    kept, experts = probabilities.topk(top_k, dim=-1)
    weights = kept / kept.sum(dim=-1, keepdim=True)
    return weights, experts, probabilities


def causal_mean_pool(
    x: torch.Tensor,
    mask: torch.Tensor,
    prior_sum: torch.Tensor | None = None,
    prior_count: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean of the non-padding states up to each position (plus those already seen, when generating).

    Args:
        x: States [B, T, H].
        mask: 1 for real tokens, 0 for padding [B, T].
        prior_sum: Sum of the states before this call [B, H] (cached generation), or None.
        prior_count: Their count [B, 1], or None.

    Returns:
        ``(pooled [B, T, H], running sum [B, H], running count [B, 1])``; a position with no real token so far
        (left padding) pools to zeros.
    """
    weights = mask.to(x.dtype).unsqueeze(-1)
    sums = (x * weights).cumsum(dim=1)
    counts = weights.cumsum(dim=1)
    if prior_sum is not None and prior_count is not None:
        sums = sums + prior_sum.unsqueeze(1)
        counts = counts + prior_count.unsqueeze(1)
    pooled = sums / counts.clamp(min=1.0)
    return pooled, sums[:, -1], counts[:, -1]


def load_balancing_loss(
    probabilities: torch.Tensor, experts: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    """Switch-style ``E · Σ_i F_i · P_i`` over the real tokens (1 when the gating is perfectly balanced).

    Args:
        probabilities: The gate's softmax [T, E].
        experts: Kept experts [T, k].
        real: Boolean mask of non-padding tokens [T].
    """
    count = probabilities.shape[-1]
    probabilities, experts = probabilities[real], experts[real]
    if experts.numel() == 0:
        return probabilities.sum() * 0.0
    fraction = torch.bincount(experts.flatten(), minlength=count).to(probabilities.dtype) / experts.numel()
    return count * (fraction * probabilities.mean(dim=0)).sum()


def diversity_loss(group_outputs: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine similarity of the normalised group outputs over the real tokens.

    Args:
        group_outputs: Each group's weighted expert output [N, T, H] (zeros where no expert of it was kept).
        real: Boolean mask of non-padding tokens [T].
    """
    groups = group_outputs.shape[0]
    if groups < 2 or not bool(real.any()):
        return group_outputs.sum() * 0.0
    unit = F.normalize(group_outputs[:, real], dim=-1)
    first, second = torch.triu_indices(groups, groups, offset=1)
    # elementwise, not an einsum: batched over tokens, CPU bmm of N x N products costs per token in backward
    return (unit[first] * unit[second]).sum(dim=-1).mean()


class GatingContext:
    """Per-forward state shared by the mixture blocks of one model.

    Attributes:
        token_mask: 1 for real tokens, 0 for padding, of the tokens in the current forward [B, T] (None: all real).
        continues: Whether the current forward continues the sequences of the previous one (cached generation).
        collect_losses: Whether blocks in training mode compute the auxiliary losses.
        record_gating: Whether blocks keep their last gating decision (tests, analysis).
    """

    def __init__(self) -> None:
        self.token_mask: torch.Tensor | None = None
        self.continues = False
        self.collect_losses = True
        self.record_gating = False
        self._pool_state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def begin(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Read a model forward's inputs: the length of the new tokens and the 2-D attention mask."""
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask")
        length = None if tokens is None else int(tokens.shape[1])
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        past = 0
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and length is not None:
            past = int(mask.shape[1]) - length
            self.token_mask = mask[:, past:]
        else:
            self.token_mask = None
            if cache is not None and hasattr(cache, "get_seq_length"):
                past = int(cache.get_seq_length())
        self.continues = past > 0
        if not self.continues:
            self._pool_state.clear()

    def mask_for(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        """The current forward's token mask, or all ones when the forward gave none."""
        mask = self.token_mask
        if mask is None or tuple(mask.shape) != (batch, length):
            return torch.ones(batch, length, device=device)
        return mask.to(device)

    def pool(self, layer: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The causal mean of block ``layer``'s real FFN inputs up to each position (see ``causal_mean_pool``)."""
        prior = self._pool_state.get(layer) if self.continues else None
        if prior is not None and prior[0].shape[0] != x.shape[0]:
            prior = None
        pooled, total, count = causal_mean_pool(x, mask, *(prior or (None, None)))
        self._pool_state[layer] = (total.detach(), count.detach())
        return pooled


class MixtureFFN(nn.Module):
    """An FFN block (llama / qwen2 MLP: ``down(act(gate(x)) · up(x))``) with a mixture of LoRA experts.

    The base FFN is kept as it is (frozen by the caller); the experts and gates are the trainable part.

    Args:
        base: The block's original MLP module.
        groups: N.
        experts_per_group: M.
        rank, alpha, dropout: LoRA settings of every expert.
        top_k: Experts kept per token.
        gating: See :data:`GatingKind`.
        shared_a: Every expert uses the first expert's ``A`` matrices (HydraLoRA).
        context: Shared per-forward state (padding mask, pooling state) set by the model's hook.
        layer: Index of the block (the key of its pooling state).
    """

    def __init__(
        self,
        base: nn.Module,
        *,
        groups: int,
        experts_per_group: int,
        rank: int,
        alpha: float,
        dropout: float,
        top_k: int,
        gating: GatingKind,
        context: GatingContext,
        layer: int,
        shared_a: bool = False,
    ) -> None:
        super().__init__()
        self.base = base
        hidden, intermediate = base.gate_proj.in_features, base.gate_proj.out_features
        count = 1 if gating == "single" else groups * experts_per_group
        first = LoRAExpert(hidden, intermediate, rank, alpha, dropout)
        self.experts = nn.ModuleList(
            [first]
            + [
                LoRAExpert(hidden, intermediate, rank, alpha, dropout, shared=first if shared_a else None)
                for _ in range(count - 1)
            ]
        )
        self.groups = 1 if gating == "single" else groups
        self.experts_per_group = count // self.groups
        self.top_k = min(top_k, count)
        self.gating = gating
        self.token_gate = nn.Linear(hidden, count, bias=False) if gating != "single" else None
        self.sentence_gate = nn.Linear(hidden, groups, bias=False) if gating == "hierarchical" else None
        self.context = [context]  # a list: not a submodule, not in the state dict
        self.layer = layer
        self.forced_expert: int | None = None
        self.last_aux: torch.Tensor | None = None
        self.last_diversity: torch.Tensor | None = None
        self.last_gating: dict[str, torch.Tensor] | None = None

    def gates(self) -> list[nn.Module]:
        """The block's gates (none for ``single``)."""
        return [g for g in (self.token_gate, self.sentence_gate) if g is not None]

    def expert_delta(
        self,
        index: int,
        x: torch.Tensor,
        gate_out: torch.Tensor,
        up_out: torch.Tensor,
        base_out: torch.Tensor,
    ) -> torch.Tensor:
        """``FFN_i(x) − FFN(x)`` for expert ``index``, given the base ``gate_proj`` / ``up_proj`` outputs and the
        base FFN output of ``x``."""
        expert, act = self.experts[index], self.base.act_fn
        hidden = act(gate_out + expert.update("gate", x)) * (up_out + expert.update("up", x))
        return self.base.down_proj(hidden) + expert.update("down", hidden) - base_out

    def rank_mask(self, experts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """For each (token, expert) pair's expert [P], a 0/1 mask [P, E·r] of that expert's block of the
        concatenated ranks."""
        rank = self.experts[0].gate_B.shape[1]
        return F.one_hot(experts, len(self.experts)).to(dtype).repeat_interleave(rank, dim=1)

    def pair_update(self, name: str, inputs: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """The LoRA update of projection ``name`` for each (token, expert) pair: row j of ``inputs`` [P, in]
        through the expert that ``block`` [P, E·r] (:meth:`rank_mask`) marks — ``scale · B_e·A_e·dropout(x_j)``,
        computed for every pair at once with the experts' matrices concatenated along the rank (the other
        experts' projections are zeroed before the up-projection, so they add exact zeros)."""
        a = torch.cat([expert.down_projection(name) for expert in self.experts])  # [E·r, in]
        b = torch.cat([getattr(expert, f"{name}_B") for expert in self.experts], dim=1)  # [out, E·r]
        first = self.experts[0]
        projected = (first.dropout(inputs) @ a.t()) * block
        return projected @ b.t() * first.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        flat = x.reshape(-1, width)
        gate_out, up_out = self.base.gate_proj(flat), self.base.up_proj(flat)
        base_out = self.base.down_proj(self.base.act_fn(gate_out) * up_out)
        if self.gating == "single" or self.forced_expert is not None:
            index = self.forced_expert or 0
            delta = self.expert_delta(index, flat, gate_out, up_out, base_out)
            return (base_out + delta).view(batch, length, width)
        context = self.context[0]
        mask = context.mask_for(batch, length, x.device)
        sentence_logits = None
        if self.sentence_gate is not None:
            pooled = context.pool(self.layer, x, mask)
            sentence_logits = self.sentence_gate(pooled).reshape(-1, self.groups)
        weights, chosen, probabilities = gating_weights(
            self.token_gate(flat),
            sentence_logits,
            self.experts_per_group,
            self.top_k,  # type: ignore[misc]
        )
        tokens, kept = chosen.shape
        # pair j is (token j // k, its slot j % k)
        rows = torch.arange(tokens, device=x.device).repeat_interleave(kept)
        block = self.rank_mask(chosen.reshape(-1), flat.dtype)
        pairs = flat[rows]
        hidden = self.base.act_fn(gate_out[rows] + self.pair_update("gate", pairs, block)) * (
            up_out[rows] + self.pair_update("up", pairs, block)
        )
        delta = self.base.down_proj(hidden) + self.pair_update("down", hidden, block) - base_out[rows]
        weighted = (delta * weights.reshape(-1, 1)).view(tokens, kept, width)
        mixed = weighted.sum(dim=1)
        real = mask.reshape(-1).bool()
        if self.training and context.collect_losses:
            group_of = F.one_hot(chosen // self.experts_per_group, self.groups).to(flat.dtype)  # [T, k, N]
            group_outputs = (group_of.unsqueeze(-1) * weighted.unsqueeze(2)).sum(dim=1).transpose(0, 1)
            self.last_aux = load_balancing_loss(probabilities, chosen, real)
            self.last_diversity = diversity_loss(group_outputs, real)
        if context.record_gating:
            self.last_gating = {"weights": weights.detach(), "experts": chosen.detach(), "real": real}
        return (base_out + mixed).view(batch, length, width)

    def extra_repr(self) -> str:
        return f"gating={self.gating}, experts={len(self.experts)}, groups={self.groups}, top_k={self.top_k}"


def lora_parameter_count(hidden: int, intermediate: int, rank: int) -> int:
    """Parameters of one expert: r·(H + I) for each of gate, up and down."""
    return 3 * rank * (hidden + intermediate)
