"""Read a training dataset of any supported format, then check its image files."""

from __future__ import annotations

import os
from pathlib import Path

from sam3_model.errors import ConfigError
from sam3_model.formats import CategoryRules, detect_format, gc_paused, read_json

from .coco_reader import read_coco_json
from .image_check import check_images
from .records import ReadResult
from .saco_reader import read_saco_json

FORMATS = ("auto", "coco", "saco")


def read_dataset(path: str | os.PathLike[str], format: str = "auto", image_root: str | os.PathLike[str] | None = None,
                 name: str | None = None, check_image_files: bool = True,
                 rules: CategoryRules = CategoryRules()) -> ReadResult:  # noqa: B008 - frozen
    """Read a COCO or SA-Co file ("auto": SA-Co when images carry `text_input`), then check the images exist.

    `rules` decide which COCO categories are phrases (placeholders and excluded names left out, an allow-list);
    an SA-Co file's phrases are its pairs' `text_input`.
    """
    if format not in FORMATS:
        raise ConfigError(f"dataset format must be one of {', '.join(FORMATS)}, got {format!r}")
    with gc_paused():
        data = read_json(path, "dataset annotation")
        if format == "auto":
            format = detect_format(data, str(path))
        name = name if name is not None else Path(path).stem
        if format == "saco":
            result = read_saco_json(data, path, image_root, name)
        else:
            result = read_coco_json(data, path, image_root, name, rules)
    return check_images(result, str(path)) if check_image_files else result
