"""Training targets for B image-phrase queries: the instances of each phrase in its image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .boxes import cxcywh_to_xyxy
from .errors import TargetError


@dataclass
class ConceptTargets:
    """Ground truth of B queries. Query b has T_b instances; T_b = 0 is a negative phrase.

    Boxes are cxcywh normalised to the model's (padded) input canvas; masks, when given, are binary at one
    common resolution (the canvas, in pixels) for every query. Prefer bool masks: the mask loss converts them
    to float a few at a time, so a 1008 x 1008 target costs 1 MB rather than 4 MB.
    """

    boxes_cxcywh: list[Tensor]  # B entries of (T_b, 4)
    masks: list[Tensor] | None = None  # B entries of (T_b, H, W), {0, 1}

    def __post_init__(self) -> None:
        for b, boxes in enumerate(self.boxes_cxcywh):
            if boxes.dim() != 2 or boxes.shape[-1] != 4:
                raise TargetError(f"query {b}: boxes must have shape (T, 4), got {tuple(boxes.shape)}")
            if not torch.isfinite(boxes).all():
                raise TargetError(f"query {b}: boxes contain NaN or inf")
            if (boxes[:, 2:] <= 0).any():
                raise TargetError(f"query {b}: a box has zero width or height; drop empty instances first")
        if self.masks is not None:
            if len(self.masks) != len(self.boxes_cxcywh):
                raise TargetError(f"{len(self.masks)} mask entries for {len(self.boxes_cxcywh)} queries")
            for b, (masks, boxes) in enumerate(zip(self.masks, self.boxes_cxcywh)):
                if masks.dim() != 3 or masks.shape[0] != boxes.shape[0]:
                    raise TargetError(f"query {b}: expected ({boxes.shape[0]}, H, W) masks, got {tuple(masks.shape)}")
                if masks.dtype != torch.bool and ((masks != 0) & (masks != 1)).any():
                    raise TargetError(f"query {b}: masks must be binary (0/1 or bool)")
            sizes = {tuple(m.shape[-2:]) for m in self.masks}
            if len(sizes) > 1:
                raise TargetError(f"masks of one batch must share one resolution, got {sorted(sizes)}")

    @property
    def batch_size(self) -> int:
        """Number of image-phrase queries B."""
        return len(self.boxes_cxcywh)

    @property
    def num_boxes(self) -> Tensor:
        """(B,) number of instances per query."""
        return torch.tensor([len(b) for b in self.boxes_cxcywh], dtype=torch.long)

    @property
    def has_instances(self) -> Tensor:
        """(B,) True for queries whose phrase has at least one instance."""
        return self.num_boxes > 0

    def packed_boxes_cxcywh(self) -> Tensor:
        """(sum T_b, 4) every query's boxes, concatenated in query order."""
        return torch.cat(self.boxes_cxcywh, dim=0)

    def packed_boxes_xyxy(self) -> Tensor:
        """(sum T_b, 4) xyxy, normalised."""
        return cxcywh_to_xyxy(self.packed_boxes_cxcywh())

    def packed_masks(self) -> Tensor | None:
        """(sum T_b, H, W) every query's masks, concatenated in query order."""
        return torch.cat(self.masks, dim=0) if self.masks is not None else None

    def to(self, device: torch.device | str) -> "ConceptTargets":
        """A copy on `device`."""
        masks = [m.to(device) for m in self.masks] if self.masks is not None else None
        return ConceptTargets([b.to(device) for b in self.boxes_cxcywh], masks)
