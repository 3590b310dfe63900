"""Load a model's processor, with an image-only stand-in for Qwen-VL processors when torchvision is missing.

transformers 5.23 cannot build any Qwen2/2.5-VL processor without torchvision: `AutoProcessor` always instantiates
the video processor, which needs it (huggingface/transformers#48558). Image-only use does not need it, so
`load_processor` falls back to `ImageOnlyQwen2_5_VLProcessor`, the stock processor minus its video half.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, AutoProcessor, ProcessorMixin, Qwen2_5_VLProcessor
from transformers.utils import is_torchvision_available

QWEN_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
STOCK_CLASS = "Qwen2_5_VLProcessor"


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` for images and text only: same token expansion, chat template and outputs, no videos."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def to_dict(self) -> dict:
        # Saved folders name the stock class and carry a video processor entry, so that they load with AutoProcessor
        # wherever torchvision is installed.
        video = {"video_processor_type": "Qwen2VLVideoProcessor"}
        for key in ("patch_size", "merge_size", "temporal_patch_size"):
            video[key] = getattr(self.image_processor, key)
        return {**super().to_dict(), "processor_class": STOCK_CLASS, "video_processor": video}

    def save_pretrained(self, save_directory, **kwargs):
        files = super().save_pretrained(save_directory, **kwargs)
        path = Path(save_directory) / "tokenizer_config.json"
        if path.exists():
            config = json.loads(path.read_text(encoding="utf-8"))
            path.write_text(json.dumps({**config, "processor_class": STOCK_CLASS}, indent=2) + "\n", encoding="utf-8")
        return files


def load_processor(path: str, **kwargs) -> ProcessorMixin:
    """`AutoProcessor.from_pretrained(path)`, or the image-only Qwen processor where torchvision is not installed."""
    if not is_torchvision_available():
        model_type = getattr(AutoConfig.from_pretrained(path, **kwargs), "model_type", None)
        if model_type in QWEN_MODEL_TYPES:
            return ImageOnlyQwen2_5_VLProcessor.from_pretrained(path, **kwargs)
    return AutoProcessor.from_pretrained(path, **kwargs)
