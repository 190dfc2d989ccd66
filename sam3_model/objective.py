"""SAM 3's fine-tuning objective (official `Sam3LossWrapper` semantics) over transformers' `Sam3Model`.

For B image-phrase queries, L decoder layers and Q object queries:

    num_boxes = max(1, all-reduced instance count / world size)
    (on N data-parallel ranks, B is the step's query count over all ranks, and per-query means divide by B / N)
    per layer l:  o2o_l = 5 L1 + 2 GIoU + 20 IABCE + 20 presence       (Hungarian matches)
                  o2m_l = 2.0 (5 L1 + 2 GIoU + 20 IABCE)              (one-to-many matches; final layer only,
                                                                        Hungarian on earlier layers)
    final layer:  + 200 mask focal + 10 dice, for o2o and (x2.0) o2m
    loss = sqrt(B) * sum over layers

Phrases with no instance contribute only through presence (their per-query terms are zeroed). Every weight
lives in `ObjectiveConfig`; the defaults are the official values. See docs/parity.md for what differs.

Structure (as DETR's `SetCriterion`): one `loss_*` method per term returns named unweighted terms
(`loss_labels`: IABCE, `loss_presence`: presence, `loss_boxes`: L1 + GIoU, `loss_masks`: focal + dice);
`weight_dict` weighs them; one loop in `__call__` runs over decoder layers and branches (o2o, o2m). The
matchers (sam3_model/matcher.py) are built from the same `ObjectiveConfig`, their only source of costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from .boxes import paired_box_iou, paired_giou_loss
from .detector import DetectorOutputs, LayerPredictions
from .mask_loss import upsampled_focal_dice
from .matcher import HungarianMatcher, MatchIndices, OneToManyMatcher
from .point_sampling import point_sample, uncertain_points
from .settings import ObjectiveConfig
from .targets import ConceptTargets

Matcher = Callable[[LayerPredictions, ConceptTargets], MatchIndices]  # `HungarianMatcher` or `OneToManyMatcher`


def global_num_boxes(targets: ConceptTargets, device: torch.device) -> Tensor:
    """Instances in the batch, averaged over data-parallel ranks, at least 1 (one scalar for every term)."""
    count = targets.num_boxes.sum().to(device=device, dtype=torch.float)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1.0)


def global_num_queries(num_queries: int, device: torch.device) -> tuple[float, int]:
    """(image-phrase queries of the whole step, summed over data-parallel ranks; the number of ranks).

    With per-query terms divided by queries / ranks and the loss scaled by sqrt(queries), the ranks' mean loss is
    the loss one process computes on the whole step's batch, so N ranks train what one process trains.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(num_queries), 1
    count = torch.tensor(float(num_queries), device=device)
    dist.all_reduce(count)
    return float(count), dist.get_world_size()


