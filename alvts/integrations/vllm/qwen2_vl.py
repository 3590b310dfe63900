"""Qwen2-VL in vLLM, routed ("AlvtsQwen2VLForConditionalGeneration"): vLLM's Qwen2 language model with M-RoPE."""

from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration

from .decoder import RoutedDecoderMixin


class RoutedQwen2VL(RoutedDecoderMixin, Qwen2VLForConditionalGeneration):
    """vLLM's Qwen2-VL with visual tokens routed per decoder layer."""
