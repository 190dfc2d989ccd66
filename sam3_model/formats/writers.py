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


def coco_json(images: Sequence[Mapping[str, Any]], annotations: Sequence[Mapping[str, Any]],
              categories: Sequence[Mapping[str, Any]], info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A COCO instance file."""
    data: dict[str, Any] = {"images": list(images), "annotations": list(annotations), "categories": list(categories)}
    return {"info": dict(info), **data} if info is not None else data


def write_json_dataset(path: str | os.PathLike[str], data: Mapping[str, Any] | Sequence[Any]) -> Path:
    """Write a dataset or results file compactly and atomically (a crash never leaves half a file)."""
    return atomic_write_text(path, json.dumps(data, separators=(",", ":")) + "\n")
