"""Built-in 5x7 bitmap digits so rendered text never depends on the fonts installed on a machine."""

from PIL import ImageDraw

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 7
GLYPH_GAP = 2
GLYPHS: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}


def text_extent(text: str) -> tuple[int, int]:
    """Width and height of a digit string in font pixels (before scaling), so layouts can reserve space."""
    return len(text) * (GLYPH_WIDTH + GLYPH_GAP) - GLYPH_GAP, GLYPH_HEIGHT


def draw_text(
    draw: ImageDraw.ImageDraw, text: str, origin: tuple[int, int], scale: int, fill: tuple[int, int, int]
) -> None:
    """Draw a digit string with its top-left corner at origin, each font pixel a scale x scale block."""
    x0, y0 = origin
    for index, char in enumerate(text):
        left = x0 + index * (GLYPH_WIDTH + GLYPH_GAP) * scale
        for row, bits in enumerate(GLYPHS[char]):
            for col, bit in enumerate(bits):
                if bit == "#":
                    x, y = left + col * scale, y0 + row * scale
                    draw.rectangle((x, y, x + scale - 1, y + scale - 1), fill=fill)
