"""Draw predicted instances over an image: one colour per phrase, masks blended, boxes outlined, a legend."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from sam3_model.prompting import prompt_text
from sam3_model.records import ConceptResult, decode_mask

_PALETTE = np.array([  # tab10
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
], dtype=np.float32)


def render_overlay(image: Image.Image, results: Sequence[ConceptResult], alpha: float = 0.5) -> Image.Image:
    """The image with every result's instances drawn in its phrase's colour, and a legend (phrase, count)."""
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()  # (H, W, 3)
    colours = [_PALETTE[k % len(_PALETTE)] for k in range(len(results))]
    for result, colour in zip(results, colours):
        for inst in result.instances:
            mask = decode_mask(inst.mask).astype(bool)  # (H, W)
            if mask.shape != canvas.shape[:2]:
                continue  # a mask of another image size cannot be drawn here
            canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for result, colour in zip(results, colours):
        rgb = tuple(int(c) for c in colour)
        for inst in result.instances:
            draw.rectangle(inst.box_xyxy_px, outline=rgb, width=max(1, round(min(out.size) / 200)))
    for k, (result, colour) in enumerate(zip(results, colours)):  # legend, top left
        label = f"{prompt_text(result.prompt)} ({len(result.instances)})"
        y = 2 + 12 * k
        draw.rectangle((2, y, 10, y + 8), fill=tuple(int(c) for c in colour))
        draw.text((13, y - 1), label, fill=(255, 255, 255))
    return out
