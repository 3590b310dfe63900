"""Answer questions about images with greedy generation and score them by exact match, per task."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from .inputs import collate, encode_example


def normalise(answer: str) -> str:
    """Case, surrounding space and a trailing full stop do not count against an answer."""
    return answer.strip().rstrip(".").strip().lower()


@torch.no_grad()
def generate_answers(
    model,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    batch_size: int = 16,
    max_new_tokens: int = 8,
    progress: bool = False,
) -> list[str]:
    """Greedy answers, one per (image, question), in batches left-padded the way generate() expects."""
    pad_id = processor.tokenizer.pad_token_id
    answers: list[str] = []
    starts = range(0, len(questions), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress):
        stop = start + batch_size
        pairs = zip(images[start:stop], questions[start:stop], strict=True)
        items = [encode_example(processor, image, question) for image, question in pairs]
        batch = {k: v.to(model.device) for k, v in collate(items, pad_id, padding_side="left").items()}
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
        new = out[:, batch["input_ids"].shape[1] :]
        answers += processor.tokenizer.batch_decode(new, skip_special_tokens=True)
    return [answer.strip() for answer in answers]


def accuracy_by_task(tasks: Sequence[str], answers: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Normalised exact-match accuracy per task, plus "mean": the unweighted mean over tasks."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for task, answer, prediction in zip(tasks, answers, predictions, strict=True):
        hits[task].append(normalise(answer) == normalise(prediction))
    accuracy = {task: sum(values) / len(values) for task, values in hits.items()}
    return {**accuracy, "mean": sum(accuracy.values()) / len(accuracy)}
