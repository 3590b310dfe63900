"""InternVL 3 / 3.5 (`-hf` checkpoints): InternViT tower, pixel-shuffle projector and any `AutoModel` decoder (Qwen2,
Qwen3, ...); each image tile becomes `image_seq_length` placeholders, so a batch concatenates tiles in sample order."""

from . import register_adapter
from .base import FamilyAdapter


@register_adapter
class InternVLAdapter(FamilyAdapter):
    model_types = ("internvl",)
    model_classes = ("InternVLForConditionalGeneration",)
