"""The prefill FLOPs model against torch's own count of a real decoder layer, and the routed/full ratio."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from alvts.evaluation.flops import layer_flops, prefill_flops_ratio, selector_flops
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
    kept = [90, 30, 10, 0][:layers]
    expected = sum(layer_flops(config, 10 + k) for k in kept) / (layers * layer_flops(config, 100))
    assert prefill_flops_ratio(config, 10, 90, kept) == pytest.approx(expected)
    with_selector = prefill_flops_ratio(config, 10, 90, kept, selector_rank=4)
    dropping = sum(k < 90 for k in kept)
    assert with_selector - prefill_flops_ratio(config, 10, 90, kept) == pytest.approx(
        dropping * selector_flops(config, 100, 4) / (layers * layer_flops(config, 100))
    )
