"""A torch Dataset of images with many phrases each: reader samples -> transformed `PhraseItem`s.

Each item is one image with every phrase asked of it (positives and negatives) plus `negatives_per_image`
phrases drawn from a hard-negative vocabulary, none of them already asked of the image (case-insensitive),
added as exhaustive negatives (zero instances). With `max_negatives`, each draw keeps at most that many of the
image's annotated negative phrases (picked at random; exhaustively annotated data such as the toy domain's asks
every phrase of an ontology, mostly negatives). Phrases with more than `max_instances_per_phrase` annotated
instances are dropped (the official FilterFindQueriesWithTooManyOut(200); counted before the transform, which
only removes instances, so no decoding of thousands of masks for a phrase that is dropped anyway). Instances
the transform empties are dropped from their phrase, which stays, possibly as a negative.

Every sample must have at least one phrase, or `negatives_per_image` > 0: an item with no phrase has nothing
to train. A training draw's randomness (augmentation, hard negatives, negative subsampling) comes from the seed
the training sampler gives with its index (`MixtureSampler(with_seeds=True)`), so an item does not depend on the
worker that makes it or on a resume; indexed by a plain int (validation, tests) the global numpy RNG is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from itertools import pairwise

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from sam3_model.errors import ConfigError, DatasetError, ImageError
from sam3_model.images import load_image
from sam3_model.records import RLE

from .batch import PhraseItem, SampleMeta
from .records import ImageSample, PhraseInstances
from .transforms import TransformResult

Transform = Callable[..., TransformResult]  # TrainTransform, EvalTransform: (image, boxes, masks, seed=None)
Random = Any  # numpy's global `np.random` module or a `np.random.Generator`: both have choice() and integers()


def _phrase_key(phrase: str) -> str:
    return phrase.strip().lower()


def decode_mask_c_order(rle: RLE, out: np.ndarray | None = None) -> np.ndarray:
    """Compressed RLE -> C-contiguous binary (H, W) uint8 mask (written into `out`, zeros of (H, W), if given).

    pycocotools decodes column-major (Fortran order), which OpenCV must copy to row-major before resizing;
    copying only the mask's bounding box (read from the RLE, a superset of the mask) is ~10x cheaper.
    """
    counts = rle["counts"]
    coded = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    mask_f = mask_utils.decode(coded)  # (H, W) Fortran order
    x, y, w, h = (int(v) for v in mask_utils.toBbox(coded))
    mask = np.zeros(mask_f.shape, np.uint8) if out is None else out
    mask[y:y + h, x:x + w] = mask_f[y:y + h, x:x + w]
    return mask


class PhraseDataset(Dataset):
    """Images with their phrases, transformed onto the model's canvas; items are `PhraseItem`s."""

    def __init__(self, samples: Sequence[ImageSample], transform: Transform, hard_negatives: Sequence[str] = (),
                 negatives_per_image: int = 0, max_instances_per_phrase: int = 200,
                 max_negatives: int | None = None) -> None:
        if not isinstance(negatives_per_image, int) or negatives_per_image < 0:
            raise ConfigError(f"negatives_per_image must be an integer >= 0, got {negatives_per_image!r}")
        if max_negatives is not None and (not isinstance(max_negatives, int) or max_negatives < 0):
            raise ConfigError(f"max_negatives must be an integer >= 0 or null, got {max_negatives!r}")
        if not isinstance(max_instances_per_phrase, int) or max_instances_per_phrase < 1:
            raise ConfigError(f"max_instances_per_phrase must be an integer >= 1, got {max_instances_per_phrase!r}")
        vocabulary: dict[str, str] = {}  # lower-case key -> first spelling
        for phrase in hard_negatives:
            if phrase.strip():
                vocabulary.setdefault(_phrase_key(phrase), phrase.strip())
        if negatives_per_image and not vocabulary:
            raise ConfigError("negatives_per_image > 0 needs a non-empty hard_negatives vocabulary")
        if not negatives_per_image:
            empty = next((s for s in samples if not s.phrases), None)
            if empty is not None:
                raise ConfigError(f"image {empty.image_id!r} ({empty.image_path}) has no phrase; drop it from the "
                                  "dataset or set negatives_per_image > 0")
        self.samples = list(samples)
        self.transform = transform
        self.negatives_per_image = negatives_per_image
        self.max_instances_per_phrase = max_instances_per_phrase
        self.max_negatives = max_negatives
        self._vocab_keys = list(vocabulary)
        self._vocab = list(vocabulary.values())
        # Box-only data (no phrase with instances has masks) gives items with masks None.
        self.has_masks = any(p.masks is not None for s in self.samples for p in s.phrases if p.num_instances)
        if self.has_masks:
            for sample in self.samples:
                for phrase in sample.phrases:
                    n_masks = None if phrase.masks is None else len(phrase.masks)
                    if phrase.num_instances and n_masks != phrase.num_instances:
                        raise DatasetError(f"image {sample.image_id!r}: phrase {phrase.phrase!r} has {n_masks} masks "
                                           f"for {phrase.num_instances} boxes; a dataset has masks for every instance "
                                           "or for none")

    def __len__(self) -> int:
        return len(self.samples)

    def _hard_negatives(self, asked: set[str], rng: Random) -> list[str]:
        """Up to `negatives_per_image` vocabulary phrases not in `asked` (lower-case keys), without repeats."""
        k = self.negatives_per_image
        if not k:
            return []
        # At most len(asked) of the drawn candidates are excluded, so k + len(asked) draws suffice.
        n = min(len(self._vocab), k + len(asked))
        picks = rng.choice(len(self._vocab), size=n, replace=False)
        return [self._vocab[j] for j in picks if self._vocab_keys[j] not in asked][:k]

    def _subsample_negatives(self, phrases: list[PhraseInstances], rng: Random) -> list[PhraseInstances]:
        """At most `max_negatives` of the annotated negative phrases (random each draw); positives all stay."""
        negatives = [i for i, p in enumerate(phrases) if not p.num_instances]
        if self.max_negatives is None or len(negatives) <= self.max_negatives:
            return phrases
        k = self.max_negatives or int(len(negatives) == len(phrases))  # an image keeps at least one phrase
        keep = set(rng.choice(negatives, size=k, replace=False).tolist())
        return [p for i, p in enumerate(phrases) if p.num_instances or i in keep]

    def _masks(self, sample: ImageSample, phrases: list[PhraseInstances], size_hw: tuple[int, int]) -> np.ndarray:
        """(T, H, W) uint8: every instance mask of `phrases`, in order (counts were checked in __init__)."""
        rles = [rle for p in phrases if p.num_instances for rle in p.masks]
        masks = np.zeros((len(rles), *size_hw), np.uint8)
        for rle, out in zip(rles, masks):
            if tuple(rle["size"]) != size_hw:
                raise DatasetError(f"image {sample.image_id!r}: a mask is {tuple(rle['size'])}, the image is {size_hw}")
            decode_mask_c_order(rle, out)
        return masks

    def __getitem__(self, key: int | tuple[int, int]) -> PhraseItem:
        """The transformed image `key` with its phrases, instances and hard negatives.

        `key` is an index, or `(index, seed)` from a seeded training sampler: then every random choice of the
        item (augmentation, hard negatives, negative subsampling) comes from `seed`, not from a global RNG.
        """
        index, seed = key if isinstance(key, tuple) else (key, None)
        rng: Random = np.random if seed is None else np.random.default_rng(seed)
        sample = self.samples[index]
        image = np.asarray(load_image(sample.image_path, where=str(sample.image_path)))  # (H, W, 3) uint8
        size_hw = image.shape[:2]
        if size_hw != (sample.height, sample.width):
            raise ImageError(f"{sample.image_path}: the image is {size_hw[1]}x{size_hw[0]}, its annotation says "
                             f"{sample.width}x{sample.height}")
        phrases = self._subsample_negatives([p for p in sample.phrases if p.num_instances <= self.max_instances_per_phrase],
                                            rng)
        counts = [p.num_instances for p in phrases]
        boxes_xywh = np.concatenate([np.asarray(p.boxes_xywh_px, np.float32).reshape(-1, 4) for p in phrases]
                                    or [np.zeros((0, 4), np.float32)])  # (T, 4) xywh px
        boxes_xyxy = np.concatenate([boxes_xywh[:, :2], boxes_xywh[:, :2] + boxes_xywh[:, 2:]], axis=1)  # (T, 4)
        masks = self._masks(sample, phrases, size_hw) if self.has_masks else None  # (T, H, W) uint8
        result = self.transform(image, boxes_xyxy, masks,
                                seed=None if seed is None else int(rng.integers(0, 2**31 - 1)))

        canvas = float(result.pixel_values.shape[-1])
        boxes_xyxy_norm = torch.from_numpy(result.boxes_xyxy_px) / canvas  # (T', 4) xyxy normalised
        boxes_cxcywh = torch.cat([(boxes_xyxy_norm[:, :2] + boxes_xyxy_norm[:, 2:]) / 2,
                                  boxes_xyxy_norm[:, 2:] - boxes_xyxy_norm[:, :2]], dim=1)  # (T', 4)
        kept_per_phrase = [int(k.sum()) for k in np.split(result.keep, np.cumsum(counts)[:-1])] if counts else []
        starts = np.concatenate([[0], np.cumsum(kept_per_phrase)]).astype(int)
        item_boxes = [boxes_cxcywh[a:b] for a, b in pairwise(starts)]
        item_masks = ([result.masks[a:b] for a, b in pairwise(starts)]
                      if result.masks is not None else None)
        texts = [p.phrase for p in phrases]
        exhaustive = [p.exhaustive for p in phrases]

        negatives = self._hard_negatives({_phrase_key(p.phrase) for p in sample.phrases}, rng)
        if negatives:
            side = result.pixel_values.shape[-1]
            texts += negatives
            exhaustive += [True] * len(negatives)
            item_boxes += [torch.zeros((0, 4)) for _ in negatives]
            if item_masks is not None:
                item_masks += [torch.zeros((0, side, side), dtype=torch.bool) for _ in negatives]

        meta = SampleMeta(image_id=sample.image_id, dataset=sample.dataset, height=sample.height, width=sample.width,
                          index=index, top=result.top, left=result.left, size_h=result.size_h, size_w=result.size_w)
        return PhraseItem(pixel_values=result.pixel_values, phrases=texts, boxes_cxcywh=item_boxes, masks=item_masks,
                          meta=meta, exhaustive=exhaustive)
