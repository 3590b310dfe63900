"""Stage A of the selector fit (alvts-method.md §3.4.3): the rank-R factorisation P_q P_k^T of a layer's merged-head
bilinear form B that minimises the expected logit error over the calibration data, in closed form."""

from __future__ import annotations

import torch
from torch import nn


def merged_bilinear_form(attention: nn.Module) -> torch.Tensor:
    """`(hidden, hidden)` fp64 B with x_i^T B x_j = mean over heads h of scaling * q_h(x_i) . k_g(h)(x_j).

    Projection biases and RoPE are left out: B is the content part of the logits that a rank-space selector can
    reproduce. GQA: query head h reads key group g(h) = h // (heads / kv_heads), as `repeat_kv` does.
    """
    d = attention.head_dim
    w_q = attention.q_proj.weight.double().view(-1, d, attention.q_proj.in_features)
    w_k = attention.k_proj.weight.double().view(-1, d, attention.k_proj.in_features)
    w_k = w_k.repeat_interleave(w_q.shape[0] // w_k.shape[0], dim=0)
    return torch.einsum("hdi,hdj->ij", w_q, w_k) * attention.scaling / w_q.shape[0]


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
