"""Record types every layer speaks: concept prompts, predicted instances, and masks as COCO RLE.

Boxes are named by convention: `box_xyxy_px` is (x0, y0, x1, y1) in pixels of the original image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict  # {"size": [H, W], "counts": str}: compressed COCO RLE with str counts (JSON-ready)


def encode_mask(mask: np.ndarray) -> RLE:
    """Binary (H, W) mask -> compressed COCO RLE with str counts."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_rle(rle: RLE) -> dict:
    """An RLE with bytes counts, as pycocotools wants it (ours keep str counts for JSON)."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_mask(rle: RLE) -> np.ndarray:
    """Compressed COCO RLE (str or bytes counts) -> binary (H, W) uint8 mask."""
    return mask_utils.decode(coco_rle(rle))


def mask_area(rle: RLE) -> float:
    """Foreground pixel count of an RLE mask."""
    return float(mask_utils.area(coco_rle(rle)))


@dataclass
class ConceptPrompt:
    """One concept to find in an image: a noun phrase and/or exemplar boxes (label 1 positive, 0 negative)."""

    text: str | None = None
    boxes_xyxy_px: list[tuple[float, float, float, float]] = field(default_factory=list)
    box_labels: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.box_labels == [] and self.boxes_xyxy_px:
            self.box_labels = [1] * len(self.boxes_xyxy_px)


@dataclass
class Instance:
    """One predicted (or annotated) instance of a concept."""

    mask: RLE
    box_xyxy_px: tuple[float, float, float, float]
    score: float = 1.0


@dataclass
class ConceptResult:
    """Every instance of one prompt in one image, with the image-level presence score of the pair."""

    image_id: int | str
    prompt: ConceptPrompt
    presence: float
    instances: list[Instance]
    image_size: tuple[int, int]  # (H, W) of the original image
