"""Checks every reader and converter shares: boxes, segmentations as compressed RLE, ids, image entries.

Each check returns the cleaned value or raises `AnnotationProblem` with a message saying what is wrong; the
reader catches it and records a `DatasetProblem` naming the file and the entry (the message has neither).

Boxes are xywh in pixels. A box may stick out of the image by at most `BOX_TOLERANCE_PX` (1 px) on any side,
which absorbs the rounding of annotation tools; it is then clipped to the image. A box further out is a problem,
as is a box with no area inside the image.

Segmentations are polygons (a list of flat [x1, y1, x2, y2, ...] lists in pixels), uncompressed RLE
({size, counts: [int, ...]}) or compressed RLE ({size, counts: str}); each becomes a compressed RLE with str
counts whose size is the image's [height, width] and whose runs add up to height x width. A segmentation that
covers no pixel is a problem too: it would be a target with nothing to find.

An image's `file_name` must be relative and stay inside the image folder once `..` is collapsed (checked on the
text, so a symlinked image file or folder inside it is fine); the sample's path is the resolved folder joined
with the normalised name. The image folder may be an fsspec URL (`s3://bucket/images`): the name is then joined
to it with "/" and the sample's path is that URL, as text (see `sam3_model.storage`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sam3_model import storage
from sam3_model.formats import FormatProblem, check_rle, str_counts
from sam3_model.records import RLE, mask_area

BOX_TOLERANCE_PX = 1.0  # how far (pixels) a box may stick out of the image before it is a problem


AnnotationProblem = FormatProblem  # one bad box or segmentation; the caller adds the file and the entry

def is_number(value: Any) -> bool:
    """A JSON number (int or float, not a bool) that is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """A JSON integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_id(value: Any) -> bool:
    """A usable id: an integer or a non-empty string."""
    return is_int(value) or (isinstance(value, str) and value != "")


def id_sort_key(value: Any) -> tuple[int, Any]:
    """Ids sort numerically, and string ids after them as text."""
    return (0, value) if is_int(value) else (1, str(value))


def entry_label(kind: str, index: int, entry: Any, key: str = "id") -> str:
    """How a problem names a JSON entry: "annotations[12] (id 57)", "images[3] (file_name 'a.jpg')"."""
    value = entry.get(key) if isinstance(entry, Mapping) else None
    if value is None or isinstance(value, (list, dict)):
        return f"{kind}[{index}]"
    return f"{kind}[{index}] ({key} {value!r})" if isinstance(value, str) else f"{kind}[{index}] ({key} {value})"


def crowd_flag(ann: Mapping[str, Any]) -> bool:
    """An annotation's `iscrowd` (default 0): 0, 1, false or true, or `AnnotationProblem`."""
    value = ann.get("iscrowd", 0)
    if value in (0, 1) and isinstance(value, (int, bool)):
        return bool(value)
    raise AnnotationProblem(f"iscrowd must be 0 or 1, got {value!r}")


def image_size(entry: Mapping[str, Any]) -> tuple[int, int]:
    """An image entry's (width, height): positive integers, or `AnnotationProblem`."""
    w, h = entry.get("width"), entry.get("height")
    if not (is_int(w) and is_int(h) and w > 0 and h > 0):
        raise AnnotationProblem(f"width and height must be positive integers, got {w!r} x {h!r}")
    return w, h


def image_folder(path: str | os.PathLike[str], images: str | os.PathLike[str] | None) -> Path | str:
    """A dataset's image folder: `images` or the annotation file's folder; resolved when local, a URL as written."""
    root = images if images is not None else storage.parent(path)
    return str(root).rstrip("/") if storage.is_url(root) else Path(root).resolve()


