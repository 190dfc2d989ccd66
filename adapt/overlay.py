"""Draw predicted instances over an image: one colour per phrase, masks blended, boxes outlined, each instance's
score on a label at its box, and a legend (phrase, count) on a dark backdrop.

Text scales with the image. An image whose longer side is under SMALL_SIDE pixels is first enlarged by an integer
factor (nearest neighbour, so pixels stay sharp) and gets its legend in a dark strip below it instead of over it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from sam3_model.prompting import prompt_text
from sam3_model.records import ConceptResult, decode_mask

from .drawing import Font, draw_text_label, font_px_for, line_height, load_font, readable_on, shade, text_size

_PALETTE = np.array([  # tab10
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
], dtype=np.float32)
SMALL_SIDE = 256  # images with a shorter longer side are enlarged and get the legend beside, not over, them
LEGEND_BG = (24, 24, 24)
LEGEND_OPACITY = 0.72


def overlay_scale(width: int, height: int) -> int:
    """The integer factor `render_overlay` enlarges a `width` x `height` image by (1 unless it is small)."""
    longer = max(width, height, 1)
    return 1 if longer >= SMALL_SIDE else -(-SMALL_SIDE // longer)


def render_overlay(image: Image.Image, results: Sequence[ConceptResult], alpha: float = 0.5) -> Image.Image:
    """The image with every result's instances drawn in its phrase's colour (mask, box, score label) and a legend
    (phrase, count). Small images come back enlarged by `overlay_scale`, with the legend in a strip below."""
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()  # (H, W, 3)
    colours = [tuple(int(c) for c in _PALETTE[k % len(_PALETTE)]) for k in range(len(results))]
    for result, colour in zip(results, colours):
        for inst in result.instances:
            mask = decode_mask(inst.mask).astype(bool)  # (H, W)
            if mask.shape != canvas.shape[:2]:
                continue  # a mask of another image size cannot be drawn here
            canvas[mask] = (1 - alpha) * canvas[mask] + alpha * np.asarray(colour, np.float32)
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    scale = overlay_scale(*out.size)
    if scale > 1:
        out = out.resize((out.width * scale, out.height * scale), Image.NEAREST)
    _draw_boxes_and_scores(out, results, colours, scale)
    entries = [(colour, f"{prompt_text(r.prompt)} ({len(r.instances)})") for r, colour in zip(results, colours)]
    if not entries:
        return out
    if scale > 1:
        return _legend_strip(out, entries)
    _draw_legend(out, entries, (0, 0), out.size)
    return out


def _draw_boxes_and_scores(out: Image.Image, results: Sequence[ConceptResult], colours: list[tuple[int, int, int]],
                           scale: int) -> None:  # fmt: skip
    """Outline every instance's box and put its score ("0.87") on a label in its colour at the box's top left."""
    draw = ImageDraw.Draw(out)
    width = max(1, round(min(out.size) / 200))
    boxes = [(tuple(v * scale for v in inst.box_xyxy_px), inst.score, colour)
             for result, colour in zip(results, colours) for inst in result.instances]
    for box, _, colour in boxes:
        draw.rectangle(box, outline=colour, width=width)
    font = load_font(font_px_for(max(out.size), 0.02))
    height = line_height(font) + 2
    placed: list[tuple[int, int, int, int]] = []
    for (x0, y0, _, _), score, colour in boxes:  # labels after every box, so no box crosses a label
        text = f"{score:.2f}"
        top = y0 - height if y0 - height >= 0 else y0 + width  # above the box, else just inside it
        label_w = text_size(text, font)[0] + 2
        for _ in range(8):  # step down past labels already there (two phrases finding the same object)
            hit = next((b for b in placed if b[0] < x0 + label_w and x0 < b[2] and b[1] < top + height and top < b[3]),
                       None)
            if hit is None:
                break
            top = hit[3]
        placed.append(draw_text_label(out, (int(x0), int(top)), text, font, fg=readable_on(colour), bg=colour,
                                      opacity=0.85, pad=1))


def legend_box(image_size: tuple[int, int], texts: Sequence[str]) -> tuple[int, int, int, int]:
    """The (x0, y0, x1, y1) backdrop of a legend of `texts` at (0, 0) for an image of `image_size` (W, H)."""
    font = load_font(font_px_for(max(image_size)))
    pad, swatch = _legend_metrics(font)
    width = max(text_size(t, font)[0] for t in texts) + swatch + 3 * pad
    return 0, 0, width, pad + len(texts) * (line_height(font) + pad)


def _legend_metrics(font: Font) -> tuple[int, int]:
    height = line_height(font)
    return max(2, height // 4), max(6, int(height * 0.7))  # padding, swatch side


def _draw_legend(out: Image.Image, entries: Sequence[tuple[tuple[int, int, int], str]], origin: tuple[int, int],
                 image_size: tuple[int, int], backdrop: bool = True) -> None:  # fmt: skip
    """One line per phrase (colour swatch, "phrase (count)") from `origin`, sized for an image of `image_size`,
    on a dark semi-opaque backdrop (`backdrop`; off when drawn on the dark strip)."""
    font = load_font(font_px_for(max(image_size)))
    pad, swatch = _legend_metrics(font)
    height = line_height(font)
    if backdrop:
        _, _, x1, y1 = legend_box(image_size, [t for _, t in entries])
        shade(out, (origin[0], origin[1], origin[0] + x1, origin[1] + y1), LEGEND_BG, LEGEND_OPACITY)
    draw = ImageDraw.Draw(out)
    for k, (colour, text) in enumerate(entries):
        y = origin[1] + pad + k * (height + pad)
        top = y + (height - swatch) // 2
        draw.rectangle((origin[0] + pad, top, origin[0] + pad + swatch, top + swatch), fill=colour)
        draw.text((origin[0] + 2 * pad + swatch, y), text, fill=(255, 255, 255), font=font)


def _legend_strip(out: Image.Image, entries: Sequence[tuple[tuple[int, int, int], str]]) -> Image.Image:
    """`out` with a dark strip below it holding the legend (wider than `out` when the legend needs it)."""
    _, _, x1, y1 = legend_box(out.size, [t for _, t in entries])
    sheet = Image.new("RGB", (max(out.width, x1), out.height + y1), LEGEND_BG)
    sheet.paste(out, (0, 0))
    _draw_legend(sheet, entries, (0, out.height), out.size, backdrop=False)
    return sheet
