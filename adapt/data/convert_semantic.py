"""Convert semantic-segmentation masks (one PNG of class indices per image) to a COCO instance file.

Masks are matched to images by relative path and stem: `images/sub/a.jpg` <- `masks/sub/a.png`. A mask is one
channel of class indices (PIL modes L, P, I, I;16 or 1); the class map gives the name of each pixel value that is
a class, and every other value (0 background, 255 ignore, ...) is ignored. The instances of a class are the
connected components of its pixels, 8-connected (diagonal neighbours join, as a person would draw them);
components smaller than `min_area` pixels are dropped.

The output holds RLE segmentations (str counts), boxes xywh in pixels from the mask, areas and iscrowd 0;
categories follow the class map's order with ids 1..K; `file_name`s are relative to the output file's folder, so
the output must sit in the images' folder or above it (the readers refuse names that climb out with `..`).
It is written atomically, and only when the conversion goes through.

The helpers the YOLO converter shares (image listing, COCO writing, `ConversionStats`) live here too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from sam3_model.configs import read_config_file
from sam3_model.errors import ConfigError, DatasetError, ImageError
from sam3_model.formats import coco_json, write_json_dataset
from sam3_model.images import read_image_size as displayed_image_size
from sam3_model.records import encode_mask

from .problems import resolve_problems
from .records import DatasetProblem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")  # single channel: values are class indices
CONNECTIVITY = np.ones((3, 3), dtype=bool)  # 8-connectivity


@dataclass
class ConversionStats:
    """What a conversion wrote and left out."""

    images: int  # images written
    instances: int  # annotations written
    skipped: int  # images left out because of a problem (on_error "skip")
    problems: list[DatasetProblem] = field(default_factory=list)


def convert_semantic_masks(images_dir: str | os.PathLike[str], masks_dir: str | os.PathLike[str],
                           classes: Mapping[int, str] | str | os.PathLike[str], out_json: str | os.PathLike[str],
                           min_area: int = 1, on_error: str = "stop") -> ConversionStats:  # fmt: skip
    """Write a COCO instance file whose instances are the connected components of each class in the masks."""
    class_map = load_class_map(classes)
    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 1:
        raise ConfigError(f"min_area must be a positive number of pixels, got {min_area!r}")
    resolve_problems([], on_error, "convert")  # checks on_error before the work
    images_dir, masks_dir, out_json = Path(images_dir), Path(masks_dir), Path(out_json)
    if not masks_dir.is_dir():
        raise DatasetError(f"{masks_dir}: no such mask folder")
    image_paths = list_images(images_dir)
    out_dir = out_json.parent.resolve()
    category_ids = {value: k for k, value in enumerate(class_map, start=1)}
    images, annotations, problems = [], [], []
    for image_path in image_paths:
        rel = image_path.relative_to(images_dir)
        try:
            width, height = read_image_size(image_path)
            mask = _read_mask(masks_dir / rel.with_suffix(".png"), width, height)
        except ConversionProblem as err:
            problems.append(DatasetProblem(err.file, f"image {rel.as_posix()!r}", str(err), rel.as_posix()))
            continue
        image_id = len(images) + 1
        images.append(coco_image(image_id, image_path, out_dir, width, height))
        for value, cat_id in category_ids.items():
            for rle, box, area in _components(mask == value, min_area):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id,
                                    "bbox": box, "area": area, "iscrowd": 0, "segmentation": rle})  # fmt: skip
    skipped = resolve_problems(problems, on_error, f"convert {images_dir}")
    categories = [{"id": category_ids[value], "name": name} for value, name in class_map.items()]
    write_coco(out_json, images, annotations, categories)
    return ConversionStats(len(images), len(annotations), skipped, problems)


def load_class_map(classes: Mapping[Any, Any] | str | os.PathLike[str]) -> dict[int, str]:
    """{pixel value: class name} from a mapping or a YAML/JSON file of one (optionally under `names:`/`classes:`)."""
    source = "classes"
    if isinstance(classes, (str, os.PathLike)):
        source = str(classes)
        classes = read_config_file(classes, "class map")
        if isinstance(classes, Mapping) and len(classes) == 1 and next(iter(classes)) in ("names", "classes"):
            classes = next(iter(classes.values()))
    if not isinstance(classes, Mapping) or not classes:
        raise ConfigError(f"{source}: expected a non-empty mapping of pixel value to class name, "
                          f"e.g. {{1: cat, 2: dog}}")  # fmt: skip
    out: dict[int, str] = {}
    for key, name in classes.items():
        value = _pixel_value(key)
        if value is None:
            raise ConfigError(f"{source}: key {key!r} is not a pixel value (a non-negative integer)")
        if value in out:
            raise ConfigError(f"{source}: pixel value {value} is given twice")
        out[value] = _class_name(name, f"{source}: pixel value {value}")
    check_unique_names(out.values(), source)
    return out


def _pixel_value(key: Any) -> int | None:
    """A class-map key as a pixel value (YAML and JSON may give "3" for 3), or None."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key if key >= 0 else None
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return None


