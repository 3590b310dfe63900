"""Compiled prefill: the routed model traces under torch.compile with dynamic shapes, with no graph break inside a
routed decoder layer (the one planned break is the pre-hook's host read of the layer widths), and gives the eager
logits."""

import torch
import torch._dynamo

import alvts
from alvts.testing import MIXED_IMAGES, tiny_inputs, tiny_model


def selector_for(model) -> alvts.LowRankSelector:
    hidden = model.config.get_text_config().hidden_size
    gen = torch.Generator().manual_seed(0)
    return alvts.LowRankSelector({i: torch.randn(hidden, 16, generator=gen) / hidden**0.5 for i in range(4)})


def test_no_graph_break_inside_a_routed_layer():
    model = tiny_model("llava", "sdpa")
    inputs = tiny_inputs(model, MIXED_IMAGES["llava"], seed=0)  # left padding, two budgets: masks and padded slots
    alvts.apply(model, selector_for(model), keep=0.25)
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(**inputs)
    stacks = [[frame.name for frame in reason.user_stack] for reason in explained.break_reasons]
    assert any("_plan" in stack for stack in stacks)  # the explanation sees the router (not a vacuous pass)
    inside = [stack for stack in stacks if "_layer_forward" in stack]
    assert inside == [], f"graph breaks inside a routed layer: {inside}"


def test_compiled_routed_prefill_equals_eager_at_two_lengths():
    model = tiny_model("llava", "sdpa")
    alvts.apply(model, selector_for(model), keep=0.25)
    compiled = torch.compile(model, dynamic=True, backend="aot_eager")
    torch._dynamo.reset()
    for images in (MIXED_IMAGES["llava"], MIXED_IMAGES["llava"][:1]):
        inputs = tiny_inputs(model, images, seed=1)
        with torch.no_grad():
            eager, traced = model(**inputs).logits, compiled(**inputs).logits
        valid = inputs["attention_mask"].bool()
        torch.testing.assert_close(traced[valid], eager[valid], rtol=1e-4, atol=1e-5)
