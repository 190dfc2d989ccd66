"""Box conversions and element-wise overlaps. Conventions are in the names: cxcywh / xyxy, normalised / px.

The element-wise IoU and GIoU divide by the exact union and enclosing area, as the official
`fast_diag_box_iou` does (torchvision's losses add 1e-7, which biases small boxes). Boxes with positive
width and height, as targets and sigmoid-parametrised predictions are, never divide by zero.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy, same units."""
    return box_convert(boxes, "cxcywh", "xyxy")


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh, same units."""
    return box_convert(boxes, "xyxy", "cxcywh")


def _area(boxes_xyxy: Tensor) -> Tensor:
    return (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).clamp(min=0).prod(dim=-1)


def _paired_iou_and_union(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    top_left = boxes1_xyxy[:, :2].maximum(boxes2_xyxy[:, :2])
    bottom_right = boxes1_xyxy[:, 2:].minimum(boxes2_xyxy[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    union = _area(boxes1_xyxy) + _area(boxes2_xyxy) - inter
    return inter / union, union


def paired_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """IoU of boxes1[i] with boxes2[i]: (N, 4), (N, 4) -> (N,)."""
    return _paired_iou_and_union(boxes1_xyxy, boxes2_xyxy)[0]


def paired_giou_loss(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """1 - GIoU of boxes1[i] with boxes2[i]: (N, 4), (N, 4) -> (N,)."""
    iou, union = _paired_iou_and_union(boxes1_xyxy, boxes2_xyxy)
    enclosing_xyxy = torch.cat([boxes1_xyxy[:, :2].minimum(boxes2_xyxy[:, :2]),
                                boxes1_xyxy[:, 2:].maximum(boxes2_xyxy[:, 2:])], dim=-1)  # (N, 4)
    enclosing = _area(enclosing_xyxy)
    return 1 - (iou - (enclosing - union) / enclosing)
