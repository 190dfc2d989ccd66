"""Convert YOLO labels (segmentation polygons or detection boxes) to a COCO instance file.

Labels are matched to images by relative path and stem: `images/sub/a.jpg` <- `labels/sub/a.txt`. Each line is
one instance, coordinates normalised to [0, 1] by the image size:

* `class x1 y1 x2 y2 ... xn yn` (n >= 3): a polygon;
* `class cx cy w h` (exactly 4 values): a box.

If any label file of the dataset holds a polygon, the output has masks: box lines become rectangle polygons of
their box. Otherwise the output is box-only (no `segmentation`). An image without a label file (or with an empty
one) has no instance: it is a negative for every class.

A coordinate may stick out of [0, 1] by up to 1 pixel of the image (rounding of labelling tools) and is then
clipped; further out is a problem. Boxes are the extents of the (clipped) polygon, in pixels; categories are the
names in class-index order with ids 1..K. The output is written as `convert_semantic_masks` writes its own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from sam3_model.errors import ConfigError, DatasetError

from .annotations import BOX_TOLERANCE_PX
from .convert_semantic import (
    ConversionProblem,
    ConversionStats,
    check_unique_names,
    coco_image,
    list_images,
    read_config_file,
    read_image_size,
    write_coco,
)
from .problems import resolve_problems
from .records import DatasetProblem

DECIMALS = 2  # pixel coordinates written with this many decimals


@dataclass
class _Shape:
    """One label line, in pixels: a polygon (flat x, y list) or a box (xywh)."""

    path: Path  # the label file
    line: int
    class_index: int
    polygon: list[float] | None = None
    box_xywh_px: list[float] | None = None


def convert_yolo(images_dir: str | os.PathLike[str], labels_dir: str | os.PathLike[str],
                 names: Sequence[str] | str | os.PathLike[str], out_json: str | os.PathLike[str],
                 on_error: str = "stop") -> ConversionStats:  # fmt: skip
    """Write a COCO instance file from YOLO label files (polygons, or boxes only when no file has a polygon)."""
    class_names = load_names(names)
    resolve_problems([], on_error, "convert")  # checks on_error before the work
    images_dir, labels_dir, out_json = Path(images_dir), Path(labels_dir), Path(out_json)
    if not labels_dir.is_dir():
        raise DatasetError(f"{labels_dir}: no such label folder")
    image_paths = list_images(images_dir)
    out_dir = out_json.parent.resolve()
    parsed: list[tuple[Path, int, int, list[_Shape]]] = []
    problems: list[DatasetProblem] = []
    for image_path in image_paths:
        rel = image_path.relative_to(images_dir)
        entry = f"image {rel.as_posix()!r}"
        try:
            width, height = read_image_size(image_path)
            shapes = _read_labels(labels_dir / rel.with_suffix(".txt"), width, height, len(class_names))
        except ConversionProblem as err:
            problems.append(DatasetProblem(err.file, entry, str(err), rel.as_posix()))
            continue
        parsed.append((image_path, width, height, shapes))
    with_masks = any(s.polygon is not None for *_, shapes in parsed for s in shapes)
    images, annotations = [], []
    for image_path, width, height, shapes in parsed:
        try:
            entries = [_annotation(shape, width, height, with_masks) for shape in shapes]
        except ConversionProblem as err:  # a shape that covers no pixel
            rel = image_path.relative_to(images_dir).as_posix()
            problems.append(DatasetProblem(err.file, f"image {rel!r}", str(err), rel))
            continue
        image_id = len(images) + 1
        images.append(coco_image(image_id, image_path, out_dir, width, height))
        for entry in entries:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **entry})
    skipped = resolve_problems(problems, on_error, f"convert {images_dir}")
    categories = [{"id": k, "name": name} for k, name in enumerate(class_names, start=1)]
    write_coco(out_json, images, annotations, categories)
    return ConversionStats(len(images), len(annotations), skipped, problems)


def _annotation(shape: _Shape, width: int, height: int, with_masks: bool) -> dict:
    """A COCO annotation (without ids) of one shape: a polygon with its box and area, or a box only."""
    entry: dict[str, Any] = {"category_id": shape.class_index + 1, "iscrowd": 0}
    if not with_masks:
        box = shape.box_xywh_px
        return {**entry, "bbox": box, "area": round(box[2] * box[3], DECIMALS)}
    polygon = shape.polygon if shape.polygon is not None else _rectangle(shape.box_xywh_px)
    area = int(mask_utils.area(mask_utils.frPyObjects([polygon], height, width))[0])
    if area == 0:
        kind = "box" if shape.polygon is None else "polygon"
        raise ConversionProblem(shape.path, f"line {shape.line}: {kind} covers no pixel")
    return {**entry, "bbox": _polygon_box(polygon), "area": area, "segmentation": [polygon]}


def load_names(names: Sequence[str] | str | os.PathLike[str]) -> list[str]:
    """Class names in index order, from a list or a YOLO data.yaml (`names:` as a list or {index: name})."""
    source = "names"
    if isinstance(names, (str, os.PathLike)):
        source = str(names)
        data = read_config_file(names, "class names")
        names = data["names"] if isinstance(data, Mapping) and "names" in data else data
    if isinstance(names, Mapping):
        indices = sorted(names, key=lambda k: int(k) if str(k).isdigit() else -1)
        if [str(k) for k in indices] != [str(i) for i in range(len(names))]:
            raise ConfigError(f"{source}: names must be indexed 0..{len(names) - 1}, got {list(names)!r}")
        names = [names[k] for k in indices]
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or not names:
        raise ConfigError(f"{source}: expected a non-empty list of class names (or a data.yaml with 'names:')")
    out = []
    for k, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{source}: class {k}: name must be a non-empty string, got {name!r}")
        out.append(name.strip())
    check_unique_names(out, source)
    return out


def _read_labels(path: Path, width: int, height: int, num_classes: int) -> list[_Shape]:
    """One image's label lines as pixel shapes; none when there is no label file."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionProblem(path, f"label file does not read ({getattr(err, 'strerror', None) or err})") from None
    shapes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            shapes.append(_parse_line(line, number, path, width, height, num_classes))
    return shapes


