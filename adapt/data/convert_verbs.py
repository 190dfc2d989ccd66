"""`sam3-adapt convert KIND`: other label formats and public datasets' layouts -> a COCO instance file.

Each function converts, then prints one line: what was written, and how many images were skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .convert_semantic import ConversionStats

OnError = Literal["stop", "skip"]


def summary(stats: ConversionStats, out: Path) -> str:
    """One line: what was written, and how many images were skipped (with the first reason)."""
    line = f"wrote {out}: {stats.images} images, {stats.instances} instances"
    if stats.skipped:
        line += f"; skipped {stats.skipped} images with problems (first: {stats.problems[0]})"
    return line


def semantic(images: Path, masks: Path, classes: Path, out: Path, min_area: int = 1,
             on_error: OnError = "stop") -> None:
    """Class-index masks (PNG, VOC palette PNGs) -> one instance per connected component.

    Args:
        images: image folder.
        masks: mask folder (a PNG per image, same relative stem).
        classes: YAML/JSON map of pixel value to class name (`background` and `ignore` values left out).
        out: COCO JSON to write (in the image folder or above).
        min_area: drop components smaller than this many pixels.
        on_error: stop at bad images, or skip them (counted).
    """
    from .convert_semantic import convert_semantic_masks

    print(summary(convert_semantic_masks(images, masks, classes, out, min_area=min_area, on_error=on_error), out))


def yolo(images: Path, labels: Path, names: Path, out: Path, on_error: OnError = "stop") -> None:
    """YOLO segmentation (or detection) labels, as ultralytics writes them -> COCO instances.

    Args:
        images: image folder.
        labels: label folder (a .txt per image, same relative stem).
        names: YOLO data.yaml (its `names`: a list or a mapping).
        out: COCO JSON to write (in the image folder or above).
        on_error: stop at bad images, or skip them (counted).
    """
    from .convert_yolo import convert_yolo

    print(summary(convert_yolo(images, labels, names, out, on_error=on_error), out))


def binary_masks(root: Path, phrase: str, out: Path, images: str = "images", masks: str = "masks",
                 mask_suffix: str = "", threshold: int = 127, min_area: int = 1, on_error: OnError = "stop") -> None:
    """Images + binary masks (Kvasir-SEG, ISIC) -> one phrase, one instance per connected component.

    Args:
        root: dataset folder.
        phrase: the class name, e.g. 'polyp' or 'skin lesion'.
        out: COCO JSON to write (in the image folder or above).
        images: image folder, relative to root.
        masks: mask folder, relative to root.
        mask_suffix: mask stem = image stem + this (ISIC: _segmentation).
        threshold: foreground: mask pixel > this (0..254).
        min_area: drop components smaller than this many pixels.
        on_error: stop at bad images, or skip them (counted).
    """
    from .convert_domains import convert_binary_masks

    stats = convert_binary_masks(root / images, root / masks, phrase, out, mask_suffix=mask_suffix,
                                 threshold=threshold, min_area=min_area, on_error=on_error)
    print(summary(stats, out))


def mvtec(root: Path, out: Path, category: list[str] | None = None, phrase_template: str = "{defect}",
          no_good: bool = False, threshold: int = 127, min_area: int = 1, on_error: OnError = "stop") -> None:
    """MVTec AD test split -> one phrase per defect type; defect-free (good) images kept as negatives.

    Args:
        root: MVTec AD folder (holding <category>/test/).
        out: COCO JSON to write (in the image folder or above).
        category: only these categories (default: all).
        phrase_template: phrase of a defect type, from {defect} and {category} (underscores as spaces).
        no_good: leave out the test/good images (negatives).
        threshold: foreground: mask pixel > this (0..254).
        min_area: drop components smaller than this many pixels.
        on_error: stop at bad images, or skip them (counted).
    """
    from .convert_domains import convert_mvtec

    stats = convert_mvtec(root, out, categories=category, phrase_template=phrase_template, include_good=not no_good,
                          threshold=threshold, min_area=min_area, on_error=on_error)
    print(summary(stats, out))


def foodseg103(root: Path, out: Path, split: Literal["train", "test"] = "train", min_area: int = 1,
               on_error: OnError = "stop") -> None:
    """FoodSeg103 (Images/img_dir, Images/ann_dir, category_id.txt) -> one instance per connected component.

    Args:
        root: dataset folder.
        out: COCO JSON to write (in the image folder or above).
        split: train or test.
        min_area: drop components smaller than this many pixels.
        on_error: stop at bad images, or skip them (counted).
    """
    from .convert_domains import convert_foodseg103

    print(summary(convert_foodseg103(root, out, split=split, min_area=min_area, on_error=on_error), out))


def uecfoodpix(root: Path, out: Path, split: Literal["train", "test"] = "train", min_area: int = 1,
               on_error: OnError = "stop") -> None:
    """UECFoodPix Complete (<split>/img, <split>/mask red channel, category.txt) -> one instance per component.

    Args:
        root: dataset folder.
        out: COCO JSON to write (in the image folder or above).
        split: train or test.
        min_area: drop components smaller than this many pixels.
        on_error: stop at bad images, or skip them (counted).
    """
    from .convert_domains import convert_uecfoodpix

    print(summary(convert_uecfoodpix(root, out, split=split, min_area=min_area, on_error=on_error), out))
