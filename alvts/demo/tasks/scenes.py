"""Seeded scene generators, one per task type: each returns a JSON-serialisable scene and its intended answer."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence

from .font import GLYPH_GAP, GLYPH_WIDTH, text_extent
from .geometry import MARGIN, centre, is_unambiguous, nearest_in_direction, place, square
from .vocab import COLOURS, COMBOS, DIRECTIONS, NEGATIVE_MODES, POPULAR_TOP_K, POPULARITY, POPULARITY_WEIGHTS, SHAPES

LOOKUP_GRID = 4  # a lookup grid is LOOKUP_GRID x LOOKUP_GRID cells (6 x 6, tried: testbed README, g27 and g28)
MAX_LOOKUP_GRID = 7  # (1 - 2 * MARGIN) * TOKENS / 7 = 2.1 tokens per cell
RELATION_GRID = 4  # a relation grid: 16 distinct shapes
TEXT_UNITS = 112  # a font pixel is 1/TEXT_UNITS of the image side: at 448 px a glyph (5 x 7) with its gap fills
GLYPH_PITCH = GLYPH_WIDTH + GLYPH_GAP  # one 28-px visual token, so each digit lives in exactly one token
SHAPE_SIZES = (0.10, 0.14)  # side of a scattered shape as a fraction of the image side
TOKENS = 16  # visual tokens per image side at 448 px (28 px each)
COUNTING_SIZE = 0.05  # a counted shape (22 px at 448) fits inside one visual token

Scene = dict
Generator = Callable[[random.Random], tuple[Scene, str]]
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)


def _shape(colour: str, shape: str, box: list[float]) -> dict:
    """Scene entry for one drawn shape."""
    return {"colour": colour, "shape": shape, "bbox": box, "centre": centre(box)}


def _retry(rng: random.Random, attempt: Callable[[random.Random], tuple[Scene, str] | None]) -> tuple[Scene, str]:
    """Run attempt until it yields a scene, so generators can reject layouts that do not meet their constraints."""
    for _ in range(1000):
        result = attempt(rng)
        if result is not None:
            return result
    raise RuntimeError("scene constraints could not be met")


def _grid(combos: Sequence[tuple[str, str]], grid: int) -> list[dict]:
    """A grid x grid grid of shapes in raster order, one per (colour, shape), each knowing its 1-based row and col."""
    cell = (1 - 2 * MARGIN) / grid
    size = 0.6 * cell
    objects = []
    for index, (colour, shape) in enumerate(combos):
        row, col = divmod(index, grid)
        box = square(MARGIN + col * cell + (cell - size) / 2, MARGIN + row * cell + (cell - size) / 2, size)
        objects.append({**_shape(colour, shape, box), "row": row + 1, "col": col + 1})
    return objects


def _lookup(rng: random.Random, grid: int = LOOKUP_GRID) -> tuple[Scene, str]:
    """A grid of shapes; the question names one cell, so the answer lives in a few visual tokens, and which ones
    depends on the question."""
    objects = _grid([(rng.choice(COLOUR_NAMES), rng.choice(SHAPES)) for _ in range(grid * grid)], grid)
    row, col = rng.randint(1, grid), rng.randint(1, grid)
    query = {"row": row, "col": col}
    scene = {"task": "lookup", "grid": {"rows": grid, "cols": grid}, "objects": objects, "query": query}
    return scene, objects[(row - 1) * grid + col - 1]["colour"]


def _token_cells(rng: random.Random, count: int) -> list[tuple[int, int]]:
    """count distinct (row, col) token cells away from the border, no two touching (not even diagonally)."""
    inner = [(row, col) for row in range(1, TOKENS - 1) for col in range(1, TOKENS - 1)]
    for _ in range(1000):
        cells = rng.sample(inner, count)
        if all(max(abs(a - c), abs(b - d)) > 1 for i, (a, b) in enumerate(cells) for c, d in cells[i + 1 :]):
            return cells
    raise RuntimeError(f"could not place {count} shapes on separate tokens")


def _counting(rng: random.Random) -> tuple[Scene, str]:
    """1-4 shapes of the asked colour among 2-4 others, scattered, so the answer needs the whole image. Each shape
    sits inside one visual token (at 448 px) with empty tokens around it, so a shape is exactly one token. Counts
    stay small, as in counting benchmarks' common cases: a model this small reads a count from how its attention
    divides between the matches and a sink, and shares like 1/6 against 1/7 are beyond its precision."""
    target = rng.choice(COLOUR_NAMES)
    count = rng.randint(1, 4)
    others = [colour for colour in COLOUR_NAMES if colour != target]
    colours = [target] * count + [rng.choice(others) for _ in range(rng.randint(2, 4))]
    rng.shuffle(colours)
    pad = (1 / TOKENS - COUNTING_SIZE) / 2
    boxes = [
        square((col / TOKENS) + pad, (row / TOKENS) + pad, COUNTING_SIZE)
        for row, col in _token_cells(rng, len(colours))
    ]
    objects = [_shape(colour, rng.choice(SHAPES), box) for colour, box in zip(colours, boxes, strict=True)]
    return {"task": "counting", "objects": objects, "query": {"colour": target}}, str(count)


def _negative(rng: random.Random, combos: Sequence[tuple[str, str]], mode: str) -> tuple[str, str] | None:
    """An absent (colour, shape) sampled POPE-style: uniformly, among the most popular, or co-occurring in parts."""
    absent = [combo for combo in POPULARITY if combo not in combos]
    if mode == "popular":
        absent = absent[:POPULAR_TOP_K]
    elif mode == "adversarial":
        absent = [
            (colour, shape)
            for colour, shape in absent
            if any(c == colour and s != shape for c, s in combos) and any(s == shape and c != colour for c, s in combos)
        ]
    return rng.choice(absent) if absent else None


def _existence_attempt(rng: random.Random) -> tuple[Scene, str] | None:
    """One try at an existence scene: 3-6 shapes drawn by popularity, a positive or a POPE-style negative query."""
    combos = rng.choices(POPULARITY, weights=POPULARITY_WEIGHTS, k=rng.randint(3, 6))
    mode = None if rng.random() < 0.5 else rng.choice(NEGATIVE_MODES)
    query = rng.choice(combos) if mode is None else _negative(rng, combos, mode)
    if query is None:
        return None
    boxes = place(rng, len(combos), SHAPE_SIZES)
    objects = [_shape(colour, shape, box) for (colour, shape), box in zip(combos, boxes, strict=True)]
    scene = {
        "task": "existence",
        "objects": objects,
        "query": {"colour": query[0], "shape": query[1]},
        "negative_mode": mode,
    }
    return scene, "yes" if mode is None else "no"


def _reading(rng: random.Random) -> tuple[Scene, str]:
    """A 3-5 digit number in the bitmap font starting in a random token column of a random line, plus 1-3 distractor
    shapes; the answer is a multi-token string read glyph by glyph. Where the number is varies in both directions, so
    a reader has to find its digits by what they show, not by a fixed position."""
    text = str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(rng.randint(2, 4)))
    # glyph i fills token column k + i of token row m (at 448 px): one digit per visual token, the last one left of
    # the right margin
    width, height = text_extent(text)  # font pixels
    k = rng.randint(1, TOKENS - 1 - len(text))
    m = rng.randint(1, (int((1 - MARGIN) * TEXT_UNITS) - height) // GLYPH_PITCH)
    x, y = (GLYPH_PITCH * k + 1) / TEXT_UNITS, GLYPH_PITCH * m / TEXT_UNITS
    text_box = [round(x, 4), round(y, 4), round(x + width / TEXT_UNITS, 4), round(y + height / TEXT_UNITS, 4)]
    boxes = place(rng, rng.randint(1, 3), SHAPE_SIZES, avoid=[text_box])
    objects = [_shape(rng.choice(COLOUR_NAMES), rng.choice(SHAPES), box) for box in boxes]
    scene = {"task": "reading", "objects": objects, "text": {"value": text, "bbox": text_box, "units": TEXT_UNITS}}
    return scene, text


def _relation(rng: random.Random) -> tuple[Scene, str]:
    """A grid of distinct shapes; the question names one by what it is and asks for its neighbour in a direction, so
    where to look depends on the question: find the anchor anywhere, then the cell next to it."""
    objects = _grid(rng.sample(COMBOS, RELATION_GRID**2), RELATION_GRID)
    centres = [obj["centre"] for obj in objects]
    pairs = [(a, d) for a in range(len(objects)) for d in DIRECTIONS if is_unambiguous(centres, a, d)]
    anchor, direction = rng.choice(pairs)
    scene = {
        "task": "relation", "grid": {"rows": RELATION_GRID, "cols": RELATION_GRID}, "objects": objects,
        "query": {"anchor": anchor, "direction": direction},
    }  # fmt: skip
    target = objects[nearest_in_direction(centres, anchor, direction)]
    return scene, f"{target['colour']} {target['shape']}"


GENERATORS: dict[str, Generator] = {
    "lookup": _lookup,
    "counting": _counting,
    "existence": lambda rng: _retry(rng, _existence_attempt),
    "reading": _reading,
    "relation": _relation,
}
TASK_TYPES: tuple[str, ...] = tuple(GENERATORS)


def check_task(task: str) -> None:
    """Raise ValueError naming the valid tasks when task is not one of TASK_TYPES."""
    if task not in GENERATORS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASK_TYPES)}")


def check_lookup_grid(grid: int) -> None:
    """Raise ValueError unless a lookup grid of this side fits the 16 x 16 visual tokens (at least 2 per cell)."""
    if not 1 <= grid <= MAX_LOOKUP_GRID:
        raise ValueError(f"a lookup grid's side must be in [1, {MAX_LOOKUP_GRID}] (2 tokens per cell), got {grid}")


def generate_scene(task: str, seed: int, lookup_grid: int = LOOKUP_GRID) -> tuple[Scene, str]:
    """Scene and intended answer for (task, seed), from an RNG keyed by crc32(task) and seed (no salted hash()).
    `lookup_grid` sets a lookup grid's side."""
    check_task(task)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    check_lookup_grid(lookup_grid)
    rng = random.Random((zlib.crc32(task.encode()) << 64) | seed)
    return _lookup(rng, lookup_grid) if task == "lookup" else GENERATORS[task](rng)
