"""Label Studio regions (`result[]` entries of a task) to and from pixel geometry.

Label Studio stores a region as `{"type", "from_name", "to_name", "original_width", "original_height", "value"}`.
The kinds used here, with what `value` holds:

* `brushlabels`: `{"format": "rle", "rle": [...], "brushlabels": [phrase]}`, the brush RLE of `ls_brush`;
* `rectanglelabels`: `{"x", "y", "width", "height", "rotation", "rectanglelabels": [phrase]}`, in percent of the
  image width (x, width) and height (y, height), rotated by `rotation` degrees clockwise about its top-left corner;
* `polygonlabels`: `{"points": [[x, y], ...], "polygonlabels": [phrase]}`, in percent.

`from_name`/`to_name` must name tags of the project's labelling config: ours (`labelstudio_export.label_config`)
names them `mask`, `box`, `polygon` and `image`. Reading, any tag name is taken; the phrase is the region's label.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam3_model.formats import FormatProblem, check_phrase
from sam3_model.records import RLE, encode_mask, mask_area

from . import ls_brush
from .annotations import is_int, is_number, polygons_to_rle, rle_box_xywh_px

TO_NAME = "image"  # the <Image> tag
BRUSH_NAME, BOX_NAME, POLYGON_NAME = "mask", "box", "polygon"  # the <BrushLabels>, <RectangleLabels>, <PolygonLabels>
BRUSH, RECTANGLE, POLYGON = "brushlabels", "rectanglelabels", "polygonlabels"
KINDS = (BRUSH, RECTANGLE, POLYGON)
DECIMALS = 4  # percent coordinates written with this many decimals (1e-4 % of 10k px is 0.01 px)


def brush_result(mask: np.ndarray, phrase: str, region_id: str, score: float | None = None) -> dict[str, Any]:
    """A `brushlabels` region of a binary (H, W) mask."""
    height, width = mask.shape
    value = {"format": "rle", "rle": ls_brush.encode_mask(mask), BRUSH: [phrase]}
    return _result(BRUSH, BRUSH_NAME, region_id, width, height, value, score)


def rectangle_result(box_xywh_px: Sequence[float], width: int, height: int, phrase: str, region_id: str,
                     score: float | None = None) -> dict[str, Any]:  # fmt: skip
    """A `rectanglelabels` region of a pixel xywh box."""
    x, y, w, h = (float(v) for v in box_xywh_px)
    value = {"x": _pct(x, width), "y": _pct(y, height), "width": _pct(w, width), "height": _pct(h, height),
             "rotation": 0, RECTANGLE: [phrase]}  # fmt: skip
    return _result(RECTANGLE, BOX_NAME, region_id, width, height, value, score)


def _pct(v: float, size: int) -> float:
    return round(100.0 * v / size, DECIMALS)


def _result(kind: str, from_name: str, region_id: str, width: int, height: int, value: dict,
            score: float | None) -> dict[str, Any]:  # fmt: skip
    out = {"id": region_id, "type": kind, "from_name": from_name, "to_name": TO_NAME, "original_width": int(width),
           "original_height": int(height), "image_rotation": 0, "value": value}  # fmt: skip
    if score is not None:
        out["score"] = float(score)
    return out


@dataclass
class Region:
    """One labelled region of an annotation, in pixels of the (width, height) image."""

    kind: str  # BRUSH, RECTANGLE or POLYGON
    phrases: list[str]  # its labels (usually one)
    box_xywh_px: list[float]  # tight box (of the mask; of the rectangle's corners)
    mask: RLE | None = None  # brush and polygon: the mask
    corners: list[float] | None = None  # rectangle: its four corners, flat x, y in pixels (its mask, when wanted)

    def rle(self, height: int, width: int) -> RLE:
        """The region's mask (a rectangle's polygon filled)."""
        return self.mask if self.mask is not None else polygons_to_rle([self.corners], height, width)


def result_size(result: Mapping[str, Any]) -> tuple[int, int] | None:
    """A region's (width, height) from `original_width`/`original_height`, None when absent, or `FormatProblem`."""
    w, h = result.get("original_width"), result.get("original_height")
    if w is None and h is None:
        return None
    if not (is_int(w) and is_int(h) and w > 0 and h > 0):
        raise FormatProblem(f"original_width/original_height must be positive integers, got {w!r} x {h!r}")
    return w, h


