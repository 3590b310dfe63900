"""The demo model's training stream, its dense per-token targets, and held-out splits of the task suite."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import IterableDataset

from ..evaluation.inputs import prompt_text
from .tasks import TASK_TYPES, TRAIN_SEED, Example, answer_for, example_seed, make_example, question_for
from .tasks.font import GLYPH_GAP, GLYPH_HEIGHT, GLYPH_WIDTH
from .tasks.geometry import is_unambiguous, nearest_in_direction
from .tasks.scenes import COLOUR_NAMES, LOOKUP_GRID
from .tasks.vocab import BACKGROUND, COLOURS, COMBOS, DIRECTIONS, SHAPES, TEXT_COLOUR

TOKEN_PIXELS = 28  # one merged visual token covers 28 x 28 pixels
STRIDE = 4
PALETTE = (None, *(COLOURS[name] for name in COLOUR_NAMES), TEXT_COLOUR)  # class 0: background
NUM_COLOUR_CLASSES = len(PALETTE)
NUM_CENTRE_CLASSES = 1 + len(SHAPES) + 10  # nothing, a shape's centre, a digit's centre
MAX_DIGITS = 5  # the reading task's longest number (tasks/scenes.py: _reading)
# a neighbour's (colour, shape) as two 1-based classes (0: no neighbour)
NEIGHBOUR_CLASSES = {(c, s): [1 + COLOUR_NAMES.index(c), 1 + SHAPES.index(s)] for c, s in COMBOS}
NEIGHBOUR_SPLITS = (1 + len(COLOUR_NAMES), 1 + len(SHAPES)) * len(DIRECTIONS)  # class counts of _neighbours' columns

ANSWER_END = "<|im_end|>"  # the demo model's chat template (Qwen2.5-VL) ends each turn with it


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


def token_targets(example: Example) -> torch.Tensor:
    """(tokens, 5 + 2 * len(DIRECTIONS)) long, per visual token in raster order: the palette class covering most of
    it, what centre (if any) falls inside it, its row, its column, which digit of the number (1-based, 0 for none)
    centres in it, and its neighbours (see _neighbours).
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

    centre, ordinal = torch.zeros(rows * cols, dtype=torch.long), torch.zeros(rows * cols, dtype=torch.long)
    for obj in example.scene["objects"]:
        centre[centre_token(obj["centre"], width)] = 1 + SHAPES.index(obj["shape"])
    if "text" in example.scene:
        digits = zip(example.scene["text"]["value"], _digit_centres(example.scene), strict=True)
        for index, (char, point) in enumerate(digits):
            at = centre_token(point, width)
            centre[at], ordinal[at] = 1 + len(SHAPES) + int(char), index + 1
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    own = torch.stack([colour.flatten(), centre, row.flatten(), col.flatten(), ordinal], -1)
    return torch.cat([own, _neighbours(example.scene, width)], 1)