def resolve_image_path(root: Path | str, file_name: Any) -> Path | str:
    """`root / file_name`, normalised; `file_name` must be relative and must not climb out of `root` (resolved).

    `root` is a local folder (a `Path` comes back) or a URL (the URL of the file comes back, as text)."""
    if not isinstance(file_name, str) or not file_name.strip():
        raise AnnotationProblem(f"file_name must be a non-empty string, got {file_name!r}")
    if os.path.isabs(file_name):
        raise AnnotationProblem(f"file_name {file_name!r} is an absolute path; it must be relative to the image "
                                f"folder {root}")  # fmt: skip
    rel = os.path.normpath(file_name)
    if rel in (".", "..") or rel.startswith(".." + os.sep):
        raise AnnotationProblem(f"file_name {file_name!r} leads out of the image folder {root}")
    return storage.join(root, rel)


def check_xywh(bbox: Any) -> list[float]:
    """Four finite numbers [x, y, w, h] (any units), or `AnnotationProblem`."""
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        raise AnnotationProblem(f"bbox must be four finite numbers [x, y, w, h], got {bbox!r}")
    return [float(v) for v in bbox]


def check_box_xywh_px(bbox: Any, width: int, height: int, hint: str = "") -> np.ndarray:
    """A pixel xywh box of positive size inside the (width, height) image (1 px tolerance), clipped to it.

    `hint` is appended to the messages (e.g. that the file's boxes are normalised).
    """
    x, y, w, h = check_xywh(bbox)
    if w <= 0 or h <= 0:
        raise AnnotationProblem(f"bbox {_fmt(bbox)} has a non-positive width or height{hint}")
    tol = BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise AnnotationProblem(
            f"bbox {_fmt(bbox)} (x, y, w, h) lies outside the {width}x{height} image by more than {tol:g} px{hint}"
        )
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        raise AnnotationProblem(f"bbox {_fmt(bbox)} has no area inside the {width}x{height} image{hint}")
    return np.array([x0, y0, x1 - x0, y1 - y0], dtype=np.float32)


def has_segmentation(seg: Any) -> bool:
    """Whether an annotation's `segmentation` value carries anything (absent, None and [] do not)."""
    return seg is not None and not (isinstance(seg, (list, dict)) and not seg)


def segmentation_to_rle(seg: Any, height: int, width: int) -> RLE:
    """Polygons, uncompressed or compressed RLE -> compressed RLE (str counts) of the (height, width) image."""
    if isinstance(seg, Mapping):
        rle = check_rle(seg, height, width)
    elif isinstance(seg, list):
        rle = polygons_to_rle(seg, height, width)
    else:
        raise AnnotationProblem(
            f"segmentation must be polygons (lists of x, y) or an RLE {{size, counts}}, got {type(seg).__name__}"
        )
    if mask_area(rle) == 0:
        raise AnnotationProblem("segmentation covers no pixel")
    return rle


def polygons_to_rle(polygons: Sequence[Any], height: int, width: int) -> RLE:
    """A list of flat pixel polygons -> their union as compressed RLE (str counts)."""
    if not polygons:
        raise AnnotationProblem("empty polygon list")
    for k, poly in enumerate(polygons):
        if not isinstance(poly, (list, tuple)):
            raise AnnotationProblem(f"polygon {k} must be a flat list [x1, y1, x2, y2, ...], got {poly!r:.60}")
        if not poly:
            raise AnnotationProblem(f"polygon {k} is empty")
        if not all(is_number(v) for v in poly):
            raise AnnotationProblem(f"polygon {k} has a coordinate that is not a finite number")
        if len(poly) % 2:
            raise AnnotationProblem(f"polygon {k} has an odd number of coordinates ({len(poly)})")
        if len(poly) < 6:
            raise AnnotationProblem(f"polygon {k} has {len(poly) // 2} points, needs at least 3")
    coded = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width))
    return str_counts(coded)


def rle_box_xywh_px(rle: RLE) -> np.ndarray:
    """The tight pixel xywh box of an RLE mask (pycocotools' `toBbox`)."""
    counts = rle["counts"]
    coded = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return np.asarray(mask_utils.toBbox(coded), dtype=np.float32)


def _fmt(bbox: Sequence[Any]) -> str:
    """A box for a message: numbers with at most 2 decimals."""
    return "[" + ", ".join(f"{float(v):.2f}".rstrip("0").rstrip(".") for v in bbox) + "]"