def read_region(result: Mapping[str, Any], width: int, height: int) -> Region | None:
    """A region of the (width, height) image; None for a region that covers no pixel; `FormatProblem` if bad.

    The caller passes only results whose `type` is one of `KINDS`.
    """
    kind = str(result.get("type", "")).lower()
    value = result.get("value")
    if not isinstance(value, Mapping):
        raise FormatProblem(f"'value' must be an object, got {type(value).__name__}")
    size = result_size(result)
    if size is not None and size != (width, height):
        raise FormatProblem(f"region is for a {size[0]}x{size[1]} image, the task's image is {width}x{height}")
    phrases = _labels(value, kind)
    if kind == BRUSH:
        return _brush(value, phrases, width, height)
    if kind == RECTANGLE:
        return _rectangle(value, phrases, width, height)
    return _polygon(value, phrases, width, height)


def _labels(value: Mapping[str, Any], kind: str) -> list[str]:
    """The region's labels (`value[kind]`, else `value["labels"]`), checked; [] when it has none."""
    labels = value.get(kind, value.get("labels", []))
    if not isinstance(labels, list):
        raise FormatProblem(f"'{kind}' must be a list of labels, got {type(labels).__name__}")
    return list(dict.fromkeys(check_phrase(label) for label in labels))


def _brush(value: Mapping[str, Any], phrases: list[str], width: int, height: int) -> Region | None:
    fmt = value.get("format", "rle")
    if fmt != "rle":
        raise FormatProblem(f"brush format {fmt!r} is not supported (Label Studio writes 'rle')")
    if "rle" not in value:
        raise FormatProblem("brush region has no 'rle'")
    mask = ls_brush.decode_mask(value["rle"], height, width)
    if not mask.any():
        return None
    rle = encode_mask(mask)
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    box = [float(xs[0]), float(ys[0]), float(xs[-1] + 1 - xs[0]), float(ys[-1] + 1 - ys[0])]
    return Region(BRUSH, phrases, box, mask=rle)


def _percent(value: Any, name: str) -> float:
    if not is_number(value):
        raise FormatProblem(f"'{name}' must be a finite number (percent), got {value!r}")
    return float(value)


def _rectangle(value: Mapping[str, Any], phrases: list[str], width: int, height: int) -> Region | None:
    x, y = _percent(value.get("x"), "x") * width / 100, _percent(value.get("y"), "y") * height / 100
    w, h = _percent(value.get("width"), "width") * width / 100, _percent(value.get("height"), "height") * height / 100
    if w < 0 or h < 0:
        raise FormatProblem(f"rectangle has a negative width or height ({w:.2f} x {h:.2f} px)")
    angle = math.radians(_percent(value.get("rotation", 0), "rotation"))
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(x + dx * cos - dy * sin, y + dx * sin + dy * cos) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    box = _clipped_box([c[0] for c in corners], [c[1] for c in corners], width, height)
    if box is None:
        return None
    return Region(RECTANGLE, phrases, box, corners=[v for c in corners for v in c])


def _polygon(value: Mapping[str, Any], phrases: list[str], width: int, height: int) -> Region | None:
    points = value.get("points")
    if not isinstance(points, list) or len(points) < 3:
        raise FormatProblem(f"polygon needs a list of at least 3 points [x, y] (percent), got {points!r:.80}")
    flat: list[float] = []
    for k, point in enumerate(points):
        if not (isinstance(point, (list, tuple)) and len(point) == 2):
            raise FormatProblem(f"polygon point {k} must be [x, y] (percent), got {point!r:.40}")
        flat += [_percent(point[0], "x") * width / 100, _percent(point[1], "y") * height / 100]
    rle = polygons_to_rle([flat], height, width)
    if mask_area(rle) == 0:
        return None
    return Region(POLYGON, phrases, [float(v) for v in rle_box_xywh_px(rle)], mask=rle)


def _clipped_box(xs: Sequence[float], ys: Sequence[float], width: int, height: int) -> list[float] | None:
    """The extents of points, clipped to the image, as xywh; None when nothing of it is inside."""
    x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
    x1, y1 = min(max(xs), float(width)), min(max(ys), float(height))
    if x1 <= x0 or y1 <= y0:
        return None
    return [x0, y0, x1 - x0, y1 - y0]
