"""LLaVA-NeXT: like LLaVA-1.5, with any-resolution tiles; `image_newline` slots are image placeholders too."""

from .base import FamilyAdapter


class LlavaNextAdapter(FamilyAdapter):
    model_types = ("llava_next",)
    model_classes = ("LlavaNextForConditionalGeneration",)