def _parse_line(line: str, number: int, path: Path, width: int, height: int, num_classes: int) -> _Shape:
    """One label line -> a pixel polygon or box, or a `ConversionProblem` naming the line."""
    def problem(message: str) -> ConversionProblem:
        return ConversionProblem(path, f"line {number}: {message}")

    tokens = line.split()
    try:
        class_index = int(tokens[0])
    except ValueError:
        raise problem(f"class index {tokens[0]!r} is not an integer") from None
    if not 0 <= class_index < num_classes:
        raise problem(f"class index {class_index} is not in 0..{num_classes - 1} (there are {num_classes} names)")
    try:
        values = [float(v) for v in tokens[1:]]
    except ValueError:
        raise problem("coordinates must be numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise problem("coordinates must be finite numbers")
    if len(values) == 4:  # detection box: cx cy w h
        cx, cy, w, h = values
        if w <= 0 or h <= 0:
            raise problem(f"box width and height must be positive, got {w:g} x {h:g}")
        x0, y0, x1, y1 = _clip_point(cx - w / 2, cy - h / 2, width, height, problem) + \
            _clip_point(cx + w / 2, cy + h / 2, width, height, problem)  # fmt: skip
        if x1 <= x0 or y1 <= y0:
            raise problem("box has no area inside the image")
        box_xywh_px = [round(x0, DECIMALS), round(y0, DECIMALS), round(x1 - x0, DECIMALS), round(y1 - y0, DECIMALS)]
        return _Shape(path, number, class_index, box_xywh_px=box_xywh_px)
    if len(values) % 2:
        raise problem(f"odd number of coordinates ({len(values)}); expected x y pairs (or 4 box values)")
    if len(values) < 6:
        raise problem(f"polygon has {len(values) // 2} points, needs at least 3")
    polygon: list[float] = []
    for i in range(0, len(values), 2):
        polygon.extend(round(v, DECIMALS) for v in _clip_point(values[i], values[i + 1], width, height, problem))
    _, _, w, h = _polygon_box(polygon)
    if w <= 0 or h <= 0:
        raise problem("polygon has no area (its points lie on a line)")
    return _Shape(path, number, class_index, polygon=polygon)


def _clip_point(x: float, y: float, width: int, height: int, problem: Any) -> tuple[float, float]:
    """A normalised point in pixels, clipped to the image; more than 1 px outside is a problem."""
    px, py = x * width, y * height
    tol = BOX_TOLERANCE_PX
    if not (-tol <= px <= width + tol and -tol <= py <= height + tol):
        raise problem(f"point ({x:g}, {y:g}) is outside [0, 1] by more than {tol:g} px of the {width}x{height} image")
    return min(max(px, 0.0), float(width)), min(max(py, 0.0), float(height))


def _polygon_box(polygon: Sequence[float]) -> list[float]:
    """The xywh pixel box of a flat polygon's extents."""
    xs, ys = polygon[0::2], polygon[1::2]
    return [min(xs), min(ys), round(max(xs) - min(xs), DECIMALS), round(max(ys) - min(ys), DECIMALS)]


def _rectangle(box_xywh_px: Sequence[float]) -> list[float]:
    """An xywh box as a flat rectangle polygon."""
    x, y, w, h = box_xywh_px
    return [x, y, x + w, y, x + w, y + h, x, y + h]
