"""Videos: Qwen2.5-VL (`pixel_values_videos`, `video_grid_thw`, `second_per_grid_ts`), Qwen3-VL (frames split by
timestamp tokens) and LLaVA-OneVision (pooled frames) route like images; a batch mixes images and videos, and each
sample's budget counts its visual tokens of both kinds."""

import pytest
import torch
from conftest import max_valid_diff

import alvts
from alvts.evaluation.inputs import collate
from alvts.routing import get_adapter
from alvts.testing import IMAGE_ID, PAD, VIDEO_ID, Video, tiny_inputs, tiny_model

# Per family: sample 0 a video alone, sample 1 an image and a video; the visual token counts each becomes, by hand.
MIXED = {
    # Qwen: a (t, h, w) patch grid, 2x2 patches merged per token: (2, 8, 8) -> 32, (1, 12, 12) -> 36, (2, 8, 12) -> 48
    "qwen2_5_vl": ([[Video((2, 8, 8))], [(1, 12, 12), Video((2, 8, 12))]], [(0, 32), (36, 48)]),
    "qwen2_vl": ([[Video((2, 8, 8))], [(1, 12, 12), Video((2, 8, 12))]], [(0, 32), (36, 48)]),
    "qwen3_vl": ([[Video((2, 8, 8))], [(1, 12, 12), Video((2, 8, 12))]], [(0, 32), (36, 48)]),
    "qwen3_vl_moe": ([[Video((2, 8, 8))], [(1, 12, 12), Video((2, 8, 12))]], [(0, 32), (36, 48)]),
    # OneVision: a frame is 8x8 patches pooled to 4x4 = 16 tokens, one newline slot ends the video; a 64x64 image 336.
    # Its videos batch as one (videos, frames, ...) tensor, so both have the same frame count.
    "llava_onevision": ([[Video((2,))], [(64, 64), Video((2,))]], [(0, 2 * 16 + 1), (336, 2 * 16 + 1)]),
}
VIDEO_FAMILIES = pytest.mark.parametrize("family", list(MIXED))  # overrides the fixture; slow but qwen2_5_vl


def _model_and_batch(family: str, attn: str = "sdpa"):
    model = tiny_model(family, attn)
    images, counts = MIXED[family]
    return model, tiny_inputs(model, images), torch.tensor(counts)


@VIDEO_FAMILIES
def test_the_tiny_inputs_hold_the_hand_counted_visual_tokens(family):
    _, batch, counts = _model_and_batch(family)
    assert torch.equal((batch["input_ids"] == IMAGE_ID).sum(1), counts[:, 0])
    assert torch.equal((batch["input_ids"] == VIDEO_ID).sum(1), counts[:, 1])
    assert batch["pixel_values_videos"].shape[0] > 0 and batch["pixel_values"].shape[0] > 0


@VIDEO_FAMILIES
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_keep_one_on_images_and_videos_equals_stock(family, attn):
    model, batch, _ = _model_and_batch(family, attn)
    greedy = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        stock, stock_gen = model(**batch).logits, model.generate(**batch, **greedy)
        with alvts.routed(model, "full"):
            routed, routed_gen = model(**batch).logits, model.generate(**batch, **greedy)
    assert max_valid_diff(stock, routed, batch["attention_mask"]) <= 1e-5
    assert torch.equal(stock_gen.sequences, routed_gen.sequences)
    for s, r in zip(stock_gen.logits, routed_gen.logits, strict=True):
        assert (s - r).abs().max().item() <= 1e-5


@VIDEO_FAMILIES
def test_the_budget_counts_image_and_video_tokens_and_layers_hold_text_plus_kept(family):
    model, batch, counts = _model_and_batch(family)
    n_visual = counts.sum(1)  # per sample, images and videos together
    text = batch["attention_mask"].sum(1) - n_visual
    with alvts.routed(model, "oracle", keep=[1.0, 0.5, 0.25, 0.25]), torch.no_grad():
        out = model(**batch, use_cache=True)
        state = alvts.routing_state(model)
    is_video_or_image = (batch["input_ids"] == IMAGE_ID) | (batch["input_ids"] == VIDEO_ID)
    assert torch.equal(state.visual, is_video_or_image & batch["attention_mask"].bool())
    expected = torch.stack([n_visual, n_visual // 2, n_visual // 4, n_visual // 4])
    assert torch.equal(state.visual_kept(), expected)
    for i in range(4):
        assert torch.equal(out.past_key_values.valid_key_counts(i), text + expected[i])


def test_qwen2_5_vl_video_timestamps_reach_the_positions_and_route_alike():
    """`second_per_grid_ts` sets the time step of a video's M-RoPE positions: it changes the stock logits, and the
    routed model at keep 1.0 follows it."""
    model, batch, _ = _model_and_batch("qwen2_5_vl")
    slower = dict(batch, second_per_grid_ts=batch["second_per_grid_ts"] * 4)
    with torch.no_grad():
        stock = [model(**b).logits for b in (batch, slower)]
        with alvts.routed(model, "full"):
            routed = [model(**b).logits for b in (batch, slower)]
    assert max_valid_diff(stock[0], stock[1], batch["attention_mask"]) > 1e-4
    for s, r in zip(stock, routed, strict=True):
        assert max_valid_diff(s, r, batch["attention_mask"]) <= 1e-5


@VIDEO_FAMILIES
def test_video_inputs_collate_per_sample_and_answer_as_each_sample_alone(family):
    """`collate` (the evaluation harness's batching) joins videos in sample order through the adapter's
    `image_input_keys`, timestamps included: the stock batch gives each sample's own logits."""
    model = tiny_model(family, "sdpa")
    video = MIXED[family][0][0][0]
    items = [tiny_inputs(model, [[video]], suffix_len=3 + 4 * s, seed=s) for s in (0, 1)]
    batch = collate(items, PAD, get_adapter(model), padding_side="left")
    assert batch["pixel_values_videos"].shape[0] == sum(item["pixel_values_videos"].shape[0] for item in items)
    with torch.no_grad():
        batched = model(**batch).logits
        for b, item in enumerate(items):
            alone = model(**item).logits[0]
            torch.testing.assert_close(batched[b, -alone.shape[0] :], alone, rtol=0, atol=1e-5)
