"""Static caches and compiled decoding: `generate(cache_implementation="static")` on a routed model gives a
`RoutedStaticCache` whose layers are sized for their own keys, decodes as the dynamic cache does, and compiles."""

import pytest
import torch
from conftest import batch_for
from transformers import CompileConfig

import alvts
from alvts import RoutedStaticCache
from alvts.testing import tiny_model

NEW = 5
GREEDY = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, return_dict_in_generate=True, output_logits=True)


def _generate(model, batch, **kwargs):
    with torch.no_grad():
        return model.generate(**batch, **GREEDY, **kwargs)


def _logit_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits, strict=True))


def test_keep_one_static_generate_equals_stock(model):
    batch = batch_for(model, 2)
    stock = _generate(model, batch, cache_implementation="static")
    with alvts.routed(model, "full", keep=1.0):
        routed = _generate(model, batch, cache_implementation="static")
    assert isinstance(routed.past_key_values, RoutedStaticCache)
    assert torch.equal(routed.sequences, stock.sequences)
    assert _logit_diff(routed, stock) <= 1e-5


@pytest.mark.parametrize("keep", [0.25, [1.0, 0.5, 0.25, 0.1]])
def test_static_decoding_equals_dynamic_and_layers_hold_their_own_keys(model, keep):
    batch = batch_for(model, 2)
    with alvts.routed(model, "oracle", keep=keep):
        dynamic = _generate(model, batch)
        static = _generate(model, batch, cache_implementation="static")
        state = alvts.routing_state(model)
    assert torch.equal(static.sequences, dynamic.sequences)
    assert _logit_diff(static, dynamic) <= 1e-5
    cache, text = static.past_key_values, (batch["attention_mask"].bool() & ~state.visual).sum(1)
    room = cache.max_logical_len - batch["input_ids"].shape[1]
    for i, layer in enumerate(cache.layers):
        kept = text + state.selected[i].sum(1)
        assert layer.max_cache_len == int(kept.max()) + room  # buffers sized for this layer's keys, not the prompt
        assert layer.keys.shape[2] == layer.max_cache_len
        assert torch.equal(cache.valid_key_counts(i), kept + NEW - 1)  # the last token is never fed back
        assert torch.equal(cache.valid_key_counts(i), dynamic.past_key_values.valid_key_counts(i))


@pytest.mark.parametrize(
    "mode", [dict(num_beams=3, num_return_sequences=2), dict(do_sample=True, top_k=0, num_return_sequences=2)]
)
def test_beam_search_and_sampling_on_a_static_cache_equal_the_dynamic_one(model, mode):
    """Beams reorder and sampling expands the cache's batch: per-layer buffers follow (stock at keep 1.0)."""
    batch = batch_for(model, 2)

    def sequences(**kwargs):
        torch.manual_seed(0)
        with torch.no_grad():
            return model.generate(**batch, max_new_tokens=NEW, min_new_tokens=NEW, **mode, **kwargs)

    stock = sequences(cache_implementation="static")
    with alvts.routed(model, "full", keep=1.0):
        assert torch.equal(sequences(cache_implementation="static"), stock)
    with alvts.routed(model, "oracle", keep=0.25):
        assert torch.equal(sequences(cache_implementation="static"), sequences())


def test_compiled_static_decoding_is_one_graph_and_equals_eager(family):
    model = tiny_model(family, "sdpa")
    batch = batch_for(model, 2)
    compile_config = CompileConfig(backend="eager", fullgraph=True)  # fullgraph: a graph break is an error
    compile_config._compile_all_devices = True  # generate() compiles on CUDA only unless told
    torch._dynamo.reset()
    with alvts.routed(model, "oracle", keep=0.25):
        eager = _generate(model, batch, cache_implementation="static", disable_compile=True)
        compiled = _generate(model, batch, cache_implementation="static", compile_config=compile_config)
    assert torch.equal(compiled.sequences, eager.sequences)
    assert _logit_diff(compiled, eager) <= 1e-5


def test_a_filled_or_too_short_static_cache_is_refused(sdpa_model):
    batch = batch_for(sdpa_model, 1)
    stock = _generate(sdpa_model, batch, cache_implementation="static").past_key_values
    with alvts.routed(sdpa_model, "oracle", keep=0.25):
        with pytest.raises(ValueError, match="StaticCache holding"):
            sdpa_model(**batch, past_key_values=stock)
        with pytest.raises(ValueError, match="raise max_cache_len"):
            sdpa_model(**batch, past_key_values=RoutedStaticCache(sdpa_model.config, max_cache_len=4))


def test_a_reset_cache_is_sized_again_for_the_next_prompt(sdpa_model):
    batch, schedule = batch_for(sdpa_model, 2), [1.0, 0.5, 0.25, 0.1]
    cache = RoutedStaticCache(sdpa_model.config.get_text_config(), max_cache_len=batch["input_ids"].shape[1] + NEW - 1)
    with alvts.routed(sdpa_model, "oracle", keep=0.25):
        _generate(sdpa_model, batch, past_key_values=cache)
    cache.reset()
    with alvts.routed(sdpa_model, "oracle", keep=schedule):
        reused = _generate(sdpa_model, batch, past_key_values=cache)
        fresh = _generate(sdpa_model, batch, cache_implementation="static")
    assert torch.equal(reused.sequences, fresh.sequences)
    assert [layer.max_cache_len for layer in cache.layers] == [
        layer.max_cache_len for layer in fresh.past_key_values.layers
    ]
