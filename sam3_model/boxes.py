"""Box conversions and element-wise overlaps. Conventions are in the names: cxcywh / xyxy, normalised / px."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou_loss


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy, same units."""
    return box_convert(boxes, "cxcywh", "xyxy")


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh, same units."""
    return box_convert(boxes, "xyxy", "cxcywh")


def paired_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of boxes1[i] with boxes2[i]: (N, 4), (N, 4) -> (N,)."""
    top_left = torch.maximum(boxes1_xyxy[:, :2], boxes2_xyxy[:, :2])
    bottom_right = torch.minimum(boxes1_xyxy[:, 2:], boxes2_xyxy[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area1 = (boxes1_xyxy[:, 2:] - boxes1_xyxy[:, :2]).clamp(min=0).prod(dim=-1)
    area2 = (boxes2_xyxy[:, 2:] - boxes2_xyxy[:, :2]).clamp(min=0).prod(dim=-1)
    return inter / (area1 + area2 - inter + eps)


def paired_giou_loss(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """1 - GIoU of boxes1[i] with boxes2[i]: (N, 4), (N, 4) -> (N,)."""
    return generalized_box_iou_loss(boxes1_xyxy, boxes2_xyxy, reduction="none")
