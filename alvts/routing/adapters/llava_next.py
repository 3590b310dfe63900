"""LLaVA-NeXT: like LLaVA-1.5, with any-resolution tiles; `image_newline` slots are image placeholders too."""

import torch

from . import register_adapter
from .base import FamilyAdapter


@register_adapter
class LlavaNextAdapter(FamilyAdapter):
    model_types = ("llava_next",)
    model_classes = ("LlavaNextForConditionalGeneration",)
    image_input_keys = ("pixel_values", "image_sizes")

    def batch_images(self, key: str, values: list[torch.Tensor]) -> torch.Tensor:
        """Images of different sizes have different tile counts: pad `(images, tiles, c, h, w)` to the most tiles
        (the model reads each image's own count from `image_sizes`)."""
        if key == "pixel_values":
            tiles = max(v.shape[1] for v in values)
            values = [torch.nn.functional.pad(v, (0, 0, 0, 0, 0, 0, 0, tiles - v.shape[1])) for v in values]
        return torch.cat(values)
