"""Image transforms for training and evaluation (albumentations): the image, its boxes and masks move together.

Train = the official SAM 3 train transform: a square resize (aspect ratio NOT preserved) to a side drawn
uniformly from `official_train_sizes`, then a pad to the S x S canvas at a uniformly random position (fill 0,
i.e. -1 after normalisation); optional flips and colour jitter (not in the official recipe) act on the resized
content before the pad, so padding stays exactly -1 and the content's placement is the pad offsets.
Eval = the official val transform and HF's processor: a plain S x S stretch, no padding.

Instances that end empty (a box of zero width or height, or a mask with no pixel left) are marked in `keep`
and dropped, as the official FilterEmptyTargets does.

Randomness. `TrainTransform(seed=None)` (training) seeds each call from numpy's global RNG. Lightning's
`seed_everything(workers=True)` seeds it in the main process and, per DataLoader worker and rank, in every
worker (torch itself also seeds numpy per worker), so runs are reproducible under a seed and workers differ.
`TrainTransform(seed=s)` uses its own stream instead; inside a DataLoader worker that stream is mixed with the
worker's torch seed, so workers (and epochs, whose workers get new seeds) still differ.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from adapt.settings import AugmentConfig
from sam3_model.errors import ConfigError, ImageError, TargetError

OFFICIAL_CANVAS = 1008
OFFICIAL_SIZES = tuple(range(480, 993, 32))  # 17 sides for the 1008 canvas
_MEAN = _STD = (0.5, 0.5, 0.5)
# T binary (H, W) uint8 masks: a list, or one (T, H, W) array (saves a copy; C-contiguous masks resize fastest).
Masks = Sequence[np.ndarray] | np.ndarray


@dataclass
class TransformResult:
    """An image on the model's S x S canvas with its surviving instances."""

    pixel_values: Tensor  # (3, S, S) float32, normalised with mean = std = 0.5; padding is -1
    boxes_xyxy_px: np.ndarray  # (T', 4) float32 xyxy px on the canvas, kept instances in input order
    masks: Tensor | None  # (T', S, S) bool, or None when no masks were given
    keep: np.ndarray  # (T,) bool: input instances that survived
    # The image content occupies [top, top + size_h) x [left, left + size_w) of the canvas.
    top: int
    left: int
    size_h: int
    size_w: int


def official_train_sizes(image_size: int) -> list[int]:
    """The official random-resize sides (480..992 step 32 at 1008), scaled to an `image_size` canvas."""
    if not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"image_size must be an integer >= 8, got {image_size!r}")
    scaled = {round(s * image_size / OFFICIAL_CANVAS) for s in OFFICIAL_SIZES}
    return sorted(s for s in scaled if 8 <= s <= image_size)


