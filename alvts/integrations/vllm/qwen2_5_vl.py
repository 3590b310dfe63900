"""Qwen2.5-VL in vLLM, routed ("AlvtsQwen2_5_VLForConditionalGeneration"): its language model is vLLM's Qwen2 with
M-RoPE, whose (3, tokens) positions the router gathers like 1-D ones."""

from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

from .decoder import RoutedDecoderMixin


class RoutedQwen2_5_VL(RoutedDecoderMixin, Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL with visual tokens routed per decoder layer."""
