"""Attention each key receives from two groups of queries, without an (L x L) matrix: a two-pass Triton kernel.

Pass 1 computes every query row's log-sum-exp over the keys it may see (causal, valid keys), one query block per
program, streaming key blocks. Pass 2 streams query blocks past one key block per program and sums
`w[g, i] * exp(s[i, j] - lse[i])` over queries i for each group g (visual and text queries). Extra memory is the row
log-sum-exps and the per-head sums, O(heads x L), instead of the PyTorch path's O(heads x chunk x L) probabilities.
`received_attention_reference` is that PyTorch path: the CPU path, and what the kernel is tested against
(`TRITON_INTERPRET=1` runs the kernel on CPU tensors).
"""

from __future__ import annotations

import functools

import torch


def received_attention_reference(
    q: torch.Tensor, k: torch.Tensor, scale: float | torch.Tensor, weights: torch.Tensor, valid: torch.Tensor,
    chunk_size: int = 512,
) -> torch.Tensor:  # fmt: skip
    """`(batch, groups, seq)` fp32: for each key j, sum over queries i of `weights[:, g, i]` times the head-mean of
    causal softmax attention `softmax(scale * q k^T)[i, j]` over valid keys. `q`, `k`: `(batch, heads, seq, dim)`
    (k repeated per query head); `weights`: `(batch, groups, seq)`. Query rows go in chunks: memory O(heads x chunk
    x seq)."""
    b, _, seq, _ = q.shape
    key_ok = valid[:, None, None, :]
    positions = torch.arange(seq, device=q.device)
    received = torch.zeros(b, weights.shape[1], seq, dtype=torch.float32, device=q.device)
    for start in range(0, seq, chunk_size):
        stop = min(start + chunk_size, seq)
        logits = (q[:, :, start:stop] @ k.transpose(-1, -2)) * scale  # (b, heads, chunk, seq)
        allowed = (positions[None, :] <= positions[start:stop, None]) & key_ok
        # a finite fill: padding query rows (no key at all) come out uniform instead of NaN; give them weight 0
        probs = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min).softmax(-1)
        probs = probs[:, 0] if probs.shape[1] == 1 else probs.mean(1)  # (b, chunk, seq)
        received += (weights[:, :, start:stop].to(probs.dtype) @ probs).float()
    return received


@functools.cache
def triton_available() -> bool:
    """Whether Triton imports (it runs CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def row_lse(Q, K, KeyOk, Lse, Scale, L, D, H, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
        block, bh = tl.program_id(0), tl.program_id(1)
        scale = tl.load(Scale)
        rows = block * BM + tl.arange(0, BM)
        dims = tl.arange(0, BD)
        q = tl.load(Q + (bh * L + rows[:, None]) * D + dims[None, :],
                    mask=(rows[:, None] < L) & (dims[None, :] < D), other=0.0)  # fmt: skip
        best = tl.full([BM], float("-inf"), tl.float32)
        total = tl.zeros([BM], tl.float32)
        for start in range(0, (block + 1) * BM, BN):  # keys up to the block's last row
            cols = start + tl.arange(0, BN)
            k = tl.load(K + (bh * L + cols[:, None]) * D + dims[None, :],
                        mask=(cols[:, None] < L) & (dims[None, :] < D), other=0.0)  # fmt: skip
            ok = tl.load(KeyOk + (bh // H) * L + cols, mask=cols < L, other=0) != 0
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            s = tl.where((cols[None, :] <= rows[:, None]) & ok[None, :], s, float("-inf"))
            new_best = tl.maximum(best, tl.max(s, 1))
            shift = tl.where(new_best == float("-inf"), 0.0, new_best)
            total = total * tl.exp(best - shift) + tl.sum(tl.exp(s - shift[:, None]), 1)
            best = new_best
        shift = tl.where(best == float("-inf"), 0.0, best)
        lse = tl.where(
            total > 0, tl.log(tl.where(total > 0, total, 1.0)) + shift, float("inf")
        )  # no key at all: the row receives nothing
        tl.store(Lse + bh * L + rows, lse, mask=rows < L)

    @triton.jit
    def column_sums(Q, K, KeyOk, Lse, W, Out, Scale, L, D, H, BM: tl.constexpr, BN: tl.constexpr,
                    BD: tl.constexpr):  # fmt: skip
        block, bh = tl.program_id(0), tl.program_id(1)
        b = bh // H
        scale = tl.load(Scale)
        cols = block * BN + tl.arange(0, BN)
        dims = tl.arange(0, BD)
        k = tl.load(K + (bh * L + cols[:, None]) * D + dims[None, :],
                    mask=(cols[:, None] < L) & (dims[None, :] < D), other=0.0)  # fmt: skip
        ok = tl.load(KeyOk + b * L + cols, mask=cols < L, other=0) != 0
        visual_sum = tl.zeros([BN], tl.float32)
        text_sum = tl.zeros([BN], tl.float32)
        for start in range((block * BN // BM) * BM, L, BM):  # queries at or after the block's first key
            rows = start + tl.arange(0, BM)
            q = tl.load(Q + (bh * L + rows[:, None]) * D + dims[None, :],
                        mask=(rows[:, None] < L) & (dims[None, :] < D), other=0.0)  # fmt: skip
            lse = tl.load(Lse + bh * L + rows, mask=rows < L, other=float("inf"))
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            allowed = (cols[None, :] <= rows[:, None]) & ok[None, :] & (rows[:, None] < L)
            p = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)
            visual_sum += tl.sum(p * tl.load(W + (b * 2) * L + rows, mask=rows < L, other=0.0)[:, None], 0)
            text_sum += tl.sum(p * tl.load(W + (b * 2 + 1) * L + rows, mask=rows < L, other=0.0)[:, None], 0)
        tl.store(Out + (bh * 2) * L + cols, visual_sum, mask=cols < L)
        tl.store(Out + (bh * 2 + 1) * L + cols, text_sum, mask=cols < L)

    return row_lse, column_sums


def received_attention_triton(
    q: torch.Tensor, k: torch.Tensor, scale: float | torch.Tensor, weights: torch.Tensor, valid: torch.Tensor,
    block: int = 64,
) -> torch.Tensor:  # fmt: skip
    """`received_attention_reference` for two query groups, by the two-pass kernel; extra memory O(heads x seq)."""
    b, heads, seq, dim = q.shape
    if weights.shape[1] != 2:
        raise ValueError(f"the kernel sums two query groups, got {weights.shape[1]}")
    row_lse, column_sums = _kernels()
    q, k = q.float().contiguous(), k.float().contiguous()
    key_ok, weights = valid.to(torch.int8).contiguous(), weights.float().contiguous()
    scale = torch.as_tensor(scale, dtype=torch.float32, device=q.device).reshape(1)  # read on the device: no sync
    lse = torch.empty(b, heads, seq, dtype=torch.float32, device=q.device)
    sums = torch.empty(b, heads, 2, seq, dtype=torch.float32, device=q.device)
    block_dim = max(16, 1 << (dim - 1).bit_length())
    grid = (-(-seq // block), b * heads)
    row_lse[grid](q, k, key_ok, lse, scale, seq, dim, heads, BM=block, BN=block, BD=block_dim)
    column_sums[grid](q, k, key_ok, lse, weights, sums, scale, seq, dim, heads, BM=block, BN=block, BD=block_dim)
    return sums.mean(1)
