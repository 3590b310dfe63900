"""The demo model's training stream, its dense per-token targets, and held-out splits of the task suite."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import IterableDataset

from ..inputs import ANSWER_END, prompt_text
from ..tasks import TASK_TYPES, TRAIN_SEED, Example, answer_for, example_seed, make_example, question_for
from ..tasks.font import GLYPH_GAP, GLYPH_HEIGHT, GLYPH_WIDTH
from ..tasks.geometry import is_unambiguous
from ..tasks.scenes import COLOUR_NAMES, GRID
from ..tasks.vocab import BACKGROUND, COLOURS, COMBOS, DIRECTIONS, SHAPES, TEXT_COLOUR

TOKEN_PIXELS = 28  # one merged visual token covers 28 x 28 pixels
STRIDE = 4
PALETTE = (None, *(COLOURS[name] for name in COLOUR_NAMES), TEXT_COLOUR)  # class 0: background
NUM_COLOUR_CLASSES = len(PALETTE)
NUM_CENTRE_CLASSES = 1 + len(SHAPES) + 10  # nothing, a shape's centre, a digit's centre
MAX_DIGITS = 5  # the reading task's longest number (tasks/scenes.py: _reading)


def token_targets(example: Example) -> torch.Tensor:
    """(tokens, 5) long, per visual token in raster order: the palette class covering most of it, what centre (if
    any) falls inside it, its row, its column, and which digit of the number (1-based, 0 for none) centres in it.
    Training-only dense signals: colours and centres teach the small vision tower what is where; row, column and
    digit order teach the decoder where each token is, which the vision tower cannot see (it has only relative
    positions) and which lookup, relation and reading questions name."""
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

    centre, ordinal = torch.zeros(rows, cols, dtype=torch.long), torch.zeros(rows, cols, dtype=torch.long)

    def cell(x: float, y: float) -> tuple[int, int]:
        return min(int(y * height) // TOKEN_PIXELS, rows - 1), min(int(x * width) // TOKEN_PIXELS, cols - 1)

    for obj in example.scene["objects"]:
        centre[cell(*obj["centre"])] = 1 + SHAPES.index(obj["shape"])
    if "text" in example.scene:
        for index, (char, (x0, y0, x1, y1)) in enumerate(
            zip(example.scene["text"]["value"], _digit_boxes(example.scene), strict=True)
        ):
            at = cell((x0 + x1) / 2, (y0 + y1) / 2)
            centre[at], ordinal[at] = 1 + len(SHAPES) + int(char), index + 1
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([colour, centre, row, col, ordinal], -1).flatten(0, 1)


def _digit_boxes(scene: dict) -> list[list[float]]:
    """Relative [x0, y0, x1, y1] of each glyph of the scene's number, left to right."""
    text = scene["text"]
    x0, y0 = text["bbox"][:2]
    units = text["units"]
    return [
        [x0 + i * (GLYPH_WIDTH + GLYPH_GAP) / units, y0, x0 + (i * (GLYPH_WIDTH + GLYPH_GAP) + GLYPH_WIDTH) / units,
         y0 + GLYPH_HEIGHT / units]
        for i in range(len(text["value"]))
    ]  # fmt: skip


