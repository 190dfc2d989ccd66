"""Matching predictions to ground truth: SAM 3's one-to-one Hungarian matcher and its one-to-many matcher.

Both take one layer's predictions for B queries (Q object queries each) and the targets of those queries,
and return `MatchIndices`: parallel 1-D tensors (batch_idx, query_idx, target_idx), where target_idx indexes
the targets packed over the batch (`ConceptTargets.packed_boxes_cxcywh()`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_iou, generalized_box_iou

from .boxes import cxcywh_to_xyxy
from .detector import LayerPredictions
from .targets import ConceptTargets


@dataclass
class MatchIndices:
    """Matched (query b, object query q) -> packed target t triples, as three (M,) long tensors."""

    batch_idx: Tensor
    query_idx: Tensor
    target_idx: Tensor

    def __len__(self) -> int:
        return int(self.batch_idx.numel())


def _padded_boxes(targets: ConceptTargets, device: torch.device) -> tuple[Tensor, Tensor]:
    """(B, T_max, 4) cxcywh boxes padded with a dummy unit box, and (B,) counts."""
    counts = targets.num_boxes
    t_max = int(counts.max()) if len(counts) else 0
    padded = torch.full((targets.batch_size, t_max, 4), 0.5, device=device)
    for b, boxes in enumerate(targets.boxes_cxcywh):
        padded[b, : len(boxes)] = boxes.to(device=device, dtype=padded.dtype)
    return padded, counts


def _offsets(counts: Tensor) -> Tensor:
    """(B,) index of each query's first target in the packed targets."""
    return torch.cumsum(counts, 0) - counts


def focal_class_cost(logits: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal-style matching cost of calling each query positive: (B, Q) logits -> (B, Q)."""
    prob = logits.sigmoid()
    return (-alpha * (1 - prob) ** gamma * F.logsigmoid(logits)
            + (1 - alpha) * prob ** gamma * F.logsigmoid(-logits))


class HungarianMatcher:
    """One-to-one matching: cost = 5 L1(cxcywh) + 2 focal class cost + 2 (-GIoU), solved per query by scipy.

    Queries whose phrase has no instance are skipped (they are learned through presence only).
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0) -> None:
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def cost_matrix(self, pred: LayerPredictions, targets: ConceptTargets) -> tuple[Tensor, Tensor]:
        """(B, Q, T_max) matching costs (lower is better) and (B,) target counts."""
        tgt, counts = _padded_boxes(targets, pred.logits.device)
        out_boxes = pred.boxes_cxcywh.float()  # (B, Q, 4)
        cost_bbox = torch.cdist(out_boxes, tgt, p=1)  # (B, Q, T_max)
        cost_giou = -torch.stack([generalized_box_iou(cxcywh_to_xyxy(o), cxcywh_to_xyxy(t))
                                  for o, t in zip(out_boxes, tgt)]) if tgt.shape[1] else cost_bbox
        cost_class = focal_class_cost(pred.logits.float(), self.alpha, self.gamma).unsqueeze(-1)  # (B, Q, 1)
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        return cost, counts

    @torch.no_grad()
    def __call__(self, pred: LayerPredictions, targets: ConceptTargets) -> MatchIndices:
        """Match each query's instances to distinct object queries (at most min(Q, T_b) pairs)."""
        device = pred.logits.device
        cost, counts = self.cost_matrix(pred, targets)
        cost_np = cost.cpu().numpy()
        offsets = _offsets(counts).tolist()
        batch, query, target = [], [], []
        for b, count in enumerate(counts.tolist()):
            if count == 0:
                continue
            rows, cols = linear_sum_assignment(cost_np[b, :, :count])
            batch.append(np.full(len(rows), b))
            query.append(rows)
            target.append(cols + offsets[b])
        if not batch:
            empty = torch.empty(0, dtype=torch.long, device=device)
            return MatchIndices(empty, empty.clone(), empty.clone())
        as_tensor = lambda parts: torch.from_numpy(np.concatenate(parts)).long().to(device)  # noqa: E731
        return MatchIndices(as_tensor(batch), as_tensor(query), as_tensor(target))


class OneToManyMatcher:
    """One-to-many matching (DAC-DETR): query q matches instance t when its score
    C = alpha * sigmoid(logit) + (1 - alpha) * IoU is among the ~top-k of all queries for t and above a threshold.

    A query may match several instances, as in the official implementation.
    """

    def __init__(self, alpha: float = 0.3, threshold: float = 0.4, topk: int = 4) -> None:
        self.alpha, self.threshold, self.topk = alpha, threshold, topk

    @torch.no_grad()
    def __call__(self, pred: LayerPredictions, targets: ConceptTargets) -> MatchIndices:
        """All (b, q, t) with C above the (1 - topk/Q) quantile over queries and above the threshold."""
        device = pred.logits.device
        tgt, counts = _padded_boxes(targets, device)
        num_queries = pred.logits.shape[1]
        if tgt.shape[1] == 0:
            empty = torch.empty(0, dtype=torch.long, device=device)
            return MatchIndices(empty, empty.clone(), empty.clone())
        iou = torch.stack([box_iou(cxcywh_to_xyxy(o), cxcywh_to_xyxy(t))
                           for o, t in zip(pred.boxes_cxcywh.float(), tgt)])  # (B, Q, T_max)
        score = self.alpha * pred.logits.float().sigmoid().unsqueeze(-1) + (1 - self.alpha) * iou
        quantile = max(0.0, 1 - self.topk / num_queries)  # Q <= topk: every query but the worst is a candidate
        top = score > torch.quantile(score, quantile, dim=1, keepdim=True)
        valid = torch.arange(tgt.shape[1], device=device)[None] < counts.to(device)[:, None]  # (B, T_max)
        matches = top & (score > self.threshold) & valid[:, None, :]
        batch_idx, query_idx, target_idx = torch.nonzero(matches, as_tuple=True)
        target_idx = target_idx + _offsets(counts).to(device)[batch_idx]
        return MatchIndices(batch_idx, query_idx, target_idx)
