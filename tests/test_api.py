"""alvts.apply / remove / routed: restore the stock model exactly, refuse bad input with a clear message."""

import pytest
import torch
from conftest import batch_for, max_valid_diff
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import alvts
from alvts import Policy
from alvts.testing import tiny_inputs, tiny_model


def test_remove_restores_stock_logits_exactly(model):
    batch = batch_for(model, 2)
    with torch.no_grad():
        stock = model(**batch).logits
        keys = list(model.state_dict())
        alvts.apply(model, "oracle", keep=0.25)
        routed = model(**batch).logits
        assert list(model.state_dict()) == keys  # parameters, names and classes are untouched
        alvts.remove(model)
        restored = model(**batch).logits
    assert not torch.equal(stock, routed)
    assert torch.equal(stock, restored)
    assert all("forward" not in layer.__dict__ for layer in model.model.language_model.layers)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_text_only_prompt_through_a_routed_model_equals_stock(model, batch_size):
    batch = tiny_inputs(model, [[]] * batch_size)
    with torch.no_grad():
        stock = model(**batch).logits
        with alvts.routed(model, "oracle", keep=0.25):
            routed = model(**batch).logits
    assert max_valid_diff(stock, routed, batch["attention_mask"]) <= 1e-5


def test_hidden_states_stay_full_length(sdpa_model):
    batch = batch_for(sdpa_model, 2)
    with alvts.routed(sdpa_model, "oracle", keep=0.25), torch.no_grad():
        out = sdpa_model(**batch, output_hidden_states=True)
    assert all(h.shape[:2] == batch["input_ids"].shape for h in out.hidden_states)


def test_context_manager_removes_on_error(sdpa_model):
    with pytest.raises(RuntimeError, match="boom"), alvts.routed(sdpa_model, "oracle", keep=0.5):
        raise RuntimeError("boom")
    assert alvts.get_router(sdpa_model) is None


class WrongShapePolicy(Policy):
    name = "wrong-shape"

    def scores(self, inputs):
        return inputs.visual.float()[:, :-1]


@pytest.mark.parametrize(
    "policy, kwargs, message",
    [
        ("oracle", dict(keep=0.0), r"keep must be a ratio in \(0, 1\]"),
        ("oracle", dict(keep=1.01), r"keep must be a ratio in \(0, 1\]"),
        ("oracle", dict(keep=-0.5), r"keep must be a ratio in \(0, 1\]"),
        ("fastest", dict(keep=0.5), r"Unknown policy 'fastest'"),
        ("random", dict(), r"needs a budget: pass keep="),
        ("full", dict(keep=0.5), r"Policy 'full' cannot score layers \[0, 1, 2, 3\]: give them keep 1.0"),
    ],
)
def test_apply_refuses_bad_arguments_and_leaves_the_model_stock(sdpa_model, policy, kwargs, message):
    with pytest.raises(ValueError, match=message):
        alvts.apply(sdpa_model, policy, **kwargs)
    assert alvts.get_router(sdpa_model) is None
    assert all("forward" not in layer.__dict__ for layer in sdpa_model.model.language_model.layers)


def test_apply_twice_is_refused(sdpa_model):
    alvts.apply(sdpa_model, "oracle", keep=0.5)
    with pytest.raises(ValueError, match=r"already routed by alvts; call alvts.remove\(model\)"):
        alvts.apply(sdpa_model, "oracle", keep=0.25)


def test_unsupported_model_lists_supported_classes():
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))  # fmt: skip
    with pytest.raises(ValueError, match=r"does not support LlamaForCausalLM.*LlavaForConditionalGeneration.*"
                                         r"Qwen2_5_VLForConditionalGeneration"):  # fmt: skip
        alvts.apply(model, "full")


def test_policy_returning_wrong_shape_is_named(sdpa_model):
    alvts.apply(sdpa_model, WrongShapePolicy(), keep=0.5)
    batch = batch_for(sdpa_model, 2)
    expected = tuple(batch["input_ids"].shape)
    with pytest.raises(ValueError, match=rf"WrongShapePolicy.*expected one score per token, shape \(batch, seq\) = "
                                         rf"\({expected[0]}, {expected[1]}\)"):  # fmt: skip
        sdpa_model(**batch)


def test_unsupported_attention_and_foreign_cache_are_refused():
    model = tiny_model("llava", "sdpa")
    alvts.apply(model, "oracle", keep=0.5)
    batch = tiny_inputs(model, [[None]])
    filled = DynamicCache(config=model.config)
    alvts.remove(model)
    with torch.no_grad():
        model(**batch, past_key_values=filled, use_cache=True)
    alvts.apply(model, "oracle", keep=0.5)
    with pytest.raises(ValueError, match="needs a RoutedCache .* got a DynamicCache holding"):
        model(**batch, past_key_values=filled)
    model.set_attn_implementation("flex_attention")
    with pytest.raises(ValueError, match=r"in \('eager', 'sdpa'\) or a varlen one.*'flex_attention'"):
        model(**batch)


def test_layers_called_outside_the_model_are_refused(sdpa_model):
    alvts.apply(sdpa_model, "oracle", keep=0.5)
    layer = sdpa_model.model.language_model.layers[0]
    with pytest.raises(RuntimeError, match="called outside the routed model's forward"):
        layer(torch.zeros(1, 3, 64), position_embeddings=(torch.zeros(1, 3, 16), torch.zeros(1, 3, 16)))