def _box_tokens(box: Sequence[float], size: int) -> torch.Tensor:
    """(tokens,) bool: the merged visual tokens (raster order) that a relative [x0, y0, x1, y1] box overlaps."""
    side = size // TOKEN_PIXELS
    x0, y0, x1, y1 = (min(max(int(v * size) // TOKEN_PIXELS, 0), side - 1) for v in box)
    mask = torch.zeros(side, side, dtype=torch.bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask.flatten()


def relevant_tokens(example: Example) -> torch.Tensor:
    """(parts, tokens) bool: the visual tokens that hold the answer, from the scene. One row for the whole answer,
    or one per digit for reading; no rows when nothing in the image holds it (existence "no"). A training-only
    target for where the answer positions should attend."""
    scene, size = example.scene, example.image.size[0]
    objects, query = scene["objects"], scene.get("query", {})
    if scene["task"] == "reading":
        return torch.stack([_box_tokens(box, size) for box in _digit_boxes(scene)])
    if scene["task"] == "lookup":
        chosen = [objects[(query["row"] - 1) * GRID + query["col"] - 1]]
    elif scene["task"] == "counting":
        chosen = [obj for obj in objects if obj["colour"] == query["colour"]]
    elif scene["task"] == "existence":
        chosen = [obj for obj in objects if (obj["colour"], obj["shape"]) == (query["colour"], query["shape"])]
    else:  # relation: the anchor and the answer
        chosen = [objects[query["anchor"]]] + [
            obj for obj in objects if f"{obj['colour']} {obj['shape']}" == example.answer
        ]
    if not chosen:
        return torch.zeros(0, size // TOKEN_PIXELS * (size // TOKEN_PIXELS), dtype=torch.bool)
    return torch.stack([_box_tokens(obj["bbox"], size) for obj in chosen]).any(0, keepdim=True)


def _queries(scene: dict, rng: random.Random) -> list[dict]:
    """Every other query of the scene's task about the same scene, shuffled (existence: yes and no alternate)."""
    task, objects = scene["task"], scene["objects"]
    if task == "lookup":
        queries = [{"row": r, "col": c} for r in range(1, GRID + 1) for c in range(1, GRID + 1)]
    elif task == "counting":
        queries = [{"colour": colour} for colour in sorted({obj["colour"] for obj in objects})]
    elif task == "existence":
        present = sorted({(obj["colour"], obj["shape"]) for obj in objects})
        absent = [combo for combo in COMBOS if combo not in present]
        rng.shuffle(present)
        rng.shuffle(absent)
        pairs = [combo for pair in zip(present, absent, strict=False) for combo in pair]
        return [{"colour": c, "shape": s} for c, s in pairs if {"colour": c, "shape": s} != scene["query"]]
    elif task == "relation":
        centres = [obj["centre"] for obj in objects]
        queries = [
            {"anchor": a, "direction": d}
            for a in range(len(objects))
            for d in DIRECTIONS
            if is_unambiguous(centres, a, d)
        ]
    else:
        return []  # reading has one question per image
    rng.shuffle(queries)
    return [query for query in queries if query != scene["query"]]


def conversation(example: Example, turns: int, rng: random.Random) -> list[tuple[str, str]]:
    """(question, answer) turns about one image: the example's own first, then up to turns - 1 distinct other
    queries (never a repeat, which could be answered by copying)."""
    qa = [(example.question, example.answer)]
    for query in _queries(example.scene, rng)[: turns - 1]:
        scene = {**example.scene, "query": query}
        qa.append((question_for(scene), answer_for(scene)))
    return qa


def encode_conversation(processor, image, turns: Sequence[tuple[str, str]]) -> dict:
    """Processor outputs for a multi-turn chat about one image, with `labels` on every answer and its end token
    (the first turn is exactly what inference sees)."""
    text = prompt_text(processor, turns[0][0]) + turns[0][1] + ANSWER_END
    for question, answer in turns[1:]:
        messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
        text += "\n" + processor.apply_chat_template(messages, add_generation_prompt=True) + answer + ANSWER_END
    encoded = dict(processor(images=[image], text=[text], return_tensors="pt"))
    ids = encoded["input_ids"][0]
    tokenizer = processor.tokenizer
    start = tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
    end = tokenizer.convert_tokens_to_ids(ANSWER_END)
    labels = torch.full_like(ids, -100)
    inside = False
    for position in range(len(ids)):
        if inside:
            labels[position] = ids[position]
            inside = ids[position].item() != end
        elif ids[position - len(start) + 1 : position + 1].tolist() == start:
            inside = True
    encoded["labels"] = labels[None]
    return encoded


class TrainingStream(IterableDataset):
    """Endless training examples, task types in turn, example seeds from the training block: deterministic order.
    Each image carries up to `turns` questions (more answer tokens per forward pass of its 256 visual tokens)."""

    def __init__(self, processor, tasks: Sequence[str] = TASK_TYPES, start: int = 0, turns: int = 1):
        self.processor, self.tasks, self.start, self.turns = processor, tuple(tasks), start, turns

    def __iter__(self) -> Iterator[dict]:
        index = self.start
        while True:
            task = self.tasks[index % len(self.tasks)]
            example = make_example(task, example_seed(TRAIN_SEED, index // len(self.tasks)))
            turns = conversation(example, self.turns, random.Random(example.seed))
            encoded = encode_conversation(self.processor, example.image, turns)
            yield {
                **encoded,
                "task": task,
                "token_targets": token_targets(example),
                "relevant": relevant_tokens(example),
            }
            index += 1


def held_out(num_per_task: int, base_seed: int, tasks: Sequence[str] = TASK_TYPES) -> list[Example]:
    """Examples from a seed block disjoint from training, interleaved by task."""
    return [make_example(task, example_seed(base_seed, i)) for i in range(num_per_task) for task in tasks]
