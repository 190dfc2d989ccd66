"""Predict on a ground truth's own images and phrases, writing results in its ids and box units.

`predict --gt FILE` and `eval --model M --gt FILE` use this: every image of the file is asked every phrase the
file asks of it (COCO: every category kept by the category rules; SA-Co: the pairs sharing the image), and every
result carries the ground truth's `image_id` (COCO image id, SA-Co pair id), `category_id`, `file_name` and
`phrase`, with `bbox` in the file's unit (COCO: pixels; SA-Co: normalised). So the output joins the ground truth
by id (pycocotools, the official evaluator) and by name (`sam3-adapt eval`) alike, whatever order anything is in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sam3_model.errors import DatasetError, ImageError
from sam3_model.formats import CategoryRules, detect_format, read_json
from sam3_model.images import read_image_size

from .cgf1 import load_saco_truth
from .coco import apply_category_rules


@dataclass
class TruthImage:
    """One image of a ground truth and what it is asked: (phrase, image_id, category_id) per query."""

    path: Path
    file_name: str  # as the ground truth writes it
    height: int
    width: int
    where: str  # the entry that declares it, for messages
    queries: list[tuple[str, Any, Any]] = field(default_factory=list)


@dataclass
class TruthQueries:
    """Every image of a ground-truth file with its queries, and the file's box unit."""

    format: str  # "coco" (pixel boxes) or "saco" (normalised boxes)
    images: list[TruthImage]
    notes: list[str] = field(default_factory=list)

    @property
    def num_queries(self) -> int:
        return sum(len(image.queries) for image in self.images)


def truth_queries(gt_path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None,
                  rules: CategoryRules = CategoryRules(), format: str | None = None) -> TruthQueries:  # noqa: B008
    """The images and phrases of a COCO or SA-Co file; images are found under `image_root` (default: its folder)."""
    data = read_json(gt_path, "ground truth")
    fmt = format or detect_format(data, str(gt_path))
    root = Path(image_root) if image_root is not None else Path(gt_path).parent
    if fmt == "saco":
        truth = load_saco_truth(gt_path, data)
        category = truth.category_ids[0] if truth.category_ids else 1
        images: dict[str, TruthImage] = {}
        for i, (pair_id, pair) in enumerate(truth.items()):
            image = images.get(pair.file_name)
            if image is None:
                image = images[pair.file_name] = TruthImage(
                    root / pair.file_name, pair.file_name, pair.height, pair.width,
                    f"{gt_path}: images[{i}] (id {pair_id!r})")
            image.queries.append((pair.phrase, pair_id, category))
        return TruthQueries("saco", list(images.values()))
    gt, notes = apply_category_rules(data, rules, str(gt_path))
    categories = [(str(c["name"]).strip(), c["id"]) for c in gt["categories"]]
    images_out = []
    for i, img in enumerate(gt["images"]):
        where = f"{gt_path}: images[{i}] (id {img.get('id')!r})"
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise DatasetError(f"{where}: no file_name, so its image cannot be found")
        images_out.append(TruthImage(root / img["file_name"], img["file_name"], int(img["height"]), int(img["width"]),
                                     where, [(name, img["id"], cid) for name, cid in categories]))
    return TruthQueries("coco", images_out, notes)


def check_truth_images(queries: TruthQueries) -> None:
    """Every image exists and has the size its entry declares (after EXIF orientation); else one line naming it."""
    for image in queries.images:
        try:
            width, height = read_image_size(image.path)
        except ImageError as err:
            raise DatasetError(f"{image.where}: {err}") from None
        if (width, height) != (image.width, image.height):
            raise DatasetError(f"{image.where}: {image.path} is {width}x{height} (width x height), the ground truth "
                               f"says {image.width}x{image.height}")


def predict_on_truth(segmenter: Any, queries: TruthQueries, progress: bool = True) -> list[dict]:
    """Run `segmenter` (a `ConceptSegmenter`) on every image's queries; COCO results in the ground truth's terms."""
    from sam3_model.predict import to_coco_results

    entries: list[dict] = []
    bar = tqdm(queries.images, desc="predict", unit="image", disable=not progress,
               postfix={"phrases": queries.num_queries})
    for image in bar:
        phrases = [phrase for phrase, _, _ in image.queries]
        ids = [image_id for _, image_id, _ in image.queries]
        results = segmenter([str(image.path)], phrases, image_ids=[ids])
        for result, (phrase, _, category) in zip(results[0], image.queries):
            convention = "coco" if queries.format == "coco" else "saco"
            for entry in to_coco_results([[result]], convention, category_ids={phrase: category}):
                entries.append({**entry, "category_id": category, "phrase": phrase, "file_name": image.file_name})
    return entries
