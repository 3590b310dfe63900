"""Qwen2-VL and Qwen2.5-VL: images and videos share the language model; M-RoPE positions arrive as (cos, sin)."""

from .base import FamilyAdapter


class QwenVLAdapter(FamilyAdapter):
    model_types = ("qwen2_5_vl", "qwen2_vl")
    model_classes = ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration")
    visual_token_id_attrs = ("image_token_id", "video_token_id")
