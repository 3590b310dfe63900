"""Token-selection policies: per layer, score the visual tokens; the router keeps each sample's top-k.

A policy sees a `LayerInputs` (the layer, its input hidden states and their input-normed form, which tokens are
visual and valid, the rotary cos/sin) and returns a `(batch, seq)` float score; higher means "goes through".
Budgets, top-k and gather/scatter belong to the router, so a fitted selector plugs in as one more policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn


@dataclass
class LayerInputs:
    """What a policy may look at when one decoder layer routes its tokens."""

    layer_idx: int
    layer: nn.Module
    attention: nn.Module  # the layer's self-attention (q_proj, k_proj, head_dim, scaling)
    norm: nn.Module  # the layer's input norm
    hidden_states: torch.Tensor  # (batch, seq, hidden) residual stream entering the layer
    visual: torch.Tensor  # (batch, seq) bool: valid visual tokens of this call
    valid: torch.Tensor  # (batch, seq) bool: not padding
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (batch, seq, head_dim)
    previous: torch.Tensor | None = None  # (batch, seq) bool: visual tokens that went through the previous layer
    previous_hidden: torch.Tensor | None = None  # the previous layer's input, for policies that ask for it
    _normed: torch.Tensor | None = field(default=None, repr=False)

    @property
    def normed(self) -> torch.Tensor:
        """`input_norm(hidden_states)`: exactly what the layer's q/k projections read. Computed once, on demand."""
        if self._normed is None:
            self._normed = self.norm(self.hidden_states)
        return self._normed


class Policy:
    """Base class: subclasses set `name` and implement `scores`; schedules other than "keep at every layer" override
    `layer_keeps`."""

    name: ClassVar[str] = "policy"
    default_keep: ClassVar[float | None] = None  # used when `alvts.apply` gets no budget
    needs_previous_hidden: ClassVar[bool] = False  # the router then keeps each layer's input for the next layer

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        """`(batch, seq)` float scores; only the entries at visual tokens are read."""
        raise NotImplementedError

    def layer_keeps(self, keep: float, num_layers: int) -> tuple[float, ...]:
        """Per-layer keep ratios averaging `keep` (budgets compare visual tokens processed per layer)."""
        return (keep,) * num_layers

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FullPolicy(Policy):
    """Every visual token goes through every layer: the stock model (parity reference)."""

    name = "full"
    default_keep = 1.0

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        return inputs.visual.float()


class RandomPolicy(Policy):
    """Uniformly random visual tokens per layer; reproducible for a given seed, layer and input shape."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        device = inputs.hidden_states.device
        gen = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + inputs.layer_idx)
        return torch.rand(inputs.visual.shape, generator=gen, device=device)

    def __repr__(self) -> str:
        return f"RandomPolicy(seed={self.seed})"


class OraclePolicy(Policy):
    """Exact attention importance of the layer itself: what a fitted selector emulates (an upper bound)."""

    name = "oracle"

    def __init__(self, chunk_size: int = 512, score: str = "v2v*t2v"):
        check_score(score)
        self.chunk_size, self.score = chunk_size, score

    def scores(self, inputs: LayerInputs) -> torch.Tensor:
        return attention_importance(
            inputs.attention,
            inputs.normed,
            inputs.position_embeddings,
            inputs.visual,
            inputs.valid,
            self.chunk_size,
            self.score,
        )


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply rotary embeddings to `(batch, heads, seq, head_dim)` as the Llama/Qwen attention does."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@torch.no_grad()
def attention_importance(
    attention: nn.Module,
    normed: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    visual: torch.Tensor,
    valid: torch.Tensor,
    chunk_size: int = 512,
    score: str = "v2v*t2v",
) -> torch.Tensor:
    """log S(i) = log S_V2V(i) + log S_T2V(i) from the layer's real attention (alvts-method.md §3.1), head-averaged
    (log S_T2V(i) alone for score "t2v").

    Uses the layer's own q/k projections, RoPE, the causal mask and the padding mask; softmax over all valid keys.
    Returns `(batch, seq)` fp32 with -inf at non-visual positions.
    """
    q, k = rotated_queries_keys(attention, normed, position_embeddings)
    return received_attention_log_scores(q, k, attention.scaling, visual, valid, chunk_size, score)


def rotated_queries_keys(
    attention: nn.Module, normed: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's fp32 queries and keys `(batch, heads, seq, head_dim)` with RoPE, keys repeated per query head."""
    b, seq, _ = normed.shape
    head_dim = attention.head_dim
    cos, sin = (t.expand(b, -1, -1).float() for t in position_embeddings)
    q = attention.q_proj(normed).view(b, seq, -1, head_dim).transpose(1, 2).float()
    k = attention.k_proj(normed).view(b, seq, -1, head_dim).transpose(1, 2).float()
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    return q, k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: key group g(h) for every query head h


