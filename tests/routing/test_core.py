"""Unit tests of the routing core's index arithmetic, budgets and family registry."""

import pytest
import torch

import alvts
from alvts.routing import KeepSchedule, get_adapter
from alvts.routing.core import SlotLayout, rank_base, select_slots
from alvts.testing import DEFAULT_IMAGES, tiny_inputs, tiny_model


def test_select_slots_keeps_text_and_top_visual_in_order_ties_to_earlier():
    visual = torch.tensor([[False, True, True, True, True], [True, True, True, True, True]])
    valid = torch.ones_like(visual)
    scores = torch.tensor([[5.0, 1.0, 1.0, 1.0, 9.0], [0.0, 3.0, 2.0, 2.0, 1.0]])
    # row 0: its text token and 2 visual ones; row 1: 3 visual tokens
    assert select_slots(scores, visual, rank_base(valid, visual), width=3).tolist() == [[0, 1, 4], [1, 2, 3]]


def test_select_slots_fills_short_rows_with_distinct_unkept_tokens_after_the_kept_ones():
    """Row 1 keeps 2 of the 4 slots; the other two hold its next-ranked tokens (a NaN-scored visual token and a
    padding column) after its kept ones, marked invalid, so causal attention hides them and scattering every slot
    back is well defined."""
    visual = torch.tensor([[True, True, True, False], [False, True, True, False]])
    valid = torch.tensor([[True, True, True, True], [False, True, True, True]])
    scores = torch.tensor([[1.0, 2.0, 3.0, 0.0], [0.0, float("nan"), 3.0, 0.0]])
    slots = SlotLayout.build(torch.tensor([[4], [2]]), width=4, seq=4)
    idx = select_slots(scores, visual, rank_base(valid, visual), width=4, slots=slots)
    assert idx.tolist() == [[0, 1, 2, 3], [2, 3, 0, 1]]
    assert slots.valid.tolist() == [[True] * 4, [True, True, False, False]]


def test_budget_floor_and_minimum():
    schedule = KeepSchedule.build(2, keep=[1 / 9, 0.001])
    n = torch.tensor([576, 36, 0])
    assert schedule.budget(0, n).tolist() == [64, 4, 0]  # 576/9 is 64 despite floating point
    assert schedule.budget(1, n).tolist() == [1, 1, 0]  # at least one token when there is one
    assert KeepSchedule.build(1, keep_tokens=50).budget(0, n).tolist() == [50, 36, 0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(keep=0.0), r"keep must be a ratio in \(0, 1\]"),
        (dict(keep=1.5), r"keep must be a ratio in \(0, 1\]"),
        (dict(keep=[0.5, 0.5]), "keep has 2 entries but the model has 4 decoder layers"),
        (dict(keep_tokens=0), "keep_tokens must be an integer >= 1"),
        (dict(keep=0.5, keep_tokens=3), "Give exactly one budget"),
    ],
)
def test_budget_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KeepSchedule.build(4, **kwargs)


def test_adapters_find_layers_of_every_family(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    assert len(adapter.decoder_layers(model)) == 4
    assert adapter.base_model(model) is model.model
    assert get_adapter(model.model).base_model(model.model) is model.model


def test_routed_forward_equals_stock_layers_on_the_selected_tokens(family):
    """Reference semantics, computed by hand with stock layers: each layer runs on text + its selected visual
    tokens with their original rotary positions and a causal mask; skipped tokens pass through unchanged. Qwen3-VL's
    DeepStack features are then added at every visual position, skipped or not, as the stock loop does."""
    model = tiny_model(family, "eager")
    batch = tiny_inputs(model, [[DEFAULT_IMAGES[family][0]]])
    lm = model.model.language_model
    captured = {}
    hooks = [
        lm.rotary_emb.register_forward_hook(lambda m, a, o: captured.setdefault("cos_sin", o)),
        lm.register_forward_pre_hook(lambda m, a, kw: captured.setdefault("lm", kw) and None, with_kwargs=True),
    ]
    with alvts.routed(model, "oracle", keep=0.25), torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        selected = alvts.routing_state(model).selected
    for hook in hooks:
        hook.remove()
    deepstack = captured["lm"].get("deepstack_visual_embeds") or []
    assert len(deepstack) == (2 if family.startswith("qwen3_vl") else 0)  # the tiny Qwen3-VL's after layers 0 and 1
    visual = batch["input_ids"] == model.config.image_token_id
    cos, sin = captured["cos_sin"]
    h = out.hidden_states[0]
    with torch.no_grad():
        for i, layer in enumerate(lm.layers):
            idx = (~visual | selected[i])[0].nonzero().flatten()
            n = len(idx)
            causal = torch.full((n, n), float("-inf")).triu(1)[None, None]
            sub = layer(h[:, idx], attention_mask=causal, position_embeddings=(cos[..., idx, :], sin[..., idx, :]))
            h = h.clone()
            h[:, idx] = sub
            if i < len(deepstack):
                h[visual] += deepstack[i]
        logits = model.lm_head(lm.norm(h))
    assert torch.allclose(logits, out.logits, atol=1e-5, rtol=0)


def test_routed_layers_build_the_only_masks(family, monkeypatch):
    """The language model's whole-sequence mask is skipped: with eager attention (which always builds one), a routed
    forward builds one mask per layer, where the stock model builds one for all layers."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    built = []
    eager_mask = ALL_MASK_ATTENTION_FUNCTIONS["eager"]
    monkeypatch.setitem(
        ALL_MASK_ATTENTION_FUNCTIONS._global_mapping,
        "eager",
        lambda **kw: built.append(kw["kv_length"]) or eager_mask(**kw),
    )
    model = tiny_model(family, "eager")
    inputs = tiny_inputs(model, [[image] for image in DEFAULT_IMAGES[family]])
    with torch.no_grad():
        model(**inputs)
        stock, built[:] = list(built), []
        with alvts.routed(model, "random", keep=0.25):
            model(**inputs)
    assert len(stock) == 1
    assert len(built) == model.config.get_text_config().num_hidden_layers
    assert max(built) < stock[0]  # each sized to its own layer's keys
