"""LLaVA-OneVision: SigLIP tower + Qwen2 decoder; images as any-resolution tiles (anyres-max, with `image_newline`
slots), videos as pooled frames ending in one `image_newline` slot, each with its own placeholder id."""

from . import register_adapter
from .llava_next import LlavaNextAdapter


@register_adapter
class LlavaOnevisionAdapter(LlavaNextAdapter):
    model_types = ("llava_onevision",)
    model_classes = ("LlavaOnevisionForConditionalGeneration",)
    visual_token_id_attrs = ("image_token_id", "video_token_id")
    image_input_keys = ("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos")
