"""Importance math shared by the policies and calibration: the layer's exact received-attention score (the oracle,
and the target a fitted selector reproduces), the same score in a selector's rank space, and the attention and
diversity signals the baselines rank by."""

from __future__ import annotations

import torch
from torch import nn

from ..compat import merged_rotary
from ..kernels.received_attention import (
    received_attention_reference,
    received_attention_triton,
    triton_available,
)
from ..routing.policy import LayerInputs


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply rotary embeddings `(batch, seq, head_dim)` to `(batch, heads, seq, head_dim)` as the Llama/Qwen
    attention does."""
    return rotate_pairs(x, cos.unsqueeze(1), sin.unsqueeze(1))


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (i, i + dim / 2) of x's last dimension by the angle whose cos and sin are given (broadcast)."""
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
    """log S(i) = log S_V2V(i) + log S_T2V(i) from the layer's real attention, head-averaged
    (log S_T2V(i) or log S_V2V(i) alone for score "t2v" or "v2v").

    Uses the layer's own q/k projections, RoPE, the causal mask and the padding mask; softmax over all valid keys.
    Returns `(batch, seq)` fp32 with -inf at non-visual positions.
    """
    q, k = rotated_queries_keys(attention, normed, position_embeddings)
    return received_attention_log_scores(q, k, attention.scaling, visual, valid, chunk_size, score)


def rotated_queries_keys(
    attention: nn.Module, normed: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's fp32 queries and keys `(batch, heads, seq, head_dim)` as its attention computes them (per-head
    q/k norms where the family has them, then RoPE), keys repeated per query head."""
    b, seq, _ = normed.shape
    head_dim = attention.head_dim
    cos, sin = (merged_rotary(t, attention).expand(b, -1, -1).float() for t in position_embeddings)
    q = attention.q_proj(normed).view(b, seq, -1, head_dim)
    k = attention.k_proj(normed).view(b, seq, -1, head_dim)
    if getattr(attention, "q_norm", None) is not None:  # Qwen3 decoders: per-head RMSNorm on q and k before RoPE
        q, k = attention.q_norm(q), attention.k_norm(k)
    q, k = q.transpose(1, 2).float(), k.transpose(1, 2).float()
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    return q, k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: key group g(h) for every query head h


def rank_space_rotary(
    position_embeddings: tuple[torch.Tensor, torch.Tensor], attention, frequencies: torch.Tensor, heads: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's rotary table `(cos, sin)` at a rotary selector's frequencies, laid out like its rank-space
    queries and keys: `(batch, heads, seq, rank / heads)`; in each selector head pair i = columns (i, i + half)."""
    cos, sin = (
        merged_rotary(t, attention)[..., frequencies].float().unflatten(-1, (heads, -1)) for t in position_embeddings
    )
    return tuple(torch.cat([t, t], -1).transpose(1, 2) for t in (cos, sin))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """`(batch, seq, heads * dim)` -> `(batch, heads, seq, dim)`."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def selector_queries_keys(
    normed: torch.Tensor,
    weight: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    heads: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-space queries and keys `(batch, heads, seq, rank / heads)` fp32 from one GEMM (`weight` = [P_q | P_k],
    each laid out head by head), rotated when `rotary` is given."""
    q, k = (_split_heads(t, heads) for t in (normed @ weight).float().split(weight.shape[1] // 2, dim=-1))
    if rotary is not None:
        q, k = rotate_pairs(q, *rotary), rotate_pairs(k, *rotary)
    return q, k


def received_attention_log_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | torch.Tensor,
    visual: torch.Tensor,
    valid: torch.Tensor,
    chunk_size: int = 512,
    score: str = "v2v*t2v",
) -> torch.Tensor:
    """log S_V2V + log S_T2V (score "v2v*t2v"), log S_T2V (score "t2v") or log S_V2V ("v2v") of causal softmax attention
    `softmax(scale * q k^T)`, averaged over heads.

    `q`, `k`: `(batch, heads, seq, dim)`. S_V2V(i) is the mean attention visual queries give token i, S_T2V(i) the
    mean over text queries (valid non-visual tokens). On CUDA with Triton (and no gradient to carry) a two-pass
    kernel computes the sums in O(heads * seq) extra memory; otherwise query rows go in chunks, O(heads * chunk * seq).
    Shared by the oracle (real heads) and the low-rank selector (one head in rank space). `(batch, seq)` fp32 with
    -inf at non-visual positions; means are clamped at 1e-30 before the log (S is O(1/N^2)).
    """
    queries = torch.stack([visual, valid & ~visual], dim=1).float()  # (b, 2, seq): visual queries, text queries
    if q.is_cuda and triton_available() and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)):
        received = received_attention_triton(q, k, scale, queries, valid)
    else:
        received = received_attention_reference(q, k, scale, queries, valid, chunk_size)
    v2v, t2v = (received / queries.sum(-1, keepdim=True).clamp(min=1)).unbind(1)
    log_s = sum(part.clamp(min=1e-30).log() for name, part in (("v2v", v2v), ("t2v", t2v)) if name in score)
    return log_s.masked_fill(~visual, float("-inf"))


def kept_before(scores: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Scores of the tokens that went through the previous layer; -inf for those already dropped."""
    return scores.float().masked_fill(~previous, float("-inf"))


@torch.no_grad()
def last_token_attention(inputs: LayerInputs) -> torch.Tensor:
    """`(batch, seq)` attention that each row's last valid token pays every token at this layer, head-averaged."""
    batch, seq = inputs.valid.shape
    rows = torch.arange(batch, device=inputs.valid.device)
    last = seq - 1 - inputs.valid.flip(1).int().argmax(1)
    q, k = rotated_queries_keys(inputs.attention, inputs.normed, inputs.position_embeddings)
    q = q[rows, :, last][:, :, None]  # (batch, heads, 1, head_dim)
    logits = (q @ k.transpose(-1, -2)).squeeze(2) * inputs.attention.scaling  # (batch, heads, seq)
    visible = inputs.valid & (torch.arange(seq, device=rows.device)[None] <= last[:, None])
    return torch.softmax(logits.masked_fill(~visible[:, None], float("-inf")), -1).mean(1)


def max_min_order(features: torch.Tensor) -> torch.Tensor:
    """Greedy max-min diversity order of `(n, dim)` features under cosine distance: each next token is the one
    farthest from all chosen so far (the first: farthest from the mean). Returns each token's rank, 0 = first."""
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    distance = 1 - x @ x.T
    nearest = 1 - x @ torch.nn.functional.normalize(x.mean(0), dim=0)  # to the mean, for the first pick only
    rank = torch.empty(len(x), dtype=torch.long, device=x.device)
    chosen = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for step in range(len(x)):
        pick = int(nearest.masked_fill(chosen, -1.0).argmax())
        rank[pick], chosen[pick] = step, True
        nearest = distance[pick] if step == 0 else torch.minimum(nearest, distance[pick])
    return rank
