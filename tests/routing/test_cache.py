"""RoutedCache: each layer holds text + its own selected visual keys; decoding from it is exact."""

import pytest
import torch
from conftest import BATCH_IMAGES, batch_for

import alvts
from alvts import Policy, RoutedCache
from alvts.testing import select_sample


class OwnFeaturePolicy(Policy):
    """Scores a token by its own input-normed state, so a token's score never depends on later tokens.

    Routing a longer sequence (prompt + generated text) then selects the same visual tokens as routing the
    prompt alone: a no-cache forward over the whole sequence is an exact reference for cached decoding.
    """

    name = "own-feature"

    def scores(self, inputs):
        return inputs.normed[..., inputs.layer_idx]


def _routed_generate(model, batch, new_tokens):
    """Greedy generation with the oracle at keep 0.25 into an explicit RoutedCache; returns the cache."""
    alvts.apply(model, "oracle", keep=0.25)
    cache = RoutedCache(config=model.config)
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, past_key_values=cache)
    return cache


def _text_and_visual_counts(model, batch):
    visual = alvts.routing_state(model).visual
    return (batch["attention_mask"].bool() & ~visual).sum(1), visual.sum(1)


@pytest.mark.parametrize("keep", [0.25, [1.0, 0.5, 0.25, 0.1]])
def test_each_layer_caches_text_plus_its_selected_visual_keys(sdpa_model, keep):
    model, batch = sdpa_model, batch_for(sdpa_model, 2)
    alvts.apply(model, "oracle", keep=keep)
    with torch.no_grad():
        cache = model(**batch, use_cache=True).past_key_values
    assert isinstance(cache, RoutedCache)
    state = alvts.routing_state(model)
    text, visual = _text_and_visual_counts(model, batch)
    ratios = keep if isinstance(keep, list) else [keep] * 4
    for i, r in enumerate(ratios):
        expected_k = torch.clamp((visual * r + 1e-6).floor().long(), min=1)
        assert torch.equal(state.selected[i].sum(1), expected_k)
        assert torch.equal(cache.valid_key_counts(i), text + expected_k)
        assert cache.physical_length(i) == int((text + expected_k).max())  # rectangular, left-padded per layer
    assert cache.get_seq_length() == batch["input_ids"].shape[1]  # logical length


@pytest.mark.parametrize("batch_size", [1, 2])
def test_cached_decoding_equals_recomputing_the_whole_sequence(model, batch_size):
    batch = batch_for(model, batch_size)
    prompt_len, new = batch["input_ids"].shape[1], 5
    alvts.apply(model, OwnFeaturePolicy(), keep=0.25)
    with torch.no_grad():
        gen = model.generate(
            **batch, max_new_tokens=new, do_sample=False, return_dict_in_generate=True, output_logits=True
        )
        full = dict(batch, input_ids=gen.sequences)
        full["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones(batch_size, new)], 1).long()
        if "mm_token_type_ids" in batch:
            full["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros(batch_size, new)], 1).long()
        if "qwen" not in model.config.model_type:  # LLaVA takes positions from the mask only inside generate()
            full["position_ids"] = (full["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        reference = model(**full, use_cache=False).logits
    for t in range(new):
        assert (gen.logits[t] - reference[:, prompt_len - 1 + t]).abs().max().item() <= 1e-4


def test_generation_appends_text_to_every_layer(sdpa_model):
    model, batch = sdpa_model, batch_for(sdpa_model, 2)
    cache = _routed_generate(model, batch, new_tokens=4)
    text, visual = _text_and_visual_counts(model, batch)
    k = torch.clamp((visual * 0.25 + 1e-6).floor().long(), min=1)
    for i in range(4):
        assert torch.equal(cache.valid_key_counts(i), text + k + 3)  # the last generated token is never fed back
    assert cache.get_seq_length() == batch["input_ids"].shape[1] + 3


def test_routed_beam_search_of_a_batch_equals_each_sample_alone(sdpa_model):
    """Beams reorder the cache's keys and their positions together: a sample's beams do not depend on its batch."""
    model, batch = sdpa_model, batch_for(sdpa_model, 2)
    images = BATCH_IMAGES[model.config.model_type]
    mode = dict(max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False)
    alvts.apply(model, "oracle", keep=0.25)
    with torch.no_grad():
        batched = model.generate(**batch, **mode)[:, batch["input_ids"].shape[1] :]
        for b in range(2):
            alone = select_sample(batch, model, b, images)
            single = model.generate(**alone, **mode)[:, alone["input_ids"].shape[1] :]
            assert torch.equal(batched[2 * b : 2 * b + 2], single)


def test_crop_removes_trailing_text_and_refuses_routed_spans(sdpa_model):
    model, batch = sdpa_model, batch_for(sdpa_model, 2)
    cache = _routed_generate(model, batch, new_tokens=4)
    before = cache.physical_lengths()
    cache.crop(-2)
    assert cache.physical_lengths() == [n - 2 for n in before]
    assert cache.get_seq_length() == batch["input_ids"].shape[1] + 1
    with pytest.raises(ValueError, match="visual tokens that layers routed differently"):
        cache.crop(-(cache.get_seq_length() - 3))  # back into the text before the image