def received_attention_log_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | torch.Tensor,
    visual: torch.Tensor,
    valid: torch.Tensor,
    chunk_size: int = 512,
    score: str = "v2v*t2v",
) -> torch.Tensor:
    """log S_V2V + log S_T2V (score "v2v*t2v") or log S_T2V (score "t2v") of causal softmax attention
    `softmax(scale * q k^T)`, averaged over heads.

    `q`, `k`: `(batch, heads, seq, dim)`. S_V2V(i) is the mean attention visual queries give token i, S_T2V(i) the
    mean over text queries (valid non-visual tokens). Query rows go in chunks, so memory is O(heads * chunk * seq).
    Shared by the oracle (real heads) and the low-rank selector (one head in rank space). `(batch, seq)` fp32 with
    -inf at non-visual positions; means are clamped at 1e-30 before the log (S is O(1/N^2)).
    """
    b, seq = visual.shape
    queries = torch.stack([visual, valid & ~visual], dim=1)  # (b, 2, seq): visual queries, text queries
    key_ok = valid[:, None, None, :]
    positions = torch.arange(seq, device=q.device)
    received = torch.zeros(b, 2, seq, dtype=torch.float32, device=q.device)
    for start in range(0, seq, chunk_size):
        stop = min(start + chunk_size, seq)
        logits = (q[:, :, start:stop] @ k.transpose(-1, -2)) * scale  # (b, heads, chunk, seq)
        allowed = (positions[None, :] <= positions[start:stop, None]) & key_ok
        # a finite fill: padding query rows (no key at all) come out uniform instead of NaN, and get weight 0 below
        probs = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min).softmax(-1)
        probs = probs[:, 0] if probs.shape[1] == 1 else probs.mean(1)  # (b, chunk, seq)
        received += (queries[:, :, start:stop].to(probs.dtype) @ probs).float()  # one pass: both query groups
    v2v, t2v = (received / queries.sum(-1, keepdim=True).clamp(min=1)).unbind(1)
    log_s = t2v.clamp(min=1e-30).log()
    if score == "v2v*t2v":
        log_s = log_s + v2v.clamp(min=1e-30).log()
    return log_s.masked_fill(~visual, float("-inf"))


SCORES = ("v2v*t2v", "t2v")  # the method's product, and the text-to-visual term alone (an ablation)


def check_score(score: str) -> None:
    """Raise ValueError naming the valid score forms when score is not one of SCORES."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; valid scores: {', '.join(SCORES)}")


POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (FullPolicy, RandomPolicy, OraclePolicy)}


def get_policy(policy: Policy | str) -> Policy:
    """A policy object from itself or its name; a clear error for anything else (packs: see `alvts.apply`)."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str) and policy in POLICIES:
        return POLICIES[policy]()
    raise ValueError(
        f"Unknown policy {policy!r}. Use one of the names {sorted(POLICIES)}, a `alvts.Policy` instance, a "
        "SelectorPack, or the path / Hub id of a selector pack."
    )
