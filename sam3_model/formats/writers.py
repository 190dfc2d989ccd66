"""Writing datasets: SA-Co files (one `images[]` entry per image-phrase pair, boxes xywh normalised) and COCO
instance files (boxes xywh in pixels), atomically, compact, with the keys every reader here and the official
tools expect."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text

SACO_CATEGORIES = [{"id": 1, "name": "object"}]  # SA-Co's single category: the phrase is on the pair


def saco_json(pairs: Sequence[Mapping[str, Any]], annotations: Sequence[Mapping[str, Any]],
              info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An SA-Co file: `pairs` are the images[] entries (id, file_name, height, width, text_input,
    is_instance_exhaustive...), `annotations` point at them by image_id with category_id 1."""
    data: dict[str, Any] = {"images": list(pairs), "annotations": list(annotations), "categories": SACO_CATEGORIES}
    return {"info": dict(info), **data} if info is not None else data


def saco_annotation(ann_id: int, pair_id: int, box_xywh_px: Sequence[float], width: int, height: int,
                    area_px: float, segmentation: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """One SA-Co annotation of pair `pair_id`: box and area normalised by the image's `width` x `height`,
    category 1 (the phrase is on the pair), then `extra` keys (score, provenance...)."""
    x, y, w, h = box_xywh_px
    entry: dict[str, Any] = {"id": ann_id, "image_id": pair_id, "category_id": 1,
                             "bbox": [x / width, y / height, w / width, h / height]}
    if segmentation is not None:
        entry["segmentation"] = segmentation
    return {**entry, "area": area_px / (width * height), "iscrowd": 0, **extra}


def coco_json(images: Sequence[Mapping[str, Any]], annotations: Sequence[Mapping[str, Any]],
              categories: Sequence[Mapping[str, Any]], info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A COCO instance file."""
    data: dict[str, Any] = {"images": list(images), "annotations": list(annotations), "categories": list(categories)}
    return {"info": dict(info), **data} if info is not None else data


def write_json_dataset(path: str | os.PathLike[str], data: Mapping[str, Any] | Sequence[Any]) -> Path:
    """Write a dataset or results file compactly and atomically (a crash never leaves half a file)."""
    return atomic_write_text(path, json.dumps(data, separators=(",", ":")) + "\n")
