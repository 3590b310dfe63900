"""Qwen3-VL and Qwen3-VL-MoE in vLLM, routed ("AlvtsQwen3VLForConditionalGeneration",
"AlvtsQwen3VLMoeForConditionalGeneration"). Their decoder adds DeepStack features (from the vision tower's middle
layers) to the visual positions after the first layers, inside its loop: the routed loop adds them after the layer
to every token, skipped or not, as alvts does in transformers. MoE layers run their router and experts on the
gathered tokens only."""

from __future__ import annotations

import torch
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration
from vllm.model_executor.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration

from .decoder import RoutedDecoderMixin


class _DeepStack:
    def alvts_stream_additions(self, inputs_embeds: torch.Tensor | None) -> dict[int, torch.Tensor] | None:
        if inputs_embeds is None:
            return None
        embeds = self._get_deepstack_input_embeds(inputs_embeds.size(0))
        if embeds is None:
            return None
        return {i: embeds[f"deepstack_input_embeds_{i}"] for i in range(self.deepstack_num_level)}

    def alvts_after_forward(self, inputs_embeds: torch.Tensor | None) -> None:
        if inputs_embeds is not None:
            self._clear_deepstack_input_embeds(inputs_embeds.size(0))


class RoutedQwen3VL(_DeepStack, RoutedDecoderMixin, Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL with visual tokens routed per decoder layer."""


class RoutedQwen3VLMoe(_DeepStack, RoutedDecoderMixin, Qwen3VLMoeForConditionalGeneration):
    """vLLM's Qwen3-VL-MoE with visual tokens routed per decoder layer."""
