"""What is particular to the newer families: Qwen3-VL's DeepStack (added outside the layers, so skipped tokens get
it too), the MoE decoder's experts (they see only the tokens that go through the layer), and Gemma 3 (refused)."""

import pytest
import torch

import alvts
from alvts.routing import get_adapter
from alvts.routing.adapters.gemma3 import REASON
from alvts.testing import IMAGE_ID, MIXED_IMAGES, tiny_inputs, tiny_model


def test_deepstack_reaches_a_token_the_layer_skipped():
    """A visual token skipped by layer 0 enters layer 1 as it entered layer 0, plus DeepStack's layer-0 features:
    exactly what the stock loop adds to every visual position after layer 0."""
    model = tiny_model("qwen3_vl", "sdpa")
    batch = tiny_inputs(model, MIXED_IMAGES["qwen3_vl"][:1])
    lm = model.model.language_model
    captured = {}

    def record(name):
        def hook(module, args, kwargs):
            captured.setdefault(name, args[0] if args else kwargs["hidden_states"])

        return hook

    hooks = [lm.register_forward_pre_hook(lambda m, a, kw: captured.setdefault("lm", kw) and None, with_kwargs=True)]
    hooks += [lm.layers[i].register_forward_pre_hook(record(i), with_kwargs=True) for i in (0, 1)]
    with alvts.routed(model, "random", keep=0.25), torch.no_grad():
        model(**batch)
        selected = alvts.routing_state(model).selected[0][0]
    for hook in hooks:
        hook.remove()
    visual = (batch["input_ids"] == IMAGE_ID)[0]
    deepstack = captured["lm"]["deepstack_visual_embeds"][0]  # (visual tokens, hidden), in sequence order
    skipped, kept = visual & ~selected, visual & selected
    assert 0 < int(skipped.sum()) < int(visual.sum()) and deepstack.abs().sum() > 0
    entered, left = captured[0][0], captured[1][0]
    torch.testing.assert_close(left[skipped], entered[skipped] + deepstack[skipped[visual]], rtol=0, atol=1e-6)
    # a kept token is changed by the layer itself too, not only by DeepStack
    assert not torch.allclose(left[kept], entered[kept] + deepstack[kept[visual]], atol=1e-4)


def _gate_rows(model, batch, **routing) -> list[int]:
    """Rows (tokens) each decoder layer's MoE router scored in one routed forward."""
    rows = []
    layers = get_adapter(model).decoder_layers(model)
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0])) for layer in layers]
    with alvts.routed(model, **routing), torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    return rows


