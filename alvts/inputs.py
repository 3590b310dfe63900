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
    if answer is None:
        return dict(processor(images=[image], text=[prompt_text(processor, question)], return_tensors="pt"))
    return encode_conversation(processor, image, [(question, answer)])


def encode_conversation(processor, image: Image.Image, turns: Sequence[tuple[str, str]]) -> dict:
    """Processor outputs for a chat of (question, answer) turns about one image, with `labels` on every answer and its
    end token. The first turn carries the image and is exactly what inference sees (`prompt_text`)."""
    text = prompt_text(processor, turns[0][0]) + turns[0][1] + ANSWER_END
    for question, answer in turns[1:]:
        messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
        text += "\n" + processor.apply_chat_template(messages, add_generation_prompt=True) + answer + ANSWER_END
    encoded = dict(processor(images=[image], text=[text], return_tensors="pt"))
    # an answer starts after each generation prompt (the template's assistant header) and runs to its end token
    messages = [{"role": "user", "content": [{"type": "text", "text": ""}]}]
    without = processor.apply_chat_template(messages)
    header = processor.apply_chat_template(messages, add_generation_prompt=True)[len(without) :]
    start = processor.tokenizer(header, add_special_tokens=False).input_ids
    end = processor.tokenizer.convert_tokens_to_ids(ANSWER_END)
    ids = encoded["input_ids"][0].tolist()
    labels = torch.full((len(ids),), -100)
    inside = False
    for position, token in enumerate(ids):
        if inside:
            labels[position], inside = token, token != end
        else:
            inside = ids[max(0, position - len(start) + 1) : position + 1] == start
    if (labels == end).sum() != len(turns):
        raise ValueError(f"found {(labels == end).sum()} answers for {len(turns)} turns: the chat template moved them")
    encoded["labels"] = labels[None]
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
