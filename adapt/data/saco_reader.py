"""Read an SA-Co file as training samples: image-phrase pairs grouped into one sample per image file.

In SA-Co, each `images[]` entry is a pair: an image (`file_name`, `height`, `width`) and a phrase (`text_input`),
with `is_instance_exhaustive` (default true). `annotations[]` point at a pair by `image_id`; their `bbox` is xywh
NORMALISED to [0, 1] by the image size (converted to pixels here), their segmentation an RLE of the image size or
pixel polygons. Negatives are explicit: a pair with no annotation. Crowd annotations are removed.

Pairs sharing a `file_name` become ONE `ImageSample` whose phrases follow the pairs' file order; its `image_id`
is that `file_name` (problems name the pair by its id in the entry). Masks follow the COCO rule: box-only when no
non-crowd annotation has a segmentation, otherwise every one needs one. An image with any problem (in any of its
pairs) is left out whole; problems with the file itself raise `DatasetError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam3_model.errors import DatasetError
from sam3_model.formats import check_phrase, gc_paused, read_json
from sam3_model.records import RLE

from .annotations import (
    AnnotationProblem,
    crowd_flag,
    entry_label,
    has_segmentation,
    image_folder,
    image_size,
    is_id,
    resolve_image_path,
)
from .coco_reader import instance_geometry
from .records import DatasetProblem, ImageSample, PhraseInstances, ReadResult

BOX_HINT = " (SA-Co boxes are xywh normalised to [0, 1] by the image size; the box shown is in pixels)"


@dataclass
class _Pair:
    """A checked `images[]` entry (one image-phrase pair)."""

    index: int
    key: str | None  # the image it belongs to (its normalised file_name); None when that is unusable
    phrase: str
    width: int | None
    height: int | None
    exhaustive: bool
    boxes: list[np.ndarray] = field(default_factory=list)
    masks: list[RLE] = field(default_factory=list)


@dataclass
class _Image:
    """One image file and the pairs asking about it."""

    path: Path | str  # a local path or a URL
    width: int
    height: int
    pair_ids: list[Any] = field(default_factory=list)


def read_saco(path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None,
              name: str | None = None) -> ReadResult:  # fmt: skip
    """Read an SA-Co JSON file: pairs sharing a file_name form one sample with several phrases (pair order)."""
    with gc_paused():
        data = read_json(path, "SA-Co annotation")
        return read_saco_json(data, path, image_root, name)


def read_saco_json(data: Any, path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None,
                   name: str | None = None) -> ReadResult:  # fmt: skip
    """`read_saco` on an already parsed file (`path` names it in messages and locates the default image root)."""
    source = str(path)
    if not isinstance(data, Mapping):
        raise DatasetError(f"{source}: expected an SA-Co object with images and annotations")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            got = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise DatasetError(f"{source}: '{key}' must be a list ({got}); is this an SA-Co file?")
    root = image_folder(path, image_root)
    problems: list[DatasetProblem] = []
    pairs, images = _pairs(data["images"], root, source, problems)
    box_only = _annotations(data["annotations"], pairs, source, problems)
    bad = {p.image_id for p in problems if p.image_id is not None}
    dataset = name if name is not None else Path(path).stem
    samples = []
    for key, image in images.items():
        if key in bad:
            continue
        phrases = [
            PhraseInstances(
                phrase=pairs[pid].phrase,
                boxes_xywh_px=np.asarray(pairs[pid].boxes, np.float32).reshape(-1, 4),
                masks=None if box_only else list(pairs[pid].masks),
                exhaustive=pairs[pid].exhaustive,
            )
            for pid in image.pair_ids
        ]
        samples.append(ImageSample(image.path, image.width, image.height, phrases, key, dataset))
    return ReadResult(samples, problems)


def _pairs(entries: list, root: Path | str, source: str,
           problems: list[DatasetProblem]) -> tuple[dict[Any, _Pair], dict[str, _Image]]:  # fmt: skip
    """Pair id -> checked pair, and image key (file_name) -> image with its pairs, both in file order."""
    pairs: dict[Any, _Pair] = {}
    images: dict[str, _Image] = {}
    phrases_of: dict[str, dict[str, Any]] = {}  # image key -> phrase -> pair id
    for i, img in enumerate(entries):
        where = entry_label("images", i, img)
        if not isinstance(img, Mapping):
            problems.append(DatasetProblem(source, where, f"expected an object, got {type(img).__name__}"))
            continue
        pair_id = img.get("id")
        file_name = img.get("file_name")
        key = os.path.normpath(file_name) if isinstance(file_name, str) and file_name.strip() else None

        def problem(message: str, where: str = where, key: str | None = key) -> None:
            problems.append(DatasetProblem(source, where, message, key))

        if not is_id(pair_id):
            problem(f"missing or bad 'id' {pair_id!r} (an integer or a string)")
            continue
        if pair_id in pairs:
            problem(f"duplicate image id {pair_id!r} (also images[{pairs[pair_id].index}])")
            first = pairs[pair_id]
            if first.key is not None:  # its annotations cannot be told from the duplicate's: drop its image too
                problems.append(DatasetProblem(source, entry_label("images", first.index, img),
                                               f"image id {pair_id!r} is reused by images[{i}]", first.key))
            continue
        pair = _Pair(i, key, "", None, None, True)
        pairs[pair_id] = pair
        missing = [k for k in ("file_name", "width", "height", "text_input") if k not in img]
        if missing:
            problem(f"missing key(s) {', '.join(map(repr, missing))}")
            continue
        try:
            pair.width, pair.height = image_size(img)
            image_path = resolve_image_path(root, file_name)
            pair.phrase = _phrase(img["text_input"])
            pair.exhaustive = _exhaustive(img)
        except AnnotationProblem as err:
            problem(str(err))
            continue
        assert key is not None  # resolve_image_path accepted file_name
        image = images.setdefault(key, _Image(image_path, pair.width, pair.height))
        if (image.width, image.height) != (pair.width, pair.height):
            problem(f"size {pair.width}x{pair.height} disagrees with {image.width}x{image.height} of an earlier pair "
                    f"of the same file_name {file_name!r}")  # fmt: skip
            continue
        seen = phrases_of.setdefault(key, {})
        if pair.phrase in seen:
            problem(f"phrase {pair.phrase!r} is asked of {file_name!r} twice (also pair {seen[pair.phrase]!r})")
            continue
        seen[pair.phrase] = pair_id
        image.pair_ids.append(pair_id)
    return pairs, images


def _annotations(entries: list, pairs: Mapping[Any, _Pair], source: str, problems: list[DatasetProblem]) -> bool:
    """Attach the checked non-crowd annotations to their pairs; returns whether the file is box-only."""
    box_only = not any(isinstance(a, Mapping) and has_segmentation(a.get("segmentation")) and not a.get("iscrowd")
                       for a in entries)  # fmt: skip
    for i, ann in enumerate(entries):
        where = entry_label("annotations", i, ann)
        if not isinstance(ann, Mapping):
            problems.append(DatasetProblem(source, where, f"expected an object, got {type(ann).__name__}"))
            continue
        if "image_id" not in ann:
            problems.append(DatasetProblem(source, where, "missing key 'image_id'"))
            continue
        pair_id = ann["image_id"]
        pair = pairs.get(pair_id) if is_id(pair_id) else None
        if pair is None:
            problems.append(DatasetProblem(source, where, f"image_id {pair_id!r} is not in 'images' (the pairs)"))
            continue
        try:
            if crowd_flag(ann) or pair.width is None or pair.height is None:
                continue  # crowd: removed; no size: the pair is bad already
            box, rle = instance_geometry(ann, pair.width, pair.height, box_only, BOX_HINT,
                                         box_scale=(float(pair.width), float(pair.height)))  # fmt: skip
        except AnnotationProblem as err:
            problems.append(DatasetProblem(source, where, str(err), pair.key))
            continue
        pair.boxes.append(box)
        if rle is not None:
            pair.masks.append(rle)
    return box_only


def _phrase(text: Any) -> str:
    """A pair's `text_input`: a non-empty string (stripped) that encodes as UTF-8, or `AnnotationProblem`."""
    try:
        return check_phrase(text)
    except AnnotationProblem as err:
        raise AnnotationProblem(f"text_input: {err}") from None


def _exhaustive(img: Mapping[str, Any]) -> bool:
    """A pair's `is_instance_exhaustive` (default true): a boolean or 0/1, or `AnnotationProblem`."""
    value = img.get("is_instance_exhaustive", True)
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise AnnotationProblem(f"is_instance_exhaustive must be true or false, got {value!r}")
