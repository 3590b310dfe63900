"""Stage A of the selector fit: the rank-R factorisation of a layer's merged-head bilinear form that minimises the
expected logit error over the calibration data, in closed form (per rotary frequency in the rotary form, per group
of heads with several selector heads); Stage B: the importance-consistency refinement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..policies.importance import received_attention_log_scores, selector_queries_keys


def merged_bilinear_form(attention: nn.Module, heads: slice = slice(None)) -> torch.Tensor:
    """`(hidden, hidden)` fp64 B with x_i^T B x_j = mean over query heads h (those in `heads`) of
    scaling * q_h(x_i) . k_g(h)(x_j).

    Projection biases and RoPE are left out: B is the content part of the logits that a rank-space selector can
    reproduce. GQA: query head h reads key group g(h) = h // (heads / kv_heads), as `repeat_kv` does.
    """
    w_q, w_k = _head_weights(attention, heads)
    return torch.einsum("hdi,hdj->ij", w_q, w_k) * attention.scaling / w_q.shape[0]


def _head_weights(attention: nn.Module, heads: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 q and k weights of the query heads in `heads`, `(heads, head_dim, hidden)`; GQA: head h reads key
    group g(h)."""
    d = attention.head_dim
    w_q = attention.q_proj.weight.double().view(-1, d, attention.q_proj.in_features)
    w_k = attention.k_proj.weight.double().view(-1, d, attention.k_proj.in_features)
    return w_q[heads], w_k.repeat_interleave(w_q.shape[0] // w_k.shape[0], dim=0)[heads]


def rotary_bilinear_forms(attention: nn.Module, heads: slice = slice(None)) -> torch.Tensor:
    """`(head_dim / 2, hidden, hidden)` complex128 M_f: the head-mean logit (over the query heads in `heads`)
    between a query x at position m and a key y at position n is sum_f Re(e^{i theta_f (m - n)} x^T M_f y), RoPE's
    rotation of frequency pair (f, f + head_dim / 2) written as a complex product. Summed over f at m = n it is
    `merged_bilinear_form`."""
    w_q, w_k = _head_weights(attention, heads)
    half = attention.head_dim // 2
    a, b = (torch.complex(w[:, :half], w[:, half:]) for w in (w_q, w_k))
    return torch.einsum("hfi,hfj->fij", a, b.conj()) * attention.scaling / w_q.shape[0]


def damp(second_moment: torch.Tensor, damping: float = 1e-4) -> torch.Tensor:
    """C + damping * tr(C) / D * I: keeps the whitening well conditioned for directions the data never visits."""
    dim = second_moment.shape[0]
    eye = torch.eye(dim, dtype=second_moment.dtype, device=second_moment.device)
    return second_moment + damping * torch.trace(second_moment) / dim * eye


def _sqrt_and_inverse_sqrt(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    evals, evecs = torch.linalg.eigh(c)
    root = evals.clamp(min=torch.finfo(c.dtype).tiny).sqrt()
    return (evecs * root) @ evecs.T, (evecs / root) @ evecs.T


def fit_low_rank_selector(
    bilinear: torch.Tensor, c_query: torch.Tensor, c_key: torch.Tensor, rank: int, damping: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage A: argmin over rank-`rank` P_q P_k^T of ||C_q^1/2 (B - P_q P_k^T) C_k^1/2||_F (Eckart-Young in whitened
    coordinates; the expected squared logit error when query and key tokens are drawn independently).

    `c_query`, `c_key`: second moments E[x x^T] of query tokens and of visual tokens (fp64, undamped).
    Returns `(P_q, P_k)`, each `(hidden, rank)` fp64, with the singular values split evenly between them.
    """
    bilinear = bilinear.double()
    sq, sq_inv = _sqrt_and_inverse_sqrt(damp(c_query.double(), damping))
    sk, sk_inv = _sqrt_and_inverse_sqrt(damp(c_key.double(), damping))
    u, s, vh = torch.linalg.svd(sq @ bilinear @ sk)
    root = s[:rank].sqrt()
    return sq_inv @ (u[:, :rank] * root), sk_inv @ (vh[:rank].T * root)


def fit_rotary_selector(
    forms: torch.Tensor, c_query: torch.Tensor, c_key: torch.Tensor, rank: int, damping: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage A of the rotary form: the whitened SVD of every frequency's form M_f (`rotary_bilinear_forms`), keeping
    the rank / 2 complex components with the largest singular values over all frequencies (the frequencies'
    cross terms average out over relative positions, so the squared errors add up per frequency).

    Returns `(P_q, P_k, frequencies)`: `(hidden, rank)` fp64 factors whose columns i and i + rank / 2 are the real
    and imaginary parts of component i, and the `(rank / 2,)` frequency index of each component."""
    if rank % 2 or rank // 2 > forms.shape[0] * forms.shape[1]:
        raise ValueError(f"a rotary selector needs an even rank of at most {2 * forms.shape[0] * forms.shape[1]}")
    sq, sq_inv = _sqrt_and_inverse_sqrt(damp(c_query.double(), damping))
    sk, sk_inv = _sqrt_and_inverse_sqrt(damp(c_key.double(), damping))
    u, s, vh = torch.linalg.svd(sq.to(forms.dtype) @ forms @ sk.to(forms.dtype))
    top = s.flatten().topk(rank // 2).indices
    frequency, component = top // s.shape[1], top % s.shape[1]
    root = s[frequency, component].sqrt()
    left = sq_inv.to(forms.dtype) @ (u[frequency, :, component] * root[:, None]).T
    right = sk_inv.to(forms.dtype) @ (vh[frequency, component].conj() * root[:, None]).T
    order = frequency.argsort(stable=True)  # components grouped by frequency: a deterministic, readable layout
    p_q, p_k = (torch.cat([m.real, m.imag], 1) for m in (left[:, order], right[:, order]))
    return p_q, p_k, frequency[order]


def fit_selector(
    attention: nn.Module, c_query: torch.Tensor, c_key: torch.Tensor, rank: int, form: str = "rotary", heads: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Stage A of a selector with `heads` selector heads: the layer's query heads split into `heads` contiguous
    groups, each group's head-mean form fitted at rank / heads (`fit_rotary_selector`, or `fit_low_rank_selector` in
    the merged form). Returns `(P_q, P_k, frequencies)` laid out selector head by selector head; frequencies is None
    in the merged form."""
    num_heads = attention.q_proj.out_features // attention.head_dim
    if num_heads % heads:
        raise ValueError(
            f"{heads} selector heads do not split the layer's {num_heads} attention heads evenly; use a divisor of "
            f"{num_heads}."
        )
    size = num_heads // heads
    parts = []
    for group in (slice(g * size, (g + 1) * size) for g in range(heads)):
        if form == "rotary":
            forms = rotary_bilinear_forms(attention, group).cpu()
            parts.append(fit_rotary_selector(forms, c_query, c_key, rank // heads))
        else:
            bilinear = merged_bilinear_form(attention, group).cpu()
            parts.append((*fit_low_rank_selector(bilinear, c_query, c_key, rank // heads), None))
    p_q, p_k, frequencies = zip(*parts, strict=True)
    return torch.cat(p_q, 1), torch.cat(p_k, 1), torch.cat(frequencies) if form == "rotary" else None


# -- Stage B: importance-consistency refinement ------------------------------------------------------------------------
RECALL_RATIOS = (1 / 3, 2 / 9, 1 / 9)


@dataclass
class LayerSample:
    """One calibration sample at one layer: input-normed states, masks and the oracle target log S*."""

    normed: torch.Tensor  # (1, seq, hidden)
    visual: torch.Tensor  # (1, seq) bool
    valid: torch.Tensor  # (1, seq) bool
    target: torch.Tensor  # (1, seq) fp32 log S*, -inf off visual tokens
    score: str = "v2v*t2v"  # the form of the target, which the selector reproduces
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None  # rotary form: `rank_space_rotary` at its frequencies
    heads: int = 1  # selector heads


def selector_log_scores(sample: LayerSample, proj: torch.Tensor, log_temp: torch.Tensor) -> torch.Tensor:
    """The selector's log S on one sample (differentiable in `proj` and `log_temp`)."""
    q, k = selector_queries_keys(sample.normed.float(), proj, sample.rotary, sample.heads)
    return received_attention_log_scores(q, k, log_temp.exp(), sample.visual, sample.valid, score=sample.score)


def layer_metrics(samples: list[LayerSample], proj: torch.Tensor, log_temp: torch.Tensor) -> dict[str, float]:
    """Held-out agreement with the oracle: recall@k at each ratio in RECALL_RATIOS, Spearman rho, L2 of normalised S."""
    out: dict[str, list[float]] = {}
    with torch.no_grad():
        for s in samples:
            pred, target = selector_log_scores(s, proj, log_temp)[s.visual], s.target[s.visual]
            n = pred.numel()
            for r in RECALL_RATIOS:
                k = max(1, int(n * r + 1e-6))
                hit = len(set(pred.topk(k).indices.tolist()) & set(target.topk(k).indices.tolist()))
                out.setdefault(f"recall@{r:.3f}", []).append(hit / k)
            ranks = torch.stack([pred.argsort().argsort(), target.argsort().argsort()]).double()
            out.setdefault("spearman", []).append(torch.corrcoef(ranks)[0, 1].item())
            out.setdefault("l2", []).append((pred.softmax(0) - target.softmax(0)).norm().item())
    return {key: sum(v) / len(v) for key, v in out.items()}


def _loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Paper MSE on sum-normalised scores (scaled by N), plus listwise KL unless kind == "mse"."""
    n = pred.numel()
    mse = ((pred.softmax(0) - target.softmax(0)) * n).pow(2).mean()
    if kind == "mse":
        return mse
    return mse + torch.sum(target.softmax(0) * (target.log_softmax(0) - pred.log_softmax(0)))


def refine_selector(
    proj: torch.Tensor,
    log_temp: torch.Tensor,
    train: list[LayerSample],
    held_out: list[LayerSample],
    steps: int = 300,
    lr: float = 1e-2,
    loss: str = "mse+kl",
    seed: int = 0,
    on_step: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage B: Adam on the selector only (model frozen), cosine decay; keeps the step with the best held-out
    recall@k at the smallest ratio (the Stage A start counts), so it never ends below Stage A."""
    gen = torch.Generator().manual_seed(seed)
    proj, log_temp = proj.detach().float().clone().requires_grad_(), log_temp.detach().float().clone().requires_grad_()
    opt = torch.optim.Adam([proj, log_temp], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    key = f"recall@{RECALL_RATIOS[-1]:.3f}"
    best = (layer_metrics(held_out, proj, log_temp)[key], proj.detach().clone(), log_temp.detach().clone())
    for step in range(steps):
        order = torch.randperm(len(train), generator=gen)[: min(16, len(train))]
        opt.zero_grad()
        batch = [train[i] for i in order.tolist()]
        total = sum(_loss(selector_log_scores(s, proj, log_temp)[s.visual], s.target[s.visual], loss) for s in batch)
        (total / len(batch)).backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step()
        if (step + 1) % 25 == 0 or step + 1 == steps:
            recall = layer_metrics(held_out, proj, log_temp)[key]
            if recall > best[0]:
                best = (recall, proj.detach().clone(), log_temp.detach().clone())
    return best[1], best[2]
