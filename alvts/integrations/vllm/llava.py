"""LLaVA-1.5 and LLaVA-NeXT in vLLM, routed ("AlvtsLlavaForConditionalGeneration",
"AlvtsLlavaNextForConditionalGeneration"): vLLM builds their language model from the checkpoint's text config
(Llama, Mistral, Qwen2 ...), all with the decoder layout `RoutedDecoderMixin` reads; NeXT's image newline slots are
image tokens, routed like the others (as alvts does in transformers)."""

from vllm.model_executor.models.llava import LlavaForConditionalGeneration
from vllm.model_executor.models.llava_next import LlavaNextForConditionalGeneration

from .decoder import RoutedDecoderMixin


class RoutedLlava(RoutedDecoderMixin, LlavaForConditionalGeneration):
    """vLLM's LLaVA-1.5 with visual tokens routed per decoder layer."""


class RoutedLlavaNext(RoutedDecoderMixin, LlavaNextForConditionalGeneration):
    """vLLM's LLaVA-NeXT with visual tokens routed per decoder layer."""
