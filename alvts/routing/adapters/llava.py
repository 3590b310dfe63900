"""LLaVA-1.5: CLIP tower + projector + any `AutoModel` decoder (Llama, Vicuna, Mistral, ...)."""

from . import register_adapter
from .base import FamilyAdapter


@register_adapter
class LlavaAdapter(FamilyAdapter):
    model_types = ("llava",)
    model_classes = ("LlavaForConditionalGeneration",)