def _class_name(name: Any, where: str) -> str:
    """A class name (the phrase): a non-empty string, stripped."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: class name must be a non-empty string, got {name!r}")
    return name.strip()


def check_unique_names(names: Sequence[str] | Any, source: str) -> None:
    """Class names are phrases: two classes with one name would contradict each other."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{source}: class name {name!r} is given twice; each class is a phrase")
        seen.add(name)


class ConversionProblem(Exception):
    """A bad input file; the message says what is wrong with `file`."""

    def __init__(self, file: Path, message: str) -> None:
        super().__init__(message)
        self.file = str(file)


def _read_mask(path: Path, width: int, height: int) -> np.ndarray:
    """A mask PNG as an (H, W) integer array of class indices, checked against the image size."""
    if not path.is_file():
        raise ConversionProblem(path, f"no mask {path.name!r} for this image")
    try:
        with Image.open(path) as img:
            if img.mode not in MASK_MODES:
                bands = len(img.getbands())
                raise ConversionProblem(path, f"mask has mode {img.mode} ({bands} channels); expected one channel "
                                              "of class indices (L, P or I;16)")  # fmt: skip
            if img.size != (width, height):
                raise ConversionProblem(path, f"mask is {img.size[0]}x{img.size[1]}, the image is {width}x{height}")
            mask = np.asarray(img)
    except ConversionProblem:
        raise
    except Exception as err:  # noqa: BLE001 (PIL raises assorted types on bad files)
        raise ConversionProblem(path, f"mask does not decode ({type(err).__name__}: {err})") from None
    return mask.astype(np.int64) if mask.dtype == bool else mask


def _components(binary: np.ndarray, min_area: int) -> list[tuple[dict, list[float], int]]:
    """The 8-connected components of a binary mask with at least `min_area` pixels: (RLE, box xywh px, area)."""
    if not binary.any():
        return []
    labels, _ = ndimage.label(binary, structure=CONNECTIVITY)
    areas = np.bincount(labels.ravel())
    out = []
    for k, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None or areas[k] < min_area:
            continue
        component = np.zeros(binary.shape, dtype=np.uint8)
        component[region] = labels[region] == k
        rows, cols = region
        box_xywh_px = [float(cols.start), float(rows.start),
                       float(cols.stop - cols.start), float(rows.stop - rows.start)]  # fmt: skip
        out.append((encode_mask(component), box_xywh_px, int(areas[k])))
    return out


# --------------------------------------------------------------------------------------------- shared with YOLO


def list_images(images_dir: Path) -> list[Path]:
    """Every image file under `images_dir` (recursively, by extension), sorted; a `DatasetError` when none."""
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: no such image folder")
    paths = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise DatasetError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def read_image_size(path: Path) -> tuple[int, int]:
    """An image's (width, height) as displayed (EXIF orientation applied), from its header; a bad file is a problem."""
    try:
        return displayed_image_size(path)
    except ImageError as err:
        raise ConversionProblem(path, f"image does not open ({err})") from None


def coco_image(image_id: int, image_path: Path, out_dir: Path, width: int, height: int) -> dict:
    """A COCO `images[]` entry whose file_name is relative to `out_dir` (the output's folder, resolved)."""
    absolute = Path(os.path.abspath(image_path))
    try:
        file_name = absolute.relative_to(out_dir).as_posix()
    except ValueError:
        try:
            file_name = image_path.resolve().relative_to(out_dir).as_posix()
        except ValueError:
            raise ConfigError(f"{image_path}: the output file must be in the images' folder or above it "
                              f"(file_names are written relative to {out_dir}, and readers refuse '..')") from None
    return {"id": image_id, "file_name": file_name, "width": int(width), "height": int(height)}


def write_coco(out_json: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> None:
    """Write a COCO instance file atomically."""
    write_json_dataset(out_json, coco_json(images, annotations, categories))
