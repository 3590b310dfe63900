"""The demo model's training stream, its dense per-token targets, and held-out splits of the task suite."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import IterableDataset

from ..inputs import encode_example
from ..tasks import TASK_TYPES, TRAIN_SEED, Example, example_seed, make_example
from ..tasks.font import GLYPH_GAP, GLYPH_HEIGHT, GLYPH_WIDTH
from ..tasks.scenes import COLOUR_NAMES
from ..tasks.vocab import BACKGROUND, COLOURS, SHAPES, TEXT_COLOUR

TOKEN_PIXELS = 28  # one merged visual token covers 28 x 28 pixels
STRIDE = 4
PALETTE = (None, *(COLOURS[name] for name in COLOUR_NAMES), TEXT_COLOUR)  # class 0: background
NUM_COLOUR_CLASSES = len(PALETTE)
NUM_CENTRE_CLASSES = 1 + len(SHAPES) + 10  # nothing, a shape's centre, a digit's centre


def token_targets(example: Example) -> torch.Tensor:
    """(tokens, 2) long: per visual token (raster order) the palette class covering most of it and what centre, if
    any, falls inside it. A training-only dense signal that teaches the small vision tower colours, shapes and
    digits long before the sparse answer loss alone would."""
    width, height = example.image.size
    cols, rows = width // TOKEN_PIXELS, height // TOKEN_PIXELS
    pixels = torch.frombuffer(bytearray(example.image.tobytes()), dtype=torch.uint8).view(height, width, 3)
    pixels = pixels[STRIDE // 2 :: STRIDE, STRIDE // 2 :: STRIDE].float()  # every 4th pixel is plenty
    palette = torch.tensor([BACKGROUND, *PALETTE[1:]], dtype=torch.float32)
    side = TOKEN_PIXELS // STRIDE
    nearest = torch.cdist(pixels.reshape(-1, 3), palette).argmin(1).view(rows, side, cols, side)
    counts = torch.nn.functional.one_hot(nearest, len(palette)).sum((1, 3))
    counts[..., 0] = counts[..., 0] // 4  # a token mostly background but partly shape is labelled with the shape
    colour = counts.argmax(-1)

    centre = torch.zeros(rows, cols, dtype=torch.long)

    def mark(x: float, y: float, label: int) -> None:
        centre[min(int(y * height) // TOKEN_PIXELS, rows - 1), min(int(x * width) // TOKEN_PIXELS, cols - 1)] = label

    for obj in example.scene["objects"]:
        mark(*obj["centre"], 1 + SHAPES.index(obj["shape"]))
    if "text" in example.scene:
        text = example.scene["text"]
        x0, y0 = text["bbox"][:2]
        for index, char in enumerate(text["value"]):
            x = x0 + (index * (GLYPH_WIDTH + GLYPH_GAP) + GLYPH_WIDTH / 2) / text["units"]
            mark(x, y0 + GLYPH_HEIGHT / 2 / text["units"], 1 + len(SHAPES) + int(char))
    return torch.stack([colour.flatten(), centre.flatten()], 1)


class TrainingStream(IterableDataset):
    """Endless training examples, task types in turn, example seeds from the training block: deterministic order."""

    def __init__(self, processor, tasks: Sequence[str] = TASK_TYPES, start: int = 0):
        self.processor, self.tasks, self.start = processor, tuple(tasks), start

    def __iter__(self) -> Iterator[dict]:
        index = self.start
        while True:
            task = self.tasks[index % len(self.tasks)]
            example = make_example(task, example_seed(TRAIN_SEED, index // len(self.tasks)))
            encoded = encode_example(self.processor, example.image, example.question, example.answer)
            yield {**encoded, "task": task, "token_targets": token_targets(example)}
            index += 1


def held_out(num_per_task: int, base_seed: int, tasks: Sequence[str] = TASK_TYPES) -> list[Example]:
    """Examples from a seed block disjoint from training, interleaved by task."""
    return [make_example(task, example_seed(base_seed, i)) for i in range(num_per_task) for task in tasks]