class Sam3Criterion:
    """Matches every decoder layer's predictions to the targets and sums the weighted SAM 3 loss terms."""

    def __init__(self, config: ObjectiveConfig | None = None) -> None:
        """Build the one-to-one and one-to-many matchers from `config` (None: the official defaults)."""
        self.config = config or ObjectiveConfig()
        self.matcher = HungarianMatcher(self.config)
        self.o2m_matcher = OneToManyMatcher(self.config)

    @property
    def weight_dict(self) -> dict[str, float]:
        """Weight of every term a `loss_*` method returns, from `ObjectiveConfig`."""
        c = self.config
        return {"loss_bbox": c.loss_bbox, "loss_giou": c.loss_giou, "loss_ce": c.loss_ce,
                "loss_presence": c.loss_presence, "loss_mask": c.loss_mask, "loss_dice": c.loss_dice}

    # ----- loss terms: one method each, unweighted, normalised as in the official implementation --------------
    # Every `loss_*` takes (pred, targets, match, num_boxes, total_queries): per-instance terms divide by
    # `num_boxes` (scalar), per-query terms by `total_queries` (default: this batch's B), as `get_loss` calls them.
    def loss_labels(self, pred: LayerPredictions, targets: ConceptTargets, match: MatchIndices,
                    num_boxes: Tensor | None = None, total_queries: float | None = None) -> dict[str, Tensor]:
        """IoU-aware BCE on per-query logits (positive phrases only): {"loss_ce"}, a mean over B x Q.

        `num_boxes` is unused (the term is a mean over queries); `total_queries` (default: this batch's B) is the
        count to divide by when `targets` is one chunk of a larger batch.
        """
        c = self.config
        logits = pred.logits.float()  # (B, Q)
        prob = logits.sigmoid()  # (B, Q)
        matched = torch.zeros_like(logits)  # (B, Q) 1 at matched queries
        matched[match.batch_idx, match.query_idx] = 1.0
        with torch.no_grad():
            iou = paired_box_iou(pred.boxes_xyxy[match.batch_idx, match.query_idx].float(),
                                 targets.packed_boxes_xyxy().to(logits)[match.target_idx])  # (M,)
            soft = prob[match.batch_idx, match.query_idx] ** c.iou_target_alpha * iou ** (1 - c.iou_target_alpha)
            soft_targets = matched.clone()  # (B, Q) soft IoU-aware targets at matched queries, 0 elsewhere
            soft_targets[match.batch_idx, match.query_idx] = soft.clamp(min=0.01)
        positive = F.binary_cross_entropy_with_logits(logits, soft_targets, reduction="none") * matched * c.pos_weight
        negative = F.binary_cross_entropy_with_logits(logits, matched, reduction="none") * (1 - matched) \
            * prob ** c.negative_gamma
        has_instances = targets.has_instances.to(logits).unsqueeze(1)  # (B, 1): negatives learn via presence only
        per_query = (positive + negative) * has_instances  # (B, Q)
        queries = total_queries or per_query.shape[0]
        denominator = queries * max(per_query.shape[1], c.pad_queries or 0)
        return {"loss_ce": per_query.sum() / denominator}

    def loss_presence(self, pred: LayerPredictions, targets: ConceptTargets, match: MatchIndices,
                      num_boxes: Tensor | None = None, total_queries: float | None = None) -> dict[str, Tensor]:
        """Presence focal BCE (every phrase, target: has an instance): {"loss_presence"}, a mean over B.

        Only for predictions with presence logits (o2o). `match` and `num_boxes` are unused; `total_queries`
        (default: this batch's B) is the count to divide by when `targets` is one chunk of a larger batch.
        """
        if pred.presence_logits is None:
            raise ValueError("loss_presence needs presence logits; one-to-many predictions have none")
        c = self.config
        presence_logits = pred.presence_logits.float()  # (B, 1)
        has_instances = targets.has_instances.to(presence_logits).unsqueeze(1)  # (B, 1) {0, 1}
        presence = sigmoid_focal_loss(presence_logits, has_instances, alpha=c.presence_alpha,
                                      gamma=c.presence_gamma, reduction="none")  # (B, 1)
        queries = total_queries or presence.shape[0]
        return {"loss_presence": presence.sum() / queries}  # (B, 1) -> mean over the batch

    def loss_boxes(self, pred: LayerPredictions, targets: ConceptTargets, match: MatchIndices,
                   num_boxes: Tensor, total_queries: float | None = None) -> dict[str, Tensor]:
        """L1 on cxcywh (summed over coordinates) and 1 - GIoU: {"loss_bbox", "loss_giou"}, sums / num_boxes."""
        src = pred.boxes_cxcywh[match.batch_idx, match.query_idx].float()  # (M, 4) cxcywh, normalised
        tgt = targets.packed_boxes_cxcywh().to(src)[match.target_idx]  # (M, 4) cxcywh, normalised
        src_xyxy = pred.boxes_xyxy[match.batch_idx, match.query_idx].float()  # (M, 4) xyxy, normalised
        tgt_xyxy = targets.packed_boxes_xyxy().to(src)[match.target_idx]  # (M, 4) xyxy, normalised
        return {
            "loss_bbox": F.l1_loss(src, tgt, reduction="sum") / num_boxes,
            "loss_giou": paired_giou_loss(src_xyxy, tgt_xyxy).sum() / num_boxes,
        }

    def loss_masks(self, pred: LayerPredictions, targets: ConceptTargets, match: MatchIndices,
                   num_boxes: Tensor, total_queries: float | None = None) -> dict[str, Tensor]:
        """Sigmoid focal (mean over pixels) and dice of matched masks: {"loss_mask", "loss_dice"}, sums / num_boxes."""
        c = self.config
        src = pred.masks[match.batch_idx, match.query_idx].float()  # (M, h, w) logits
        tgt = targets.packed_masks()[match.target_idx]  # (M, H, W) binary, bool or float
        if c.mask_points is not None and len(match):
            points = uncertain_points(src, c.mask_points, c.mask_oversample_ratio, c.mask_importance_ratio)
            src_flat, tgt_flat = point_sample(src, points), point_sample(tgt.to(src), points)  # (M, K), soft
            focal = sigmoid_focal_loss(src_flat, tgt_flat, alpha=c.mask_focal_alpha, gamma=c.mask_focal_gamma,
                                       reduction="none").mean(1)  # (M,)
            prob = src_flat.sigmoid()  # (M, K)
            dice = 1 - (2 * (prob * tgt_flat).sum(1) + 1) / (prob.sum(1) + tgt_flat.sum(1) + 1)  # (M,)
        else:  # every pixel of the target canvas: upsampled and reduced a few masks at a time (same values)
            focal, dice = upsampled_focal_dice(src, tgt, c.mask_focal_alpha, c.mask_focal_gamma)  # (M,), (M,)
        return {"loss_mask": focal.sum() / num_boxes, "loss_dice": dice.sum() / num_boxes}

    # ----- assembly -----------------------------------------------------------------------------------------
    def get_loss(self, loss: str, pred: LayerPredictions, targets: ConceptTargets, match: MatchIndices,
                 num_boxes: Tensor, total_queries: float | None = None) -> dict[str, Tensor]:
        """Unweighted terms of `loss_<loss>` ("labels", "presence", "boxes" or "masks") for one layer of one branch."""
        loss_map = {"labels": self.loss_labels, "presence": self.loss_presence, "boxes": self.loss_boxes,
                    "masks": self.loss_masks}
        return loss_map[loss](pred, targets, match, num_boxes=num_boxes, total_queries=total_queries)

    def losses_for(self, pred: LayerPredictions, targets: ConceptTargets) -> list[str]:
        """The `loss_*` names that apply to one layer of one branch, in the order their terms are summed."""
        losses = ["boxes", "labels"]
        if pred.presence_logits is not None:  # o2o only: the one-to-many queries have no presence token
            losses.append("presence")
        if self.config.masks and pred.masks is not None and targets.masks is not None:  # final layer only
            losses.append("masks")
        return losses

    def branches(self, outputs: DetectorOutputs) -> Iterator[tuple[str, int, LayerPredictions, Matcher, float]]:
        """(branch, layer, predictions, matcher, weight) of every supervised decoder layer and branch, in order."""
        c = self.config
        num_layers = len(outputs.o2o)
        for layer in range(num_layers):
            final = layer == num_layers - 1
            if not final and not c.aux_layers:
                continue
            yield "o2o", layer, outputs.o2o[layer], self.matcher, 1.0
            if c.one_to_many and outputs.o2m:
                # official: the one-to-many matcher on the final layer, Hungarian on the auxiliary layers
                yield "o2m", layer, outputs.o2m[layer], self.o2m_matcher if final else self.matcher, c.o2m_weight

    def __call__(self, outputs: DetectorOutputs, targets: ConceptTargets, *, num_boxes: Tensor | None = None,
                 total_queries: float | None = None,
                 scale_queries: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss (scalar) and every weighted term for logging, keyed like `o2o/loss_ce/layer5`.

        For a batch split into phrase chunks, call once per chunk with the whole batch's `num_boxes`
        (`global_num_boxes` of the batch) and `total_queries` (its query count): the chunk losses then sum to
        the loss of the whole batch. `scale_queries` (default `total_queries`) is the count whose square root
        scales the loss: on N data-parallel ranks, the step's query count over all ranks, with `total_queries`
        that count / N (`global_num_queries`).
        """
        device = outputs.final.logits.device
        targets = targets.to(device)
        num_boxes = global_num_boxes(targets, device) if num_boxes is None else num_boxes.to(device)  # scalar
        total_queries = total_queries or targets.batch_size
        weight_dict = self.weight_dict
        logged: dict[str, Tensor] = {}
        total = torch.zeros((), device=device)
        for branch, layer, pred, matcher, scale in self.branches(outputs):
            match = matcher(pred, targets)
            for loss in self.losses_for(pred, targets):
                for term, value in self.get_loss(loss, pred, targets, match, num_boxes, total_queries).items():
                    weighted = scale * weight_dict[term] * value
                    logged[f"{branch}/{term}/layer{layer}"] = weighted.detach()
                    total = total + weighted
        if self.config.scale_by_sqrt_batch:
            total = total * math.sqrt(scale_queries or total_queries)
        logged["num_boxes"] = num_boxes.detach()
        return total, logged
