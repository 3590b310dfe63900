"""LLaVA-1.5: CLIP tower + projector + any `AutoModel` decoder (Llama, Vicuna, Mistral, ...)."""

from .base import FamilyAdapter


class LlavaAdapter(FamilyAdapter):
    model_types = ("llava",)
    model_classes = ("LlavaForConditionalGeneration",)
