"""Model inputs from (image, question) through the model's own processor and chat template, and batching them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..routing.adapters import FamilyAdapter


def prompt_text(processor, question: str) -> str:
    """The chat-formatted prompt for one image and one question, ending where the assistant's answer starts."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def encode_example(processor, image: Image.Image, question: str) -> dict:
    """Processor outputs for one image and one question, as a single-sample batch."""
    return dict(processor(images=[image], text=[prompt_text(processor, question)], return_tensors="pt"))


def collate(items: Sequence[dict], pad_id: int, adapter: FamilyAdapter, padding_side: str = "right") -> dict:
    """Pad per-example encodings into one batch (labels padded with -100); the inputs that hold images are batched
    the way the model family reads them (`adapter.image_input_keys`, `adapter.batch_images`)."""
    length = max(item["input_ids"].shape[1] for item in items)
    batch: dict[str, list] = {}
    for item in items:
        pad = length - item["input_ids"].shape[1]
        for key, value in item.items():
            if key in adapter.image_input_keys:
                batch.setdefault(key, []).append(value)
                continue
            fill = {"input_ids": pad_id, "labels": -100}.get(key, 0)
            filler = torch.full((1, pad), fill, dtype=value.dtype)
            parts = [value, filler] if padding_side == "right" else [filler, value]
            batch.setdefault(key, []).append(torch.cat(parts, 1))
    return {
        key: adapter.batch_images(key, values) if key in adapter.image_input_keys else torch.cat(values)
        for key, values in batch.items()
    }