def _neighbours(scene: dict, size: int) -> torch.Tensor:
    """(tokens, 2 * len(DIRECTIONS)) long: at the centre token of each shape of a grid scene, the colour and shape of
    the next shape in each direction (1-based; 0 at the grid's edge); -100 elsewhere. The visual tokens then learn
    what lies next to them, so a relation question only has to find its anchor, as an existence question does (with
    two hops, anchor then neighbour, relation never left its answer prior)."""
    targets = torch.full(((size // TOKEN_PIXELS) ** 2, 2 * len(DIRECTIONS)), -100)
    if "grid" not in scene:
        return targets
    at = {(obj["row"], obj["col"]): obj for obj in scene["objects"]}
    for (row, col), obj in at.items():
        classes = []
        for dx, dy in DIRECTIONS.values():
            other = at.get((row + dy, col + dx))
            classes += [0, 0] if other is None else NEIGHBOUR_CLASSES[other["colour"], other["shape"]]
        targets[centre_token(obj["centre"], size)] = torch.tensor(classes)
    return targets


def _digit_centres(scene: dict) -> list[tuple[float, float]]:
    """Relative (x, y) centre of each glyph of the scene's number, left to right."""
    text = scene["text"]
    x0, y0 = text["bbox"][:2]
    units = text["units"]
    return [
        (x0 + (i * (GLYPH_WIDTH + GLYPH_GAP) + GLYPH_WIDTH / 2) / units, y0 + GLYPH_HEIGHT / 2 / units)
        for i in range(len(text["value"]))
    ]


FIELDS = ("task", "colour", "shape", "row", "col", "direction", "part")  # what a question asks, answer_guides' columns


def field_sizes(lookup_grid: int = LOOKUP_GRID) -> dict[str, int]:
    """Number of classes of each of `FIELDS`, with lookup grids up to `lookup_grid` cells a side."""
    sizes = [len(TASK_TYPES), len(COLOUR_NAMES), len(SHAPES), lookup_grid, lookup_grid, len(DIRECTIONS), MAX_DIGITS]
    return dict(zip(FIELDS, sizes, strict=True))


GUIDES = ("fields", "first_attention", "second_attention")  # answer_guides' outputs, as TrainingStream names them


def centre_token(point: Sequence[float], size: int) -> int:
    """Raster index of the merged visual token that holds a relative (x, y) point."""
    side = size // TOKEN_PIXELS
    x, y = (min(int(v * size) // TOKEN_PIXELS, side - 1) for v in point)
    return y * side + x


def _attend(tokens: Sequence[int], size: int, sink: bool = False) -> torch.Tensor:
    """(1 + tokens,) attention target: uniform over the given visual tokens and, if sink, the sink (index 0)."""
    target = torch.zeros(1 + (size // TOKEN_PIXELS) ** 2)
    target[[1 + token for token in tokens] + ([0] if sink else [])] = 1.0
    return target / target.sum()


def answer_guides(scene: dict, size: int, number_end: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-only targets for each answer token of a scene's question (its end token excluded, but for reading
    with `number_end`, where its first layer looks at the last digit: the number ends there), as seen from the
    position that predicts it: what the question asks (`FIELDS`, -100 where it does not apply), and where two
    consecutive decoder layers should look, over (sink, visual tokens). The sink stands for "nothing here"
    (existence "no"), and counting looks at the sink plus one centre per counted shape, so the sink's share,
    1 / (n + 1), gives the count. Relation looks at the anchor, then at the answer next to it; other tasks leave
    the second layer free (all-zero rows).

    Returns (fields (n, len(FIELDS)) long, first (n, 1 + tokens), second (n, 1 + tokens))."""
    task, objects, query = scene["task"], scene["objects"], scene.get("query", {})
    fields = dict.fromkeys(FIELDS, -100) | {"task": TASK_TYPES.index(task)}
    empty = torch.zeros(1 + (size // TOKEN_PIXELS) ** 2)
    centres = [centre_token(obj["centre"], size) for obj in objects]
    if task == "reading":
        rows = [
            (fields | {"part": i}, _attend([centre_token(point, size)], size), empty)
            for i, point in enumerate(_digit_centres(scene))
        ]
        if number_end:
            rows.append((dict.fromkeys(FIELDS, -100), rows[-1][1], empty))
    elif task == "lookup":
        fields |= {"row": query["row"] - 1, "col": query["col"] - 1}
        asked = (query["row"] - 1) * scene["grid"]["cols"] + query["col"] - 1
        rows = [(fields, _attend([centres[asked]], size), empty)]
    elif task == "counting":
        fields |= {"colour": COLOUR_NAMES.index(query["colour"])}
        chosen = [c for c, obj in zip(centres, objects, strict=True) if obj["colour"] == query["colour"]]
        rows = [(fields, _attend(chosen, size, sink=True), empty)]
    elif task == "existence":
        fields |= {"colour": COLOUR_NAMES.index(query["colour"]), "shape": SHAPES.index(query["shape"])}
        chosen = [
            c
            for c, obj in zip(centres, objects, strict=True)
            if (obj["colour"], obj["shape"]) == (query["colour"], query["shape"])
        ]
        rows = [(fields, _attend(chosen, size, sink=not chosen), empty)]
    elif task == "relation":
        anchor = objects[query["anchor"]]
        fields |= {
            "colour": COLOUR_NAMES.index(anchor["colour"]), "shape": SHAPES.index(anchor["shape"]),
            "direction": list(DIRECTIONS).index(query["direction"]),
        }  # fmt: skip
        target = nearest_in_direction([obj["centre"] for obj in objects], query["anchor"], query["direction"])
        first, second = _attend([centres[query["anchor"]]], size), _attend([centres[target]], size)
        rows = [(fields | {"part": part}, first, second) for part in range(2)]  # colour word, shape word
    else:
        raise ValueError(f"unknown task {task!r}")
    return (
        torch.tensor([[row[0][name] for name in FIELDS] for row in rows]),
        torch.stack([row[1] for row in rows]),
        torch.stack([row[2] for row in rows]),
    )


def _queries(scene: dict, rng: random.Random) -> list[dict]:
    """Every other query of the scene's task about the same scene, shuffled (existence: yes and no alternate)."""
    task, objects = scene["task"], scene["objects"]
    if task == "lookup":
        rows, cols = scene["grid"]["rows"], scene["grid"]["cols"]
        queries = [{"row": r, "col": c} for r in range(1, rows + 1) for c in range(1, cols + 1)]
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


def conversation(example: Example, turns: int, rng: random.Random) -> list[tuple[str, str, dict]]:
    """(question, answer, scene with that query) turns about one image: the example's own first, then up to
    turns - 1 distinct other queries (never a repeat, which could be answered by copying)."""
    qa = [(example.question, example.answer, example.scene)]
    for query in _queries(example.scene, rng)[: turns - 1]:
        scene = {**example.scene, "query": query}
        qa.append((question_for(scene), answer_for(scene), scene))
    return qa


class TrainingStream(IterableDataset):
    """Endless training examples, task types in turn (a type listed twice comes twice as often), one training-block
    seed per example: deterministic order.
    Each image carries up to `turns` questions (more answer tokens per forward pass of its 256 visual tokens); with
    `number_end`, reading's guides also cover its end token (`answer_guides`); lookups are on `lookup_grid` grids."""

    def __init__(
        self,
        processor,
        tasks: Sequence[str] = TASK_TYPES,
        start: int = 0,
        turns: int = 1,
        number_end: bool = False,
        lookup_grid: int = LOOKUP_GRID,
    ):
        self.processor, self.tasks, self.start, self.turns = processor, tuple(tasks), start, turns
        self.number_end, self.lookup_grid = number_end, lookup_grid

    def __iter__(self) -> Iterator[dict]:
        index = self.start
        while True:
            task = self.tasks[index % len(self.tasks)]
            example = make_example(task, example_seed(TRAIN_SEED, index), lookup_grid=self.lookup_grid)
            turns = conversation(example, self.turns, random.Random(example.seed))
            guides = [answer_guides(scene, example.image.size[0], self.number_end) for _, _, scene in turns]
            yield {
                **encode_conversation(self.processor, example.image, [(q, a) for q, a, _ in turns]),
                "task": task,
                "token_targets": token_targets(example),
                **{name: torch.cat([g[i] for g in guides]) for i, name in enumerate(GUIDES)},
            }
            index += 1


def held_out(
    num_per_task: int, base_seed: int, tasks: Sequence[str] = TASK_TYPES, lookup_grid: int = LOOKUP_GRID
) -> list[Example]:
    """Examples from a seed block disjoint from training, interleaved by task."""
    return [
        make_example(task, example_seed(base_seed, i), lookup_grid=lookup_grid)
        for i in range(num_per_task)
        for task in tasks
    ]
