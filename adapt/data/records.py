"""What every reader produces: images, each with the phrases asked of it and their instances.

A phrase with no instance is a negative phrase (the model must say "absent"). Boxes are xywh in pixels of the
original image; masks are compressed COCO RLEs of the original image size (str counts), or None for box-only data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sam3_model.records import RLE


@dataclass
class PhraseInstances:
    """One phrase asked of an image and every instance of it there (none: a negative phrase)."""

    phrase: str
    boxes_xywh_px: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (T, 4)
    masks: list[RLE] | None = None  # T RLEs of the image's (H, W); None when the dataset has boxes only
    exhaustive: bool = True  # every instance is annotated (SA-Co `is_instance_exhaustive`)

    @property
    def num_instances(self) -> int:
        """T, the number of instances."""
        return len(self.boxes_xywh_px)


@dataclass
class ImageSample:
    """One image of a dataset and every phrase asked of it (positives and negatives)."""

    image_path: Path | str  # resolved, inside the dataset's image folder; an fsspec URL (text) for a remote one
    width: int
    height: int
    phrases: list[PhraseInstances]
    image_id: int | str  # the id in the source annotation file
    dataset: str = ""  # name of the dataset it came from (for mixing, logging and provenance)


@dataclass
class DatasetProblem:
    """One bad entry of a dataset: which file, which entry, what is wrong."""

    file: str
    entry: str  # e.g. "annotations[12] (id 57)" or "images[3] (file_name 'a.jpg')"
    message: str
    image_id: int | str | None = None  # the image the problem makes unusable, when there is one

    def __str__(self) -> str:
        return f"{self.file}: {self.entry}: {self.message}"


@dataclass
class ReadResult:
    """Samples that are fine and problems found. Images with a problem are left out of `samples`."""

    samples: list[ImageSample]
    problems: list[DatasetProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left out on purpose (placeholder categories), to report
