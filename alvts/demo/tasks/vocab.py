"""Closed vocabularies of the task suite (colours, shapes, directions) so exact-match answers stay well defined."""

from itertools import product

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 90, 225),
    "yellow": (235, 195, 0),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND: tuple[int, int, int] = (245, 245, 240)
TEXT_COLOUR: tuple[int, int, int] = (25, 25, 25)

COMBOS: tuple[tuple[str, str], ...] = tuple(product(COLOURS, SHAPES))
# Fixed popularity ranking of (colour, shape) for existence scenes: a stride-7 permutation of the 18 combos
# (gcd(7, 18) == 1, so every combo appears once) with Zipf weights, so "popular" negatives mean something.
POPULARITY: tuple[tuple[str, str], ...] = tuple(COMBOS[(7 * rank) % len(COMBOS)] for rank in range(len(COMBOS)))
POPULARITY_WEIGHTS: tuple[float, ...] = tuple(1.0 / (rank + 1) for rank in range(len(COMBOS)))
POPULAR_TOP_K = 3

NEGATIVE_MODES: tuple[str, ...] = ("random", "popular", "adversarial")
# Unit vectors in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "above": (0, -1), "below": (0, 1)}
