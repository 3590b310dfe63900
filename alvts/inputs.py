"""Model inputs from (image, question[, answer]) through the model's own processor and chat template, and batching."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

ANSWER_END = "<|im_end|>"


def prompt_text(processor, question: str) -> str:
    """The chat-formatted prompt for one image and one question, ending where the assistant's answer starts."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def encode_example(processor, image: Image.Image, question: str, answer: str | None = None) -> dict:
    """Processor outputs for one example; with an answer, also `labels` that score only the answer and its end."""
    text = prompt_text(processor, question)
    if answer is None:
        return dict(processor(images=[image], text=[text], return_tensors="pt"))
    encoded = dict(processor(images=[image], text=[text + answer + ANSWER_END], return_tensors="pt"))
    answer_ids = processor.tokenizer(answer + ANSWER_END, add_special_tokens=False, return_tensors="pt").input_ids
    ids = encoded["input_ids"]
    if not torch.equal(ids[0, -answer_ids.shape[1] :], answer_ids[0]):
        raise ValueError(f"answer {answer!r} does not tokenize the same after the prompt")
    labels = torch.full_like(ids, -100)
    labels[0, -answer_ids.shape[1] :] = answer_ids[0]
    encoded["labels"] = labels
    return encoded


def collate(items: Sequence[dict], pad_id: int, padding_side: str = "right") -> dict:
    """Pad per-example encodings into one batch (labels padded with -100); images are concatenated in order."""
    length = max(item["input_ids"].shape[1] for item in items)
    batch: dict[str, list] = {}
    for item in items:
        pad = length - item["input_ids"].shape[1]
        for key, value in item.items():
            if key in ("pixel_values", "image_grid_thw"):
                batch.setdefault(key, []).append(value)
                continue
            fill = {"input_ids": pad_id, "labels": -100}.get(key, 0)
            filler = torch.full((1, pad), fill, dtype=value.dtype)
            parts = [value, filler] if padding_side == "right" else [filler, value]
            batch.setdefault(key, []).append(torch.cat(parts, 1))
    return {key: torch.cat(values) for key, values in batch.items()}
