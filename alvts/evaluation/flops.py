"""Prefill FLOPs of a decoder stack from its layer shapes, for comparing token budgets (not for timing).

A layer that processes n tokens costs its projections and MLP, 2 * n * (weights), plus attention over those n
tokens: per head, 2 * n^2 * head_dim for the scores and again for the values (the n^2 convention of FastV's FLOPs
count and of torch's flop counter; a causal kernel may skip up to half). A routed layer processes the text and its
kept visual tokens; a skipped token costs nothing there.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PretrainedConfig


def layer_flops(text_config: PretrainedConfig, tokens: float) -> float:
    """FLOPs of one decoder layer over `tokens` tokens at prefill."""
    hidden, heads = text_config.hidden_size, text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or hidden // heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    weights = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * text_config.intermediate_size
    return 2 * tokens * weights + 4 * tokens**2 * heads * head_dim


def selector_flops(text_config: PretrainedConfig, tokens: float, rank: int) -> float:
    """FLOPs of a rank-`rank` selector scoring `tokens` tokens: the fused projection and the rank-space scores."""
    return 2 * tokens * text_config.hidden_size * 2 * rank + 2 * tokens**2 * rank


def prefill_flops_ratio(
    text_config: PretrainedConfig,
    text_tokens: int,
    visual_tokens: int,
    kept_per_layer: Sequence[int],
    selector_rank: int | None = None,
) -> float:
    """FLOPs of the routed decoder stack over those of the full one, for one sample: layer i processes the text and
    `kept_per_layer[i]` visual tokens; a selector (if `selector_rank`) scores all tokens at layers that drop some."""
    tokens = text_tokens + visual_tokens
    routed = sum(layer_flops(text_config, text_tokens + kept) for kept in kept_per_layer)
    if selector_rank:
        routed += sum(kept < visual_tokens for kept in kept_per_layer) * selector_flops(
            text_config, tokens, selector_rank
        )
    return routed / (layer_flops(text_config, tokens) * len(kept_per_layer))
