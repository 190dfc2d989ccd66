"""Overlays people can read: a legend on a dark backdrop (or in a strip below a small image), text that grows with
the image, and each instance's score on a label at its box."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFont

from adapt.drawing import font_px_for, load_font, wrap
from adapt.overlay import LEGEND_BG, legend_box, overlay_scale, render_overlay
from sam3_model.records import ConceptPrompt, ConceptResult, Instance, encode_mask


def _result(phrase: str, boxes: list[tuple[int, int, int, int]], size_hw: tuple[int, int],
            scores: list[float] | None = None) -> ConceptResult:
    """One phrase's result: a filled rectangle mask per xyxy box."""
    instances = []
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        mask = np.zeros(size_hw, np.uint8)
        mask[y0:y1, x0:x1] = 1
        instances.append(Instance(encode_mask(mask), (x0, y0, x1, y1), scores[k] if scores else 0.87))
    return ConceptResult(image_id=0, prompt=ConceptPrompt(text=phrase), presence=0.9, instances=instances,
                         image_size=size_hw)


def _luminance(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., :3].astype(float) @ np.array([0.299, 0.587, 0.114])


def test_legend_sits_on_a_dark_backdrop_on_a_white_photo() -> None:
    white = Image.new("RGB", (800, 600), (255, 255, 255))
    results = [_result("sushi roll", [(400, 300, 500, 400)], (600, 800)), _result("chopsticks", [], (600, 800))]
    out = render_overlay(white, results)
    assert out.size == white.size  # a large image keeps its size: the legend goes over it
    x0, y0, x1, y1 = legend_box(out.size, ["sushi roll (1)", "chopsticks (0)"])
    backdrop = _luminance(np.asarray(out)[y0:y1, x0:x1])  # (h, w)
    assert x1 - x0 > 50 and y1 - y0 > 2 * font_px_for(800)  # two lines of text
    assert np.median(backdrop) < 100  # dark under the white text: readable on a white photo
    assert (backdrop > 200).mean() > 0.02  # the white text is there
    assert (_luminance(np.asarray(out)[y1 + 5 :, x1 + 5 : 390]) == 255).all()  # nothing else was shaded


def test_each_instance_shows_its_score_at_its_box() -> None:
    size = (480, 640)  # (H, W)
    white = Image.new("RGB", size[::-1], (255, 255, 255))
    boxes = [(100, 200, 200, 300), (400, 150, 550, 400)]
    high = np.asarray(render_overlay(white, [_result("cat", boxes, size, [0.87, 0.91])])).astype(int)
    low = np.asarray(render_overlay(white, [_result("cat", boxes, size, [0.12, 0.34])])).astype(int)
    changed = (high != low).any(-1)  # (H, W): only the score labels differ
    ys, xs = np.nonzero(changed)
    assert len(ys) > 0
    for x0, y0, x1, y1 in boxes:  # a label at each box's top left, just above it
        near = changed[max(0, y0 - 40) : y0 + 5, x0 : x0 + 80]
        assert near.sum() > 20
    far = changed.copy()
    for x0, y0, x1, y1 in boxes:
        far[max(0, y0 - 40) : y0 + 5, x0 : x0 + 80] = False
    assert not far.any()  # nothing else depends on the score


def test_small_images_are_enlarged_with_the_legend_below() -> None:
    rng = np.random.default_rng(0)
    pixels = (rng.random((84, 84, 3)) * 255).astype(np.uint8)
    phrase = "a rather long phrase naming one very particular thing in a tiny image"
    out = render_overlay(Image.fromarray(pixels), [_result(phrase, [], (84, 84))])
    k = overlay_scale(84, 84)
    assert k >= 3 and out.width >= 84 * k and out.height > 84 * k
    drawn = np.asarray(out)
    assert np.array_equal(drawn[: 84 * k, : 84 * k], pixels.repeat(k, 0).repeat(k, 1))  # image untouched, sharp
    strip = drawn[84 * k :]
    assert (strip == LEGEND_BG).all(-1).mean() > 0.6 and (_luminance(strip) > 200).any()  # dark strip, white text
    assert out.width > 84 * k  # the long legend widened the picture rather than being cut off
    assert overlay_scale(1024, 768) == 1 and overlay_scale(255, 100) == 2 and overlay_scale(32, 8) == 8


def test_text_grows_with_the_image() -> None:
    assert font_px_for(300) < font_px_for(1000) < font_px_for(3000)
    assert font_px_for(10) >= 12  # never unreadably small
    heights = [legend_box((side, side), ["phrase (3)"])[3] for side in (300, 1000, 3000)]
    assert heights[0] < heights[1] < heights[2]


def test_fonts_are_scalable_when_pil_can() -> None:
    font = load_font(30)
    if not isinstance(font, ImageFont.FreeTypeFont):
        pytest.skip("this PIL has no FreeType: the bitmap fallback is used")
    assert font.size == 30 and load_font(30) is font  # cached


def test_wrap_keeps_lines_within_width() -> None:
    font = load_font(12)
    lines = wrap("teacher_confidence: pair dropped: 2 unmatched candidates (best score 0.489)", font, 100, 3)
    assert 1 < len(lines) <= 3
    assert all(font.getlength(line) <= 100 for line in lines)
    assert lines[-1].endswith("…") or " ".join(lines).endswith("0.489)")
