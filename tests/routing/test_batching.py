"""Batches: left padding, different visual counts, text-only samples, several images; budgets are per sample."""

import torch
from conftest import BATCH_IMAGES, batch_for

import alvts
from alvts.testing import select_sample, tiny_inputs


def _valid_logits(model, batch):
    with torch.no_grad():
        logits = model(**batch).logits
    return logits[batch["attention_mask"].bool()]


def test_batched_routing_equals_per_sample_routing(sdpa_model):
    model = sdpa_model
    images = BATCH_IMAGES[model.config.model_type]
    batch = tiny_inputs(model, images)
    alvts.apply(model, "oracle", keep=0.25)
    batched = _valid_logits(model, batch)
    batched_selection = alvts.routing_state(model).selected
    valid = batch["attention_mask"].bool()
    singles, offset = [], 0
    for b in range(len(images)):
        single = select_sample(batch, model, b, images)
        singles.append(_valid_logits(model, single))
        n = int(valid[b].sum())
        for i, sel in alvts.routing_state(model).selected.items():
            assert torch.equal(batched_selection[i][b, valid[b]], sel[0]), f"layer {i} sample {b} chose other tokens"
        offset += n
    assert torch.allclose(batched, torch.cat(singles), atol=1e-5, rtol=0)


def test_samples_without_image_and_with_several_images(sdpa_model):
    model = sdpa_model
    family = model.config.model_type
    one, other = BATCH_IMAGES[family][0][0], BATCH_IMAGES[family][1][0]
    images = [[], [one, other], [other]]
    batch = tiny_inputs(model, images)
    alvts.apply(model, "random", keep=0.5)
    batched = _valid_logits(model, batch)
    state = alvts.routing_state(model)
    visual = state.visual.sum(1)
    assert visual[0] == 0 and visual[1] > visual[2] > 0
    assert torch.equal(state.visual_kept()[0], torch.clamp(visual // 2, min=1) * (visual > 0))
    # The text-only sample routes nothing: it equals its stock, unbatched forward.
    alvts.remove(model)
    alone = _valid_logits(model, select_sample(batch, model, 0, images))
    n0 = int(batch["attention_mask"][0].sum())
    assert torch.allclose(batched[:n0], alone, atol=1e-5, rtol=0)


def test_per_layer_schedule_and_fixed_counts(sdpa_model):
    model = sdpa_model
    batch = batch_for(model, 2)
    with alvts.routed(model, "oracle", keep=[1.0, 1.0, 0.25, 0.125]):
        with torch.no_grad():
            model(**batch)
        state = alvts.routing_state(model)
        n = state.visual.sum(1)
        kept = state.visual_kept()
        assert torch.equal(kept[0], n) and torch.equal(kept[1], n)
        assert torch.equal(kept[2], (n * 0.25 + 1e-6).floor().long()) and torch.equal(kept[3], (n / 8).floor().long())
    with alvts.routed(model, "oracle", keep_tokens=7):
        with torch.no_grad():
            model(**batch)
        assert (alvts.routing_state(model).visual_kept() == 7).all()
