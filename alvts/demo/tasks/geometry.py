"""Layout in normalised [0, 1] image coordinates: non-overlapping placement and directional nearest-object queries."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

from .vocab import DIRECTIONS

MARGIN = 0.04  # empty border around the image
GAP = 0.02  # minimum free space between two boxes
CLEAR_AXIS_RATIO = 0.5  # the answer's sideways offset must be at most this fraction of its offset along the direction
CLEAR_DISTANCE_RATIO = 1.3  # every rival on the same side must be at least this much farther than the answer

Box = list[float]


def square(x: float, y: float, size: float) -> Box:
    """Square box [x0, y0, x1, y1] with top-left (x, y), rounded so JSON round trips are exact."""
    return [round(x, 4), round(y, 4), round(x + size, 4), round(y + size, 4)]


def overlaps(a: Sequence[float], b: Sequence[float], gap: float = GAP) -> bool:
    """Whether two boxes come closer than gap, i.e. would touch or overlap when drawn."""
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def place(rng: random.Random, count: int, size_range: tuple[float, float], avoid: Sequence[Box] = ()) -> list[Box]:
    """Sample count non-overlapping square boxes by rejection, restarting from scratch on a dead end."""
    for _ in range(100):
        boxes = list(avoid)
        for _ in range(count):
            for _ in range(200):
                size = rng.uniform(*size_range)
                box = square(rng.uniform(MARGIN, 1 - MARGIN - size), rng.uniform(MARGIN, 1 - MARGIN - size), size)
                if not any(overlaps(box, other) for other in boxes):
                    boxes.append(box)
                    break
            else:
                break
        else:
            return boxes[len(avoid) :]
    raise RuntimeError(f"could not place {count} boxes of size {size_range}")


def centre(box: Sequence[float]) -> list[float]:
    """Centre [x, y] of a box, rounded like the box itself."""
    return [round((box[0] + box[2]) / 2, 4), round((box[1] + box[3]) / 2, 4)]


def _offsets(
    centres: Sequence[Sequence[float]], anchor: int, direction: str
) -> Iterator[tuple[int, float, float, float]]:
    """(index, offset along direction, sideways offset, distance) of every other centre relative to the anchor."""
    dx, dy = DIRECTIONS[direction]
    ax, ay = centres[anchor]
    for index, (x, y) in enumerate(centres):
        if index != anchor:
            ox, oy = x - ax, y - ay
            yield index, ox * dx + oy * dy, abs(ox * dy - oy * dx), math.hypot(ox, oy)


def nearest_in_direction(centres: Sequence[Sequence[float]], anchor: int, direction: str) -> int | None:
    """Index of the nearest centre within 45 degrees of the direction from the anchor, None if there is none."""
    cone = [(distance, index) for index, along, side, distance in _offsets(centres, anchor, direction) if side <= along]
    return min(cone)[1] if cone else None


def is_unambiguous(centres: Sequence[Sequence[float]], anchor: int, direction: str) -> bool:
    """Whether the nearest object in the direction is clearly in that direction and clearly nearer than any rival."""
    target = nearest_in_direction(centres, anchor, direction)
    if target is None:
        return False
    offsets = {index: (along, side, distance) for index, along, side, distance in _offsets(centres, anchor, direction)}
    along, side, distance = offsets.pop(target)
    if side > CLEAR_AXIS_RATIO * along:
        return False
    return all(other >= CLEAR_DISTANCE_RATIO * distance for ahead, _, other in offsets.values() if ahead > 0)
