"""Legible text on pictures: a scalable font, text on a semi-opaque backdrop, sizes that follow the image."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 pixels, x1/y1 exclusive

MIN_FONT_PX = 12


def font_px_for(extent: int, fraction: float = 0.024) -> int:
    """A font size in pixels for a picture whose longer side is `extent` pixels (at least MIN_FONT_PX)."""
    return max(MIN_FONT_PX, round(extent * fraction))


@lru_cache(maxsize=32)
def load_font(size_px: int) -> Font:
    """A TrueType font of `size_px` pixels: PIL's bundled one (PIL >= 10.1), else DejaVu, else PIL's bitmap font."""
    try:
        return ImageFont.load_default(size=size_px)  # FreeType build of PIL >= 10.1: scalable
    except (TypeError, OSError, ImportError, AttributeError):
        pass
    for name in ("DejaVuSans.ttf", "Arial.ttf", "LiberationSans-Regular.ttf"):
        try:
            return ImageFont.truetype(name, size_px)
        except OSError:
            continue
    return ImageFont.load_default()  # fixed ~11 px bitmap font: small, but never a crash


def text_size(text: str, font: Font) -> tuple[int, int]:
    """(width, height) in pixels of `text` drawn with `font` (height from the font's ascent and descent)."""
    if hasattr(font, "getlength"):
        return int(np.ceil(font.getlength(text))), line_height(font)
    x0, _, x1, _ = _MEASURE.textbbox((0, 0), text, font=font)
    return x1 - x0, line_height(font)


def line_height(font: Font) -> int:
    """Pixels from the top of one line of `font` to the top of the next."""
    try:
        ascent, descent = font.getmetrics()
        return ascent + descent
    except AttributeError:  # a bitmap font without metrics
        _, y0, _, y1 = _MEASURE.textbbox((0, 0), "Ag", font=font)
        return y1 - y0 + 2


def shade(image: Image.Image, box: Box, fill: tuple[int, int, int] = (0, 0, 0), opacity: float = 0.7) -> None:
    """Blend `box` of the RGB `image` towards `fill` in place (`opacity` 1: solid)."""
    x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(image.width, box[2]), min(image.height, box[3])
    if x1 <= x0 or y1 <= y0:
        return
    region = image.crop((x0, y0, x1, y1))
    image.paste(Image.blend(region, Image.new("RGB", region.size, fill), opacity), (x0, y0))


def draw_text_label(image: Image.Image, xy: tuple[int, int], text: str, font: Font,
                    fg: tuple[int, int, int] = (255, 255, 255), bg: tuple[int, int, int] = (0, 0, 0),
                    opacity: float = 0.7, pad: int = 2) -> Box:
    """Draw `text` with its top left at `xy` on a backdrop (`bg` at `opacity`) kept inside the RGB `image`;
    returns the backdrop's box."""
    w, h = text_size(text, font)
    x0 = min(max(0, xy[0]), max(0, image.width - w - 2 * pad))
    y0 = min(max(0, xy[1]), max(0, image.height - h - 2 * pad))
    box = (x0, y0, x0 + w + 2 * pad, y0 + h + 2 * pad)
    shade(image, box, bg, opacity)
    ImageDraw.Draw(image).text((x0 + pad, y0 + pad), text, fill=fg, font=font)
    return box


def readable_on(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `colour`."""
    r, g, b = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def wrap(text: str, font: Font, width_px: int, max_lines: int = 3) -> list[str]:
    """`text` broken into lines at most `width_px` wide (at most `max_lines`, the last cut with '…')."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_size(f"{lines[-1]} {word}", font)[0] <= width_px:
            lines[-1] = f"{lines[-1]} {word}"
            continue
        while text_size(word, font)[0] > width_px and len(word) > 1:  # a word wider than the line: cut it
            cut = next(k for k in range(len(word), 0, -1) if text_size(word[:k], font)[0] <= width_px or k == 1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], ellipsize(lines[max_lines - 1], font, width_px, always=True)]
    return lines


def ellipsize(text: str, font: Font, width_px: int, always: bool = False) -> str:
    """`text` when it fits `width_px` (unless `always`: text follows), else cut and ended with '…' to fit."""
    if not always and text_size(text, font)[0] <= width_px:
        return text
    while text and text_size(text + "…", font)[0] > width_px:
        text = text[:-1]
    return text + "…"


_MEASURE = ImageDraw.Draw(Image.new("RGB", (1, 1)))
