"""The prefill FLOPs model against torch's own count of a real decoder layer, and the routed/full ratio."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from alvts.evaluation.flops import layer_flops, prefill_flops_ratio
from alvts.testing import tiny_model


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_layer_flops_match_torch_flop_counter_on_a_real_layer(family):
    model = tiny_model(family, "eager")
    text_config = model.config.get_text_config()
    language_model = model.model.language_model
    layer, tokens = language_model.layers[0], 37
    hidden = torch.randn(1, tokens, text_config.hidden_size)
    positions = torch.arange(tokens)[None]
    if family == "qwen2_5_vl":
        positions = positions.expand(3, 1, -1)
    rotary = language_model.rotary_emb(hidden, positions)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(hidden, attention_mask=None, position_embeddings=rotary, position_ids=positions)
    assert layer_flops(text_config, tokens) == counter.get_total_flops()


def test_ratio_is_one_at_full_budget_and_counts_each_layer_s_tokens():
    config = tiny_model("llava").config.get_text_config()
    layers = config.num_hidden_layers
    assert prefill_flops_ratio(config, 10, 90, [90] * layers) == 1.0

    # The tiny decoder by hand: hidden 64, 4 heads of 16 over 2 KV heads, MLP 128. Weights per layer
    # 64 * 16 * (2 * 4 + 2 * 2) + 3 * 64 * 128 = 36864, so a layer over t tokens costs 2 * 36864 * t + 4 * 64 * t^2.
    def by_hand(t):
        return 73728 * t + 256 * t * t

    assert (layers, by_hand(100)) == (4, 9_932_800)
    kept = [90, 30, 10, 0]  # text 10 + kept: 100, 40, 20 and 10 tokens through the four layers
    assert by_hand(100) + by_hand(40) + by_hand(20) + by_hand(10) == 15_631_360
    assert prefill_flops_ratio(config, 10, 90, kept) == pytest.approx(15_631_360 / (4 * 9_932_800))
    # a rank-4 selector scores all 100 tokens at the three layers that drop: 2 * 100 * 64 * 8 + 2 * 100^2 * 4 each
    with_selector = prefill_flops_ratio(config, 10, 90, kept, selector_rank=4)
    assert with_selector - prefill_flops_ratio(config, 10, 90, kept) == pytest.approx(3 * 182_400 / (4 * by_hand(100)))
