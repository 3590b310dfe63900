"""Rasterise a scene with PIL only (no system fonts) and encode it as PNG: pixels are a pure function of the scene."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw

from .font import draw_text
from .vocab import BACKGROUND, COLOURS, TEXT_COLOUR

MIN_IMAGE_SIZE = 112  # below this the bitmap font would be scaled to zero pixels


def _pixels(box: Sequence[float], image_size: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box of a normalised box."""
    x0, y0, x1, y1 = (round(value * image_size) for value in box)
    return x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]
) -> None:
    """Draw one filled circle, square or upward triangle inside box."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: dict, image_size: int = 448) -> Image.Image:
    """Draw a scene as an image_size x image_size RGB image on a plain light background."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene["objects"]:
        _draw_shape(draw, obj["shape"], _pixels(obj["bbox"], image_size), COLOURS[obj["colour"]])
    if "text" in scene:
        text = scene["text"]
        x0, y0, _, _ = _pixels(text["bbox"], image_size)
        draw_text(draw, text["value"], (x0, y0), max(1, image_size // text["units"]), TEXT_COLOUR)
    return image


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image; the canonical form used for storage and determinism checks."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
