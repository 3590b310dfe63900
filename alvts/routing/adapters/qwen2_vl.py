"""Qwen2-VL and Qwen2.5-VL: images and videos share the language model; M-RoPE positions arrive as (cos, sin);
images come as flattened patches with their (t, h, w) grids."""

from . import register_adapter
from .base import FamilyAdapter


@register_adapter
class QwenVLAdapter(FamilyAdapter):
    model_types = ("qwen2_5_vl", "qwen2_vl")
    model_classes = ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration")
    visual_token_id_attrs = ("image_token_id", "video_token_id")
    # per image / video, in sample order; `second_per_grid_ts` is a video's seconds per temporal patch (Qwen2.5-VL)
    image_input_keys = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
