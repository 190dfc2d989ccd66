"""The images a VLM judge looks at (SAM 3 §D.4): the two-half mask view for MV and the red-box view for EV.

MV view: left half = the whole image with a box around the instance; right half = a zoomed-in crop around the
instance (with context), upscaled, the mask overlaid in semi-transparent fuchsia and its outline drawn solid, so
small objects stay visible and a fuchsia-ish object is not mistaken for the overlay. EV view: the image with every
accepted instance's bounding box drawn in red.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from sam3_model.records import Instance, decode_mask

FUCHSIA: tuple[int, int, int] = (255, 0, 255)
RED: tuple[int, int, int] = (255, 0, 0)
BACKGROUND: tuple[int, int, int] = (114, 114, 114)  # letterbox padding of the left half


def instance_mask(instance: Instance, size_hw: tuple[int, int]) -> np.ndarray:
    """The instance's binary mask as a bool (H, W) array of the image size (resized nearest when the RLE differs)."""
    h, w = size_hw
    try:
        mask = decode_mask(instance.mask).astype(bool)  # (h', w')
    except Exception:  # a missing or malformed RLE renders as an empty mask rather than crashing the judge
        return np.zeros((h, w), bool)
    if mask.shape != (h, w):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
    return mask


def instance_box(instance: Instance, size_hw: tuple[int, int],
                 mask: np.ndarray | None = None) -> tuple[int, int, int, int] | None:
    """Integer (x0, y0, x1, y1) box of the instance, x1/y1 exclusive, clipped to the image; None if empty.

    Uses the instance's box when it is valid, else the extent of `mask` (decoded when not given)."""
    h, w = size_hw
    box = instance.box_xyxy_px
    if box is not None and len(box) == 4 and all(np.isfinite(v) for v in box):
        x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
        x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
        if x1 > x0 and y1 > y0:
            return x0, y0, x1, y1
    ys, xs = np.nonzero(instance_mask(instance, size_hw) if mask is None else mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _line_width(extent: int, fraction: float = 1 / 150) -> int:
    """A line width in pixels proportional to `extent` (the longer image side), at least 1."""
    return max(1, int(round(extent * fraction)))


def _draw_box(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], colour: tuple[int, int, int],
              width: int, size_wh: tuple[int, int]) -> None:
    """Draw an xyxy (x1/y1 exclusive) box outline inward, clipped to the image, never degenerate."""
    w, h = size_wh
    x0 = min(max(0, int(round(box[0]))), w - 1)
    y0 = min(max(0, int(round(box[1]))), h - 1)
    x1 = min(max(x0 + 1, int(round(box[2]))), w) - 1
    y1 = min(max(y0 + 1, int(round(box[3]))), h) - 1
    draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)


def _letterbox(image: Image.Image, size: int) -> tuple[Image.Image, float, int, int]:
    """`image` scaled to fit a `size` x `size` square (centred on grey); returns it, the scale and the offsets."""
    w, h = image.size
    scale = size / max(w, h)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    ox, oy = (size - nw) // 2, (size - nh) // 2
    canvas.paste(image.resize((nw, nh), Image.BILINEAR), (ox, oy))
    return canvas, scale, ox, oy


def _context_crop(box: tuple[int, int, int, int] | None, size_wh: tuple[int, int], context: float,
                  min_fraction: float) -> tuple[int, int, int, int]:
    """A square crop (x0, y0, x1, y1) around `box` padded by `context` of its longer side, kept inside the image.

    Its side is at least `min_fraction` of the image's shorter side (and 1 px); with no box, the whole image."""
    w, h = size_wh
    if box is None:
        return 0, 0, w, h
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * context)
    side = int(round(min(max(side, min_fraction * min(w, h), 1.0), max(w, h))))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    sw, sh = min(side, w), min(side, h)  # a square unless the image is too narrow in one direction
    cx0 = int(round(min(max(cx - sw / 2.0, 0), w - sw)))
    cy0 = int(round(min(max(cy - sh / 2.0, 0), h - sh)))
    return cx0, cy0, cx0 + sw, cy0 + sh


def overlay_mask(image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int] = FUCHSIA, alpha: float = 0.45,
                 outline_width: int = 2) -> Image.Image:
    """`image` with the bool (H, W) `mask` blended in `colour` at `alpha` and its outline drawn solid."""
    pixels = np.asarray(image.convert("RGB")).astype(np.float32)  # (H, W, 3)
    if mask.any():
        tint = np.asarray(colour, np.float32)
        pixels[mask] = (1.0 - alpha) * pixels[mask] + alpha * tint
        eroded = ndimage.binary_erosion(mask, iterations=max(1, outline_width), border_value=0)
        pixels[mask & ~eroded] = tint  # the inner band of width `outline_width`: the mask's outline
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def render_mask_view(image: Image.Image, instance: Instance, *, size: int = 384, context: float = 0.5,
                     min_crop_fraction: float = 0.1, alpha: float = 0.45,
                     colour: tuple[int, int, int] = FUCHSIA) -> Image.Image:
    """The MV view, (2*size) x size: left the whole image with the instance boxed, right the zoomed mask overlay."""
    image = image.convert("RGB")
    w, h = image.size
    mask = instance_mask(instance, (h, w))  # (H, W) bool
    box = instance_box(instance, (h, w), mask)
    width = _line_width(size, 1 / 128)

    # Left half: the whole image letterboxed into size x size, the instance's box drawn on it.
    left, scale, ox, oy = _letterbox(image, size)
    if box is not None:
        scaled = (box[0] * scale + ox, box[1] * scale + oy, box[2] * scale + ox, box[3] * scale + oy)
        _draw_box(ImageDraw.Draw(left), scaled, colour, width, (size, size))

    # Right half: a square crop with context around the instance, upscaled to size x size, mask overlaid.
    cx0, cy0, cx1, cy1 = _context_crop(box, (w, h), context, min_crop_fraction)
    crop = image.crop((cx0, cy0, cx1, cy1)).resize((size, size), Image.BICUBIC)
    crop_mask = Image.fromarray(mask[cy0:cy1, cx0:cx1].astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    right = overlay_mask(crop, np.asarray(crop_mask) > 0, colour, alpha, outline_width=width)

    view = Image.new("RGB", (2 * size, size), BACKGROUND)
    view.paste(left, (0, 0))
    view.paste(right, (size, 0))
    return view


def render_boxes_view(image: Image.Image, instances: Sequence[Instance], *,
                      colour: tuple[int, int, int] = RED) -> Image.Image:
    """The EV view: a copy of the image with every instance's bounding box drawn in `colour` (width ~ image size)."""
    view = image.convert("RGB").copy()
    w, h = view.size
    draw = ImageDraw.Draw(view)
    width = _line_width(max(w, h))
    for instance in instances:
        box = instance_box(instance, (h, w))
        if box is not None:
            _draw_box(draw, box, colour, width, (w, h))
    return view
