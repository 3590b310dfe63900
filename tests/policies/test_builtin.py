"""Policies: the oracle is the real attention importance; policies plug into the router by name or object."""

import pytest
import torch

import alvts
from alvts import RandomPolicy, attention_importance, get_policy
from alvts.testing import tiny_inputs, tiny_model


def _scores_from_attention_probs(probs, visual, valid, score):
    """S = S_V2V * S_T2V (or S_T2V) from recorded (batch, heads, q, k) attention probabilities, from the definition."""
    mean = probs.mean(1)[0]
    vis, txt = visual[0], valid[0] & ~visual[0]
    s_v2v = mean[vis].sum(0) / vis.sum()
    s_t2v = mean[txt].sum(0) / txt.sum()
    return {"t2v": s_t2v, "v2v": s_v2v, "v2v*t2v": s_v2v * s_t2v}[score][vis].log()


@pytest.mark.parametrize("score", ["v2v*t2v", "t2v", "v2v"])
@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_attention_importance_matches_the_models_own_attention(family, score):
    model = tiny_model(family, "eager")
    batch = tiny_inputs(model, [[(1, 12, 12) if family == "qwen2_5_vl" else None]])
    with torch.no_grad():
        out = model(**batch, output_attentions=True, output_hidden_states=True)
    lm = model.model.language_model
    visual = batch["input_ids"] == model.config.image_token_id
    valid = batch["attention_mask"].bool()
    captured = {}
    hook = lm.rotary_emb.register_forward_hook(lambda m, a, o: captured.setdefault("cos_sin", o))
    with torch.no_grad():
        model(**batch)
    hook.remove()
    for i, layer in enumerate(lm.layers):
        with torch.no_grad():
            ours = attention_importance(
                layer.self_attn,
                layer.input_layernorm(out.hidden_states[i]),
                captured["cos_sin"],
                visual,
                valid,
                score=score,
            )
        expected = _scores_from_attention_probs(out.attentions[i], visual, valid, score)
        assert torch.allclose(ours[visual], expected, atol=1e-4, rtol=1e-4)
        assert torch.isinf(ours[~visual]).all()


def test_oracle_selects_different_tokens_in_different_layers():
    model = tiny_model("llava_next", "sdpa")
    # Random init gives near-uniform attention, whose importance is purely positional (early visual tokens are
    # seen by more visual queries) and so the same in every layer. Sharpen it, as training does.
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
    batch = tiny_inputs(model, [[(64, 64)]])
    with alvts.routed(model, "oracle", keep=0.25), torch.no_grad():
        model(**batch)
        selected = alvts.routing_state(model).selected
    sets = {tuple(selected[i][0].nonzero().flatten().tolist()) for i in range(4)}
    assert len(sets) > 1


def test_random_policy_is_seeded():
    model = tiny_model("qwen2_5_vl", "sdpa")
    batch = tiny_inputs(model)

    def selection(policy):
        with alvts.routed(model, policy, keep=0.25), torch.no_grad():
            model(**batch)
            return torch.stack(list(alvts.routing_state(model).selected.values()))

    assert torch.equal(selection(RandomPolicy(seed=1)), selection(RandomPolicy(seed=1)))
    assert not torch.equal(selection(RandomPolicy(seed=1)), selection(RandomPolicy(seed=2)))


def test_policy_names_resolve_and_unknown_names_are_refused():
    assert {get_policy(n).name for n in ("full", "random", "oracle")} == {"full", "random", "oracle"}
    with pytest.raises(
        ValueError,
        match=r"Unknown policy 'fastest'.*\['divprune', 'fastv', 'full', 'oracle', 'pdrop', 'random', 'random-dense'",
    ):
        get_policy("fastest")