def _check_inputs(image: np.ndarray, boxes_xyxy_px: np.ndarray, masks: Masks | None
                  ) -> tuple[np.ndarray, Masks | None]:
    """Validate the inputs: the boxes as a (T, 4) float32 array, bool masks viewed as uint8."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            and 0 not in image.shape):
        shape = getattr(image, "shape", None)
        raise ImageError(f"expected an (H, W, 3) uint8 RGB image, got {getattr(image, 'dtype', type(image))} {shape}")
    boxes = np.asarray(boxes_xyxy_px, dtype=np.float32).reshape(-1, 4)  # (T, 4) xyxy px
    if not np.isfinite(boxes).all():
        raise TargetError("boxes contain NaN or inf")
    if masks is not None:
        if len(masks) != len(boxes):
            raise TargetError(f"{len(masks)} masks for {len(boxes)} boxes")
        for i, mask in enumerate(masks):
            if mask.shape != image.shape[:2]:
                raise TargetError(f"mask {i} is {mask.shape}, the image is {image.shape[:2]}")
            if mask.dtype not in (np.uint8, np.bool_):
                raise TargetError(f"mask {i} must be uint8 or bool, got {mask.dtype}")
        if isinstance(masks, np.ndarray):
            masks = masks.view(np.uint8)
        else:
            masks = [m.view(np.uint8) for m in masks]
    return boxes, masks


def _run(compose: A.Compose, image: np.ndarray, boxes_xyxy_px: np.ndarray, masks: Masks | None,
         image_size: int) -> TransformResult:
    """Apply `compose` (which must end with Normalize) and collect the surviving instances."""
    boxes, masks = _check_inputs(image, boxes_xyxy_px, masks)
    h, w = image.shape[:2]
    clipped = boxes.copy()  # (T, 4) xyxy px, inside the image
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, w)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, h)
    valid = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])  # (T,)
    index = np.flatnonzero(valid)
    data = {"image": image, "bboxes": clipped[index], "index": index}
    if masks is not None and len(index):
        if len(index) == len(masks):
            data["masks"] = masks
        else:
            data["masks"] = masks[index] if isinstance(masks, np.ndarray) else [masks[i] for i in index]
    out = compose(**data)

    keep = np.zeros(len(boxes), dtype=bool)
    kept_index = np.asarray(out["index"], dtype=np.int64)
    boxes_out = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)  # (T', 4) xyxy px on the canvas
    positive = (boxes_out[:, 2] > boxes_out[:, 0]) & (boxes_out[:, 3] > boxes_out[:, 1])
    masks_out = None
    if masks is not None:
        if len(index):
            stacked = np.asarray(out["masks"])  # (len(index), S, S) uint8, in `index` order
            where = np.searchsorted(index, kept_index)
            stacked = stacked[where] if len(where) != len(index) else stacked
            positive &= stacked.reshape(len(stacked), -1).any(axis=1)
            masks_out = torch.from_numpy((stacked if positive.all() else stacked[positive]) != 0)  # (T', S, S) bool
        else:
            masks_out = torch.zeros((0, image_size, image_size), dtype=torch.bool)
    keep[kept_index[positive]] = True

    top, left, size_h, size_w = 0, 0, image_size, image_size
    for name, params in out.get("applied_transforms", ()):
        if name == "PadIfNeeded":
            top, left = int(params["pad_top"]), int(params["pad_left"])
            size_h, size_w = (int(v) for v in params["shape"][:2])
    pixel_values = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))  # (3, S, S)
    return TransformResult(pixel_values, boxes_out[positive], masks_out, keep, top, left, size_h, size_w)


def _bbox_params() -> A.BboxParams:
    return A.BboxParams(format="pascal_voc", label_fields=["index"], clip=True, filter_invalid_bboxes=True)


def _normalize() -> A.Normalize:
    return A.Normalize(mean=_MEAN, std=_STD, max_pixel_value=255.0)


class TrainTransform:
    """The official SAM 3 train transform (random square resize + random pad to S x S), plus optional extras."""

    def __init__(self, image_size: int, augment: AugmentConfig | None = None, seed: int | None = None) -> None:
        augment = augment or AugmentConfig()
        self.image_size = image_size
        self.augment = augment
        self.sizes = official_train_sizes(image_size)
        self.seed = seed
        steps: list = []
        if augment.scale_jitter:
            steps.append(A.OneOf([A.Resize(s, s) for s in self.sizes], p=1.0))  # uniform over the sides
        else:
            steps.append(A.Resize(image_size, image_size))
        if augment.hflip:
            steps.append(A.HorizontalFlip(p=augment.hflip))
        if augment.vflip:
            steps.append(A.VerticalFlip(p=augment.vflip))
        if augment.color_jitter:
            s = float(augment.color_jitter)
            steps.append(A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(s / 4, 0.5), p=1.0))
        if augment.scale_jitter:
            steps.append(A.PadIfNeeded(image_size, image_size, position="random", border_mode=cv2.BORDER_CONSTANT,
                                       fill=0, fill_mask=0))
        steps.append(_normalize())
        self._compose = A.Compose(steps, bbox_params=_bbox_params(), save_applied_params=True, seed=0)
        self._stream: np.random.Generator | None = None
        self._stream_owner: tuple[int, int | None] | None = None

    def _call_seed(self) -> int:
        """The seed of one call: numpy's global RNG, or this transform's own stream when a seed was given."""
        if self.seed is None:
            return int(np.random.randint(0, 2**31 - 1))
        worker = torch.utils.data.get_worker_info()
        owner = (os.getpid(), None if worker is None else worker.id)
        if self._stream is None or self._stream_owner != owner:
            entropy = [self.seed] if worker is None else [self.seed, torch.initial_seed()]
            self._stream, self._stream_owner = np.random.default_rng(entropy), owner
        return int(self._stream.integers(0, 2**31 - 1))

    def __call__(self, image: np.ndarray, boxes_xyxy_px: np.ndarray, masks: Masks | None = None,
                 seed: int | None = None) -> TransformResult:
        """Transform an (H, W, 3) uint8 image, its (T, 4) xyxy px boxes and T (H, W) binary masks (or None).

        `seed`: this call's randomness (a training draw's); None takes it from the global RNG or the own stream.
        """
        seed = self._call_seed() if seed is None else seed
        self._compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return _run(self._compose, image, boxes_xyxy_px, masks, self.image_size)


class EvalTransform:
    """The official val transform and HF's processor: a plain S x S resize, no padding; deterministic (`seed` unused)."""

    def __init__(self, image_size: int) -> None:
        if not isinstance(image_size, int) or image_size < 8:
            raise ConfigError(f"image_size must be an integer >= 8, got {image_size!r}")
        self.image_size = image_size
        self._compose = A.Compose([A.Resize(image_size, image_size), _normalize()], bbox_params=_bbox_params(),
                                  seed=0)

    def __call__(self, image: np.ndarray, boxes_xyxy_px: np.ndarray, masks: Masks | None = None,
                 seed: int | None = None) -> TransformResult:
        """Transform an (H, W, 3) uint8 image, its (T, 4) xyxy px boxes and T (H, W) binary masks (or None)."""
        return _run(self._compose, image, boxes_xyxy_px, masks, self.image_size)