def test_moe_experts_see_only_text_and_kept_visual_tokens():
    model = tiny_model("qwen3_vl_moe", "sdpa")
    assert type(get_adapter(model).decoder_layers(model)[0].mlp).__name__ == "Qwen3VLMoeTextSparseMoeBlock"
    one = tiny_inputs(model, MIXED_IMAGES["qwen3_vl_moe"][:1])
    length, n_visual = one["input_ids"].shape[1], int((one["input_ids"] == IMAGE_ID).sum())  # 12x12 grid: 36
    assert n_visual == 36
    assert _gate_rows(model, one, policy="full") == [length] * 4
    # keep [1, 0.5, 0.25, 1/9]: 36, 18, 9, 4 visual tokens beside the text
    assert _gate_rows(model, one, policy="oracle", keep=[1.0, 0.5, 0.25, 1 / 9]) == [
        length - n_visual + kept for kept in (36, 18, 9, 4)
    ]
    # a left-padded batch: each layer's experts score its gathered slots, text + kept of the longest sample
    two = tiny_inputs(model, MIXED_IMAGES["qwen3_vl_moe"])
    valid, visual = two["attention_mask"].sum(1), (two["input_ids"] == IMAGE_ID).sum(1)  # 36 and 40 visual
    assert visual.tolist() == [36, 40]
    assert _gate_rows(model, two, policy="oracle", keep=0.25) == [2 * int((valid - visual + visual // 4).max())] * 4


def test_moe_router_logits_and_aux_loss_at_keep_one_equal_stock():
    model = tiny_model("qwen3_vl_moe", "sdpa")
    batch = tiny_inputs(model, MIXED_IMAGES["qwen3_vl_moe"])
    with torch.no_grad():
        stock = model(**batch, output_router_logits=True)
        with alvts.routed(model, "full"):
            routed = model(**batch, output_router_logits=True)
    assert len(routed.router_logits) == 4
    for s, r in zip(stock.router_logits, routed.router_logits, strict=True):
        valid = batch["attention_mask"].flatten().bool()  # padding rows are garbage in both
        torch.testing.assert_close(r[valid], s[valid], rtol=0, atol=1e-5)
    torch.testing.assert_close(routed.aux_loss, stock.aux_loss, rtol=0, atol=1e-5)


def test_moe_router_logits_below_keep_one_are_refused_before_any_layer_runs():
    """transformers' aux loss spreads the (batch, seq) mask over every layer's router logits; a routed layer's router
    scores only its gathered slots, so the router refuses the request up front rather than crash or miscount."""
    model = tiny_model("qwen3_vl_moe", "sdpa")
    batch = tiny_inputs(model, MIXED_IMAGES["qwen3_vl_moe"])
    ran = []
    model.model.language_model.layers[0].register_forward_pre_hook(lambda *_: ran.append(1))
    with alvts.routed(model, "oracle", keep=0.25), torch.no_grad():
        with pytest.raises(ValueError, match="output_router_logits=True with routed layers"):
            model(**batch, output_router_logits=True)
        assert ran == []
        assert torch.isfinite(model(**batch).logits).all()  # and the routed model still runs without them


def test_gemma3_is_refused_saying_why_and_left_untouched():
    model = tiny_model("gemma3", "sdpa")
    batch = tiny_inputs(model, [[None]])
    with torch.no_grad():
        before = model(**batch).logits
    with pytest.raises(ValueError, match="Gemma 3 cannot be routed exactly") as info:
        alvts.apply(model, "random", keep=0.25)
    message = str(info.value)
    assert "Gemma3ForConditionalGeneration" in message and message.endswith(REASON)
    assert "sliding-window" in message and "bidirectionally" in message
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)


def test_gemma3_attends_within_an_image_in_both_directions_and_has_sliding_layers():
    """Both reasons of the refusal hold in the stock model: changing the last image token's features changes the
    first image token's output (no causal mask does that), and some layers slide."""
    model = tiny_model("gemma3", "eager")
    assert "sliding_attention" in model.config.text_config.layer_types
    batch = tiny_inputs(model, [[None]])
    first_image = int((batch["input_ids"][0] == IMAGE_ID).nonzero()[0])

    def last_feature_changed(module, args, output):
        output = output.clone()
        output[:, -1] += 1.0
        return output

    with torch.no_grad():
        stock = model(**batch).logits
        hook = model.model.multi_modal_projector.register_forward_hook(last_feature_changed)
        changed = model(**batch).logits
        hook.remove()
    assert (stock[0, first_image] - changed[0, first_image]).abs().max() > 1e-4
    assert torch.equal(stock[0, :first_image], changed[0, :first_image])  # text before the image: causal


@pytest.mark.parametrize("family", ["qwen3_vl"])
def test_attention_importance_matches_qwen3_vl_attention(family):
    """The oracle's importance from the layer's real attention probabilities, layer by layer, from each layer's
    actual input (which includes DeepStack's additions, so `output_hidden_states` would not do)."""
    model = tiny_model(family, "eager")
    batch = tiny_inputs(model, MIXED_IMAGES[family][:1])
    lm = model.model.language_model
    inputs, rotary = {}, {}

    def record(i):
        def hook(module, args, kwargs):
            inputs[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    hooks = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(lm.layers)]
    hooks.append(lm.rotary_emb.register_forward_hook(lambda m, a, o: rotary.setdefault("cos_sin", o)))
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    for hook in hooks:
        hook.remove()
    visual, valid = batch["input_ids"] == IMAGE_ID, batch["attention_mask"].bool()
    for i, layer in enumerate(lm.layers):
        mean = out.attentions[i].mean(1)[0]  # (q, k) head-averaged probabilities
        vis, txt = visual[0], valid[0] & ~visual[0]
        expected = (mean[vis].sum(0) / vis.sum() * mean[txt].sum(0) / txt.sum())[vis].log()
        with torch.no_grad():
            ours = alvts.attention_importance(
                layer.self_attn, layer.input_layernorm(inputs[i]), rotary["cos_sin"], visual, valid
            )
        torch.testing.assert_close(ours[visual], expected, atol=1e-4, rtol=1e-4)
