"""What evaluation works on: image-phrase pairs with their ground truth and their predictions.

Every dataset format is converted to these records first: an SA-Co file has one pair per `images[]` entry;
a COCO file has one pair per image x category (absent categories are negative phrases).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PairId = int  # SA-Co: the GT `images[].id`; COCO: assigned per (image_id, category_id), see `coco_pair_ids`


@dataclass
class PairTruth:
    """Ground truth of one image-phrase pair (G instances; G = 0 is a negative phrase)."""

    pair_id: PairId
    phrase: str
    height: int
    width: int
    exhaustive: bool = True  # `is_instance_exhaustive`: only exhaustive pairs are scored by the cgF1 family
    boxes_xywh: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (G, 4), units of the file
    masks: list[dict] = field(default_factory=list)  # G compressed RLEs, or [] for box-only ground truth
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (G,)
    file_name: str = ""  # the image file the pair asks about (SA-Co `file_name`), for joining predictions


@dataclass
class PairPrediction:
    """Predicted instances of one image-phrase pair (D instances, any score)."""

    pair_id: PairId
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (D,)
    boxes_xywh: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (D, 4), units of the GT file
    masks: list[dict] = field(default_factory=list)  # D compressed RLEs, or [] for box-only predictions
