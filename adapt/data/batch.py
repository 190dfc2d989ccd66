"""Batches of images with many phrases each: the vision encoder runs once per image, the detector once per phrase.

A dataset item is one transformed image with its phrases (`PhraseItem`); `PhraseCollator` stacks the images,
flattens the phrases of every image into one list of P queries (tokenised), and records which image each query
belongs to, as the official collator does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sam3_model.targets import ConceptTargets

TEXT_LENGTH = 32  # SAM 3's text context


@dataclass
class SampleMeta:
    """Where an item came from and how it was resized: enough to map predictions back to the original image."""

    image_id: int | str
    dataset: str
    height: int  # original image size
    width: int
    index: int  # position in its dataset
    # The image content occupies [top, top + size_h) x [left, left + size_w) of the model's square canvas.
    top: int = 0
    left: int = 0
    size_h: int = 0
    size_w: int = 0


@dataclass
class PhraseItem:
    """One transformed image and its phrases (positives and negatives) with targets on the model's canvas."""

    pixel_values: Tensor  # (3, S, S) normalised (mean = std = 0.5)
    phrases: list[str]  # K phrases
    boxes_cxcywh: list[Tensor]  # K entries of (T_k, 4), normalised by the canvas S
    masks: list[Tensor] | None  # K entries of (T_k, S, S) bool; None for box-only data
    meta: SampleMeta
    exhaustive: list[bool] | None = None  # K flags; None = all exhaustive


@dataclass
class PhraseBatch:
    """N images and their P phrase queries, flattened in image order."""

    pixel_values: Tensor  # (N, 3, S, S)
    input_ids: Tensor  # (P, 32)
    attention_mask: Tensor  # (P, 32)
    image_index: Tensor  # (P,) long: image of each query
    phrases: list[str]  # P
    targets: ConceptTargets  # P queries
    meta: list[SampleMeta]  # N
    exhaustive: list[bool]  # P

    @property
    def num_images(self) -> int:
        """N."""
        return self.pixel_values.shape[0]

    @property
    def num_queries(self) -> int:
        """P."""
        return len(self.phrases)

    def to(self, device: torch.device | str) -> "PhraseBatch":
        """A copy with every tensor on `device`."""
        return PhraseBatch(
            pixel_values=self.pixel_values.to(device, non_blocking=True),
            input_ids=self.input_ids.to(device, non_blocking=True),
            attention_mask=self.attention_mask.to(device, non_blocking=True),
            image_index=self.image_index.to(device, non_blocking=True),
            phrases=self.phrases,
            targets=self.targets.to(device),
            meta=self.meta,
            exhaustive=self.exhaustive,
        )

    def query_slice(self, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor, ConceptTargets]:
        """(input_ids, attention_mask, image_index, targets) of queries start..stop (a phrase chunk)."""
        t = self.targets
        masks = t.masks[start:stop] if t.masks is not None else None
        return (self.input_ids[start:stop], self.attention_mask[start:stop], self.image_index[start:stop],
                ConceptTargets(t.boxes_cxcywh[start:stop], masks))


class PhraseCollator:
    """Collate `PhraseItem`s into a `PhraseBatch`, tokenising phrases with SAM 3's tokenizer (picklable)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[PhraseItem]) -> PhraseBatch:
        """Stack images, flatten phrases and targets in image order."""
        phrases = [p for item in items for p in item.phrases]
        tokens = self.tokenizer(phrases, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                                return_tensors="pt")
        has_masks = all(item.masks is not None for item in items)
        image_index = torch.cat([torch.full((len(item.phrases),), i, dtype=torch.long) for i, item in enumerate(items)])
        exhaustive = [e for item in items for e in (item.exhaustive or [True] * len(item.phrases))]
        return PhraseBatch(
            pixel_values=torch.stack([item.pixel_values for item in items]),
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            image_index=image_index,
            phrases=phrases,
            targets=ConceptTargets([b for item in items for b in item.boxes_cxcywh],
                                   [m for item in items for m in item.masks] if has_masks else None),
            meta=[item.meta for item in items],
            exhaustive=exhaustive,
        )
