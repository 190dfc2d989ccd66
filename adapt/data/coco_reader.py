"""Read a COCO instance file as training samples: every category is a phrase asked of every image.

As in the official SAM 3 fine-tuning, the phrase is the category name and each image gets one `PhraseInstances`
per category, in category-id order; a category with no instance in an image is a negative phrase there.
Crowd annotations (iscrowd 1) are removed (their phrase stays, maybe as a negative); their geometry is not checked.

Masks: when no non-crowd annotation has a segmentation the dataset is box-only (`masks` None); otherwise every
non-crowd annotation needs one. An annotation without `bbox` gets its mask's box.

A bad entry becomes a `DatasetProblem`, and an image with any problem is left out whole (a missing instance
would teach a false negative). Problems with the file itself (not JSON, no images/annotations/categories list,
bad categories) raise `DatasetError`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam3_model.errors import DatasetError
from sam3_model.formats import (
    CategoryChoice,
    CategoryRules,
    gc_paused,
    read_categories,
    read_json,
)
from sam3_model.records import RLE

from .annotations import (
    AnnotationProblem,
    check_box_xywh_px,
    check_xywh,
    crowd_flag,
    entry_label,
    has_segmentation,
    id_sort_key,
    image_folder,
    image_size,
    is_id,
    resolve_image_path,
    rle_box_xywh_px,
    segmentation_to_rle,
)
from .records import DatasetProblem, ImageSample, PhraseInstances, ReadResult

TOP_LEVEL = ("images", "annotations", "categories")


@dataclass
class _Image:
    """A checked `images[]` entry."""

    index: int
    path: Path | str | None  # a local path or a URL; None when the entry has a problem
    width: int | None  # None when the size itself is bad
    height: int | None


def read_coco(path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None,
              name: str | None = None, rules: CategoryRules = CategoryRules()) -> ReadResult:  # noqa: B008
    """Read a COCO instance JSON file: one sample per image, one phrase per category (absent: negative)."""
    with gc_paused():
        data = read_json(path, "COCO annotation")
        return read_coco_json(data, path, image_root, name, rules)


def read_coco_json(data: Any, path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None,
                   name: str | None = None, rules: CategoryRules = CategoryRules()) -> ReadResult:  # noqa: B008
    """`read_coco` on an already parsed file (`path` names it in messages and locates the default image root)."""
    source = str(path)
    if not isinstance(data, Mapping):
        raise DatasetError(f"{source}: expected a COCO object with images, annotations and categories")
    for key in TOP_LEVEL:
        if not isinstance(data.get(key), list):
            got = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise DatasetError(f"{source}: '{key}' must be a list ({got}); is this a COCO instance file?")
    root = image_folder(path, image_root)
    choice = _categories(data["categories"], data["annotations"], source, rules)
    categories = choice.kept
    problems: list[DatasetProblem] = []
    images = _images(data["images"], root, source, problems)
    groups, box_only = _annotations(data["annotations"], images, categories, source, problems, choice.dropped)
    bad = {p.image_id for p in problems if p.image_id is not None}
    dataset = name if name is not None else Path(path).stem
    samples = []
    for image_id, image in images.items():
        if image_id in bad or image.path is None:
            continue
        phrases = []
        for cat_id, phrase in categories.items():
            boxes, masks = groups.get((image_id, cat_id), ([], []))
            phrases.append(PhraseInstances(
                phrase=phrase,
                boxes_xywh_px=np.asarray(boxes, np.float32).reshape(-1, 4),
                masks=None if box_only else list(masks),
            ))  # fmt: skip
        samples.append(ImageSample(image.path, image.width, image.height, phrases, image_id, dataset))
    names = {c["id"]: c["name"] for c in data["categories"]}
    return ReadResult(samples, problems, notes=choice.notes(source, names))


def _categories(entries: list, annotations: list, source: str, rules: CategoryRules) -> CategoryChoice:
    """The categories that are phrases (id -> name in id order) and those `rules` leave out; bad ones raise."""
    try:
        return read_categories(entries, annotations, rules, source, sort_key=id_sort_key)
    except AnnotationProblem as err:
        raise DatasetError(str(err)) from None


def _images(entries: list, root: Path | str, source: str, problems: list[DatasetProblem]) -> dict[Any, _Image]:
    """Image id -> checked entry, in file order; bad entries are kept (path None) so annotations can name them."""
    images: dict[Any, _Image] = {}
    for i, img in enumerate(entries):
        where = entry_label("images", i, img, "file_name")
        if not isinstance(img, Mapping):
            problems.append(DatasetProblem(source, where, f"expected an object, got {type(img).__name__}"))
            continue
        image_id = img.get("id")
        if not is_id(image_id):
            problems.append(DatasetProblem(source, where, f"missing or bad 'id' {image_id!r} (an integer or a string)"))
            continue
        if image_id in images:
            other = images[image_id].index
            problems.append(DatasetProblem(source, where, f"duplicate image id {image_id!r} (also images[{other}])",
                                           image_id))  # fmt: skip
            continue
        missing = [key for key in ("file_name", "width", "height") if key not in img]
        if missing:
            problems.append(DatasetProblem(source, where, f"missing key(s) {', '.join(map(repr, missing))}", image_id))
            images[image_id] = _Image(i, None, None, None)
            continue
        try:
            width, height = image_size(img)
        except AnnotationProblem as err:
            problems.append(DatasetProblem(source, where, str(err), image_id))
            images[image_id] = _Image(i, None, None, None)
            continue
        try:
            image_path: Path | str | None = resolve_image_path(root, img["file_name"])
        except AnnotationProblem as err:
            problems.append(DatasetProblem(source, where, str(err), image_id))
            image_path = None
        images[image_id] = _Image(i, image_path, width, height)
    return images


def _annotations(entries: list, images: Mapping[Any, _Image], categories: Mapping[Any, str], source: str,
                 problems: list[DatasetProblem], left_out: Mapping[Any, str]) -> tuple[dict, bool]:  # fmt: skip
    """(image_id, category_id) -> (boxes, masks) of the non-crowd annotations, and whether the file is box-only.

    Annotations of a left-out category (`left_out`: placeholder or excluded) are skipped, not problems.
    """
    skipped = [isinstance(a, Mapping) and is_id(a.get("category_id")) and a.get("category_id") in left_out
               for a in entries]
    box_only = not any(isinstance(a, Mapping) and has_segmentation(a.get("segmentation")) and not a.get("iscrowd")
                       for a, skip in zip(entries, skipped) if not skip)  # fmt: skip
    groups: dict = defaultdict(lambda: ([], []))
    for i, (ann, skip) in enumerate(zip(entries, skipped)):
        if skip:
            continue
        where = entry_label("annotations", i, ann)
        if not isinstance(ann, Mapping):
            problems.append(DatasetProblem(source, where, f"expected an object, got {type(ann).__name__}"))
            continue
        image_id = ann.get("image_id")
        if "image_id" not in ann:
            problems.append(DatasetProblem(source, where, "missing key 'image_id'"))
            continue
        image = images.get(image_id) if is_id(image_id) else None
        if image is None:
            problems.append(DatasetProblem(source, where, f"image_id {image_id!r} is not in 'images'"))
            continue
        if "category_id" not in ann:
            problems.append(DatasetProblem(source, where, "missing key 'category_id'", image_id))
            continue
        cat_id = ann["category_id"]
        if not is_id(cat_id) or cat_id not in categories:
            problems.append(DatasetProblem(source, where, f"category_id {cat_id!r} is not in 'categories'", image_id))
            continue
        try:
            if crowd_flag(ann):
                continue
            if image.width is None or image.height is None:
                continue  # the image entry is bad already; its size is unknown
            box, rle = instance_geometry(ann, image.width, image.height, box_only)
        except AnnotationProblem as err:
            problems.append(DatasetProblem(source, where, str(err), image_id))
            continue
        boxes, masks = groups[(image_id, cat_id)]
        boxes.append(box)
        masks.append(rle)
    return dict(groups), box_only


def instance_geometry(ann: Mapping[str, Any], width: int, height: int, box_only: bool, hint: str = "",
                      box_scale: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, RLE | None]:  # fmt: skip
    """One annotation's checked pixel box and mask (None when box-only), or `AnnotationProblem`.

    `box_scale` (sx, sy) multiplies the stored box (SA-Co stores it normalised: (width, height)); `hint` is
    added to box messages.
    """
    rle = None
    if not box_only:
        seg = ann.get("segmentation")
        if seg is None:
            raise AnnotationProblem("missing 'segmentation' (other annotations of this file have one, so every "
                                    "annotation needs one)")  # fmt: skip
        rle = segmentation_to_rle(seg, height, width)
    if "bbox" in ann:
        bbox = ann["bbox"]
        if box_scale != (1.0, 1.0):
            x, y, w, h = check_xywh(bbox)
            sx, sy = box_scale
            bbox = [x * sx, y * sy, w * sx, h * sy]
        box = check_box_xywh_px(bbox, width, height, hint)
    elif rle is not None:
        box = rle_box_xywh_px(rle)
    else:
        raise AnnotationProblem("missing key 'bbox' (and no segmentation to take the box from)")
    return box, rle
