"""Matching predictions to ground truth: SAM 3's one-to-one Hungarian matcher and its one-to-many matcher.

Both take one layer's predictions for B queries (Q object queries each) and the targets of those queries,
and return `MatchIndices`: parallel 1-D tensors (batch_idx, query_idx, target_idx), where target_idx indexes
the targets packed over the batch (`ConceptTargets.packed_boxes_cxcywh()`).

Every cost weight and hyper-parameter is read from `ObjectiveConfig` (sam3_model/settings.py); this module
keeps no defaults of its own, so the matchers cannot drift from the objective's configuration.
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
from .settings import ObjectiveConfig
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


def _config_or_default(config: ObjectiveConfig | None) -> ObjectiveConfig:
    """`config`, or the default `ObjectiveConfig()` (the official values) when None."""
    if config is not None:
        return config

    return ObjectiveConfig()


def focal_class_cost(logits: Tensor, alpha: float, gamma: float) -> Tensor:
    """Focal-style matching cost of calling each query positive: (B, Q) logits -> (B, Q)."""
    prob = logits.sigmoid()
    return (-alpha * (1 - prob) ** gamma * F.logsigmoid(logits)
            + (1 - alpha) * prob ** gamma * F.logsigmoid(-logits))


class HungarianMatcher:
    """One-to-one matching (SAM 3's `BinaryHungarianMatcherV2`), solved per query by scipy.

    cost[b, q, t] = cost_bbox L1(box_bq, box_bt) + cost_class focal(logit_bq) + cost_giou (-GIoU(box_bq, box_bt)),
    with L1 on cxcywh and the focal cost of calling q positive (`focal_class_cost` with `cost_focal_alpha`,
    `cost_focal_gamma`). Every weight is the `ObjectiveConfig` field of that name (None: its defaults).

    Shapes, for B image-phrase queries, Q object queries and T_b instances of query b (T_max = max_b T_b):
      pred.logits            (B, Q)           per-query logits, without presence
      pred.boxes_cxcywh      (B, Q, 4)        cxcywh, normalised
      targets.boxes_cxcywh   B x (T_b, 4)     cxcywh, normalised
      cost_matrix            (B, Q, T_max)    lower is better; columns t >= T_b are padding, never used
      returned MatchIndices  3 x (M,) long    M = sum_b min(Q, T_b); target_idx indexes the sum_b T_b packed targets
    Queries whose phrase has no instance (T_b = 0) are skipped: they are learned through presence only.
    """

    def __init__(self, config: ObjectiveConfig | None = None) -> None:
        """Read the cost weights and the focal alpha/gamma from `config` (None: `ObjectiveConfig()`)."""
        config = _config_or_default(config)
        self.cost_class, self.cost_bbox, self.cost_giou = config.cost_class, config.cost_bbox, config.cost_giou
        self.alpha, self.gamma = config.cost_focal_alpha, config.cost_focal_gamma

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
    """One-to-many matching (DAC-DETR, SAM 3's `BinaryOneToManyMatcher`): query q matches instance t when its score
    C = alpha * sigmoid(logit) + (1 - alpha) * IoU is among the ~top-k of all queries for t and above a threshold.

    alpha, threshold and topk are `ObjectiveConfig.o2m_alpha`, `o2m_threshold` and `o2m_topk` (None: its defaults).
    Shapes, for B image-phrase queries, Q object queries and T_b instances of query b (T_max = max_b T_b):
      pred.logits            (B, Q)           per-query logits, without presence
      pred.boxes_cxcywh      (B, Q, 4)        cxcywh, normalised
      targets.boxes_cxcywh   B x (T_b, 4)     cxcywh, normalised
      score C                (B, Q, T_max)    columns t >= T_b are padding, never matched
      returned MatchIndices  3 x (M,) long    any M; target_idx indexes the sum_b T_b packed targets
    A query may match several instances, as in the official implementation.
    """

    def __init__(self, config: ObjectiveConfig | None = None) -> None:
        """Read alpha, threshold and top-k from `config` (None: `ObjectiveConfig()`)."""
        config = _config_or_default(config)
        self.alpha, self.threshold, self.topk = config.o2m_alpha, config.o2m_threshold, config.o2m_topk

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
