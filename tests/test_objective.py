"""SAM 3's training objective, checked against values computed by hand.

Every expected value here is written out from the formulas of the official SAM 3 loss (`Sam3LossWrapper`,
`IABCEMdetr`, `Boxes`, `Masks`, `BinaryHungarianMatcherV2`, `BinaryOneToManyMatcher`; see
shared/reference/sam3-training-objective.md sections 0, 1 and 2) in plain float64 math, never by calling the
helpers of the code under test.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sam3_model.detector import DetectorOutputs, LayerPredictions
from sam3_model.errors import TargetError
from sam3_model.matcher import HungarianMatcher, MatchIndices, OneToManyMatcher
from sam3_model.objective import ObjectiveConfig, Sam3Criterion, global_num_boxes
from sam3_model.point_sampling import point_sample, uncertain_points
from sam3_model.targets import ConceptTargets

WEIGHTS = {"loss_bbox": 5.0, "loss_giou": 2.0, "loss_ce": 20.0, "loss_presence": 20.0,
           "loss_mask": 200.0, "loss_dice": 10.0}


# ----- hand formulas (float64, no code under test) --------------------------------------------------------
def sig(x: float | torch.Tensor):
    return 1.0 / (1.0 + math.exp(-x)) if isinstance(x, float) else 1.0 / (1.0 + torch.exp(-x))


def bce(x, t):
    """BCE-with-logits: max(x, 0) - x t + log(1 + exp(-|x|)), on floats or tensors."""
    if isinstance(x, float):
        return max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))
    return x.clamp(min=0) - x * t + torch.log1p(torch.exp(-x.abs()))


def focal(x: torch.Tensor, y: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """alpha_t * BCE(x, y) * (1 - p_t)^gamma with alpha_t = a y + (1-a)(1-y), p_t = p y + (1-p)(1-y)."""
    p = sig(x)
    p_t = p * y + (1 - p) * (1 - y)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    return alpha_t * bce(x, y) * (1 - p_t) ** gamma


def xyxy(box) -> tuple[float, float, float, float]:
    cx, cy, w, h = (float(v) for v in box)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def iou_giou(a, b) -> tuple[float, float]:
    """IoU and GIoU of two cxcywh boxes."""
    ax0, ay0, ax1, ay1 = xyxy(a)
    bx0, by0, bx1, by1 = xyxy(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    enclosing = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    iou = inter / union
    return iou, iou - (enclosing - union) / enclosing


def focal_cost(x: float) -> float:
    """Matcher class cost: -0.25 (1-p)^2 log sigmoid(x) + 0.75 p^2 log sigmoid(-x)."""
    p = sig(x)
    return -0.25 * (1 - p) ** 2 * math.log(p) + 0.75 * p ** 2 * math.log(1 - p)


def hungarian_cost(pred_box, logit: float, tgt_box) -> float:
    """5 * L1(cxcywh) + 2 * focal class cost + 2 * (-GIoU)."""
    l1 = sum(abs(float(p) - float(t)) for p, t in zip(pred_box, tgt_box))
    return 5 * l1 + 2 * focal_cost(float(logit)) - 2 * iou_giou(pred_box, tgt_box)[1]


def bilinear_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """(out, in) weights of 1-D linear resampling with align_corners=False (half-pixel centres, edge clamp)."""
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        src = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = min(int(math.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        lam = src - i0
        weights[i, i0] += 1 - lam
        weights[i, i1] += lam
    return weights


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) -> (H, W) bilinear, align_corners=False, as a product of two interpolation matrices."""
    rows = bilinear_matrix(size[0], logits.shape[0])
    cols = bilinear_matrix(size[1], logits.shape[1])
    return rows @ logits.double() @ cols.T


def packed(targets_boxes: list[torch.Tensor]) -> list[torch.Tensor]:
    return [box for boxes in targets_boxes for box in boxes]


def pairs(match: MatchIndices) -> list[tuple[int, int, int]]:
    return sorted(zip(match.batch_idx.tolist(), match.query_idx.tolist(), match.target_idx.tolist()))


def ref_terms(pred: LayerPredictions, boxes: list[torch.Tensor], masks: list[torch.Tensor] | None,
              match: list[tuple[int, int, int]], num_boxes: float, pos_weight: float = 10.0,
              pad_queries: int | None = None) -> dict[str, float]:
    """Every unweighted loss term of one layer and branch, from the official formulas, entry by entry."""
    logits = pred.logits.detach().double()
    pred_boxes = pred.boxes_cxcywh.detach().double()
    num_b, num_q = logits.shape
    tgt = packed(boxes)
    counts = [len(b) for b in boxes]
    # Boxes: L1 summed over 4 coordinates, 1 - GIoU; both summed over matches / num_boxes
    l1 = sum(float((pred_boxes[b, q] - tgt[t].double()).abs().sum()) for b, q, t in match)
    giou = sum(1 - iou_giou(pred_boxes[b, q], tgt[t])[1] for b, q, t in match)
    terms = {"loss_bbox": l1 / num_boxes, "loss_giou": giou / num_boxes}
    # IABCE: soft positive target clamp(p^0.25 IoU^0.75, 0.01), x pos_weight; negatives BCE(x, 0) p^2;
    # rows of phrases without instances zeroed but kept in the B x Q denominator
    soft = {(b, q): max(sig(float(logits[b, q])) ** 0.25 * iou_giou(pred_boxes[b, q], tgt[t])[0] ** 0.75, 0.01)
            for b, q, t in match}
    total = 0.0
    for b in range(num_b):
        if counts[b] == 0:
            continue
        for q in range(num_q):
            x = float(logits[b, q])
            if (b, q) in soft:
                total += pos_weight * bce(x, soft[(b, q)])
            else:
                total += bce(x, 0.0) * sig(x) ** 2
    terms["loss_ce"] = total / (num_b * max(num_q, pad_queries or 0))
    if pred.presence_logits is not None:
        presence = [bce(float(pred.presence_logits[b, 0]), float(counts[b] > 0)) for b in range(num_b)]
        terms["loss_presence"] = 0.5 * sum(presence) / num_b
    if masks is not None and pred.masks is not None:
        tgt_masks = [m for per_query in masks for m in per_query]
        focal_sum = dice_sum = 0.0
        for b, q, t in match:
            y = tgt_masks[t].double()
            x = upsample(pred.masks[b, q].detach(), tuple(y.shape))
            focal_sum += float(focal(x, y, 0.25, 2.0).mean())
            p = sig(x)
            dice_sum += 1 - (2 * float((p * y).sum()) + 1) / (float(p.sum()) + float(y.sum()) + 1)
        terms["loss_mask"] = focal_sum / num_boxes
        terms["loss_dice"] = dice_sum / num_boxes
    return terms


def box_mask(box, size: int) -> torch.Tensor:
    """A binary (size, size) mask filling the pixels whose centres lie in a cxcywh box."""
    x0, y0, x1, y1 = xyxy(box)
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    inside_x = (centres >= x0) & (centres <= x1)
    inside_y = (centres >= y0) & (centres <= y1)
    return (inside_y[:, None] & inside_x[None, :]).float()


def close(actual, expected, tol: float = 1e-5) -> bool:
    actual = actual.detach() if isinstance(actual, torch.Tensor) else actual
    return abs(float(actual) - float(expected)) <= tol * max(1.0, abs(float(expected)))


# ----- 1. one-to-one Hungarian matcher ------------------------------------------------------------------
def test_hungarian_cost_matrix_and_assignment_by_hand():
    targets_boxes = torch.tensor([[0.30, 0.30, 0.20, 0.20], [0.70, 0.70, 0.20, 0.20]])
    pred_boxes = torch.tensor([[0.68, 0.71, 0.20, 0.22],  # near target 1
                               [0.50, 0.50, 0.60, 0.60],  # large, overlaps both
                               [0.31, 0.29, 0.21, 0.19]])  # near target 0
    logits = torch.tensor([0.5, -1.0, 1.5])
    pred = LayerPredictions(logits[None], pred_boxes[None], torch.zeros(1, 1))
    targets = ConceptTargets([targets_boxes])
    matcher = HungarianMatcher()

    cost, counts = matcher.cost_matrix(pred, targets)
    assert cost.shape == (1, 3, 2) and counts.tolist() == [2]
    expected = [[hungarian_cost(pred_boxes[q], float(logits[q]), targets_boxes[t]) for t in range(2)]
                for q in range(3)]
    for q, t in itertools.product(range(3), range(2)):
        assert abs(float(cost[0, q, t]) - expected[q][t]) < 1e-5, (q, t, float(cost[0, q, t]), expected[q][t])

    # the optimum by enumeration is unique with a clear margin
    totals = sorted((expected[q0][0] + expected[q1][1], (q0, q1))
                    for q0, q1 in itertools.permutations(range(3), 2))
    assert totals[1][0] - totals[0][0] > 0.5
    best_q0, best_q1 = totals[0][1]
    assert (best_q0, best_q1) == (2, 0)
    match = matcher(pred, targets)
    assert pairs(match) == [(0, 0, 1), (0, 2, 0)]  # query 0 <-> target 1, query 2 <-> target 0


def test_hungarian_fewer_queries_than_targets():
    targets_boxes = torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]])
    pred_boxes = torch.tensor([[0.79, 0.81, 0.2, 0.2], [0.21, 0.2, 0.19, 0.2]])
    logits = torch.tensor([0.3, -0.2])
    pred = LayerPredictions(logits[None], pred_boxes[None])
    match = HungarianMatcher()(pred, ConceptTargets([targets_boxes]))
    assert len(match) == 2  # min(Q, T)
    expected = [[hungarian_cost(pred_boxes[q], float(logits[q]), targets_boxes[t]) for t in range(3)]
                for q in range(2)]
    best = min(itertools.permutations(range(3), 2), key=lambda ts: expected[0][ts[0]] + expected[1][ts[1]])
    assert pairs(match) == [(0, 0, best[0]), (0, 1, best[1])]
    assert best == (2, 0)


def test_hungarian_skips_negative_queries_and_offsets_targets():
    generator = torch.Generator().manual_seed(0)
    t0 = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])
    t2 = torch.tensor([[0.2, 0.7, 0.2, 0.3], [0.5, 0.5, 0.3, 0.3], [0.8, 0.2, 0.2, 0.2]])
    boxes = torch.rand(3, 4, 4, generator=generator) * 0.1 + torch.tensor([0.45, 0.45, 0.05, 0.05])
    # query 0: q3 = target 0, q1 = target 1; query 2: q3 = target 0, q0 = target 1, q1 = target 2
    boxes[0, 3], boxes[0, 1] = t0[0], t0[1]
    boxes[2, 3], boxes[2, 0], boxes[2, 1] = t2[0], t2[1], t2[2]
    boxes[2, 2] = torch.tensor([0.05, 0.95, 0.05, 0.05])
    pred = LayerPredictions(torch.zeros(3, 4), boxes, torch.zeros(3, 1))
    targets = ConceptTargets([t0, torch.zeros(0, 4), t2])
    match = HungarianMatcher()(pred, targets)
    # packed targets: query 0 -> 0, 1; query 1 -> none; query 2 -> 2, 3, 4
    assert pairs(match) == [(0, 1, 1), (0, 3, 0), (2, 0, 3), (2, 1, 4), (2, 3, 2)]
    assert match.batch_idx.dtype == match.query_idx.dtype == match.target_idx.dtype == torch.long

    empty = HungarianMatcher()(pred, ConceptTargets([torch.zeros(0, 4)] * 3))
    assert len(empty) == 0 and empty.target_idx.numel() == 0


# ----- 2. one-to-many matcher ----------------------------------------------------------------------------
def _o2m_expected(logits: torch.Tensor, boxes: torch.Tensor, targets: list[torch.Tensor],
                  alpha: float = 0.3, threshold: float = 0.4, topk: int = 4) -> list[tuple[int, int, int]]:
    """C = a sigmoid(x) + (1 - a) IoU; match where C > linear-interpolated (1 - topk/Q) quantile over queries
    and C > threshold; target indices offset into the packed targets."""
    num_q = logits.shape[1]
    level = (1 - topk / num_q) * (num_q - 1)  # position in the ascending order statistics
    low = int(math.floor(level))
    expected, offset = [], 0
    for b, tgt in enumerate(targets):
        for t, box in enumerate(tgt):
            scores = [alpha * sig(float(logits[b, q])) + (1 - alpha) * iou_giou(boxes[b, q], box)[0]
                      for q in range(num_q)]
            ordered = sorted(scores)
            quantile = ordered[low] + (level - low) * (ordered[min(low + 1, num_q - 1)] - ordered[low])
            expected += [(b, q, offset + t) for q in range(num_q) if scores[q] > quantile and scores[q] > threshold]
        offset += len(tgt)
    return sorted(expected)


def test_one_to_many_matches_by_hand():
    generator = torch.Generator().manual_seed(1)
    num_q = 10
    t_a = torch.tensor([[0.50, 0.50, 0.40, 0.40], [0.53, 0.50, 0.40, 0.40]])  # two overlapping instances
    t_b = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.3], [0.3, 0.75, 0.3, 0.2]])
    boxes = torch.cat([torch.rand(2, num_q, 2, generator=generator) * 0.6 + 0.2,
                       torch.rand(2, num_q, 2, generator=generator) * 0.2 + 0.05], dim=-1)
    logits = torch.randn(2, num_q, generator=generator)
    # query 0 covers both overlapping instances, with a confident logit
    boxes[0, 0], logits[0, 0] = torch.tensor([0.515, 0.5, 0.4, 0.4]), 3.0
    boxes[0, 1], boxes[0, 2], boxes[0, 3] = t_a[0] + 0.01, t_a[1] - 0.02, t_a[0] * 0.97
    # query 5 sits exactly on the matcher's padding box (cxcywh 0.5 0.5 0.5 0.5) of query 0's third column
    boxes[0, 5], logits[0, 5] = torch.tensor([0.5, 0.5, 0.5, 0.5]), 4.0
    for q, t in ((1, 0), (2, 0), (4, 1), (6, 1), (7, 2)):
        boxes[1, q] = t_b[t] + 0.01 * q
    logits[1, :8] += 2.0
    pred = LayerPredictions(logits, boxes)
    targets = ConceptTargets([t_a, t_b])
    match = OneToManyMatcher()(pred, targets)
    expected = _o2m_expected(logits, boxes, [t_a, t_b])
    assert pairs(match) == expected
    assert (0, 0, 0) in expected and (0, 0, 1) in expected  # one query, two instances
    assert all(t < 5 for _, _, t in expected)
    assert len(expected) > 5  # several queries per instance
    # the padded column of query 0 is never matched, even by a query equal to the padding box
    assert not any(b == 0 and t >= 2 for b, _, t in pairs(match))

    # negative phrases: no matches for them; no instances at all: empty
    match = OneToManyMatcher()(pred, ConceptTargets([torch.zeros(0, 4), t_b]))
    assert pairs(match) == _o2m_expected(logits, boxes, [torch.zeros(0, 4), t_b])
    assert all(b == 1 for b, _, _ in pairs(match)) and len(match) > 0
    empty = OneToManyMatcher()(pred, ConceptTargets([torch.zeros(0, 4), torch.zeros(0, 4)]))
    assert len(empty) == 0


# ----- 3. each loss term by hand -------------------------------------------------------------------------
def _two_query_case(mask_size: int = 8):
    """Query 0: a phrase with 2 instances; query 1: a phrase with none. Q = 3."""
    generator = torch.Generator().manual_seed(3)
    t0 = torch.tensor([[0.30, 0.35, 0.20, 0.30], [0.70, 0.60, 0.25, 0.20]])
    boxes = torch.tensor([[[0.68, 0.62, 0.22, 0.20], [0.50, 0.50, 0.30, 0.30], [0.32, 0.33, 0.18, 0.28]],
                          [[0.40, 0.40, 0.20, 0.20], [0.60, 0.30, 0.10, 0.40], [0.50, 0.50, 0.50, 0.50]]])
    logits = torch.tensor([[0.8, -0.4, 1.3], [2.0, -1.0, 0.1]])
    presence = torch.tensor([[0.7], [-0.3]])
    masks = torch.randn(2, 3, 4, 4, generator=generator) * 2
    pred = LayerPredictions(logits.clone().requires_grad_(), boxes.clone().requires_grad_(),
                            presence.clone().requires_grad_(), masks.clone().requires_grad_())
    tgt_masks = [torch.stack([box_mask(b, mask_size) for b in t0]), torch.zeros(0, mask_size, mask_size)]
    targets = ConceptTargets([t0, torch.zeros(0, 4)], tgt_masks)
    match = MatchIndices(torch.tensor([0, 0]), torch.tensor([2, 0]), torch.tensor([0, 1]))
    return pred, targets, match


def test_box_terms_by_hand():
    pred, targets, match = _two_query_case()
    num_boxes = torch.tensor(2.0)
    got = Sam3Criterion().loss_boxes(pred, targets, match, num_boxes)
    b = pred.boxes_cxcywh.detach()
    t = targets.boxes_cxcywh[0]
    l1 = float((b[0, 2] - t[0]).abs().sum() + (b[0, 0] - t[1]).abs().sum())
    giou = (1 - iou_giou(b[0, 2], t[0])[1]) + (1 - iou_giou(b[0, 0], t[1])[1])
    assert close(got["loss_bbox"], l1 / 2)
    assert close(got["loss_giou"], giou / 2)


def test_classification_and_presence_by_hand():
    pred, targets, match = _two_query_case()
    x = pred.logits.detach().double()
    b = pred.boxes_cxcywh.detach()
    t = targets.boxes_cxcywh[0]
    p = sig(x)
    soft = {2: max(float(p[0, 2]) ** 0.25 * iou_giou(b[0, 2], t[0])[0] ** 0.75, 0.01),
            0: max(float(p[0, 0]) ** 0.25 * iou_giou(b[0, 0], t[1])[0] ** 0.75, 0.01)}
    positive = 10 * (bce(float(x[0, 2]), soft[2]) + bce(float(x[0, 0]), soft[0]))
    negative = bce(float(x[0, 1]), 0.0) * float(p[0, 1]) ** 2  # query 1's row is zeroed
    presence = 0.5 * (bce(0.7, 1.0) + bce(-0.3, 0.0)) / 2

    criterion = Sam3Criterion()
    got = {**criterion.loss_labels(pred, targets, match), **criterion.loss_presence(pred, targets, match)}
    assert close(got["loss_ce"], (positive + negative) / (2 * 3))  # intentional: averaged over the actual Q
    assert close(got["loss_presence"], presence)
    padded = Sam3Criterion(ObjectiveConfig(pad_queries=200)).loss_labels(pred, targets, match)
    assert close(padded["loss_ce"], (positive + negative) / (2 * 200))  # official: B x 200

    # gradients: the soft target is detached, p in the negative weight is not
    got["loss_ce"].backward()
    grad = pred.logits.grad.double()
    denominator = 2 * 3
    for q in (0, 2):  # d/dx 10 BCE(x, t) with t constant
        assert close(grad[0, q], 10 * (float(p[0, q]) - soft[q]) / denominator)
    s = float(p[0, 1])
    softplus = math.log1p(math.exp(float(x[0, 1])))  # d/dx [softplus(x) sigmoid(x)^2]
    assert close(grad[0, 1], (s * s ** 2 + softplus * 2 * s ** 2 * (1 - s)) / denominator)
    assert torch.count_nonzero(grad[1]) == 0  # negative phrase: no per-query gradient


def test_soft_target_is_clamped_to_001():
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]]])
    logits = torch.tensor([[0.4, -2.0]])
    targets = ConceptTargets([torch.tensor([[0.8, 0.2, 0.1, 0.1]])])  # disjoint from query 0: IoU 0
    match = MatchIndices(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    got = Sam3Criterion().loss_labels(LayerPredictions(logits, boxes), targets, match)
    expected = (10 * bce(0.4, 0.01) + bce(-2.0, 0.0) * sig(-2.0) ** 2) / 2
    assert close(got["loss_ce"], expected)
    assert "loss_presence" not in got  # no presence logits (o2m)


def test_mask_terms_by_hand():
    pred, targets, match = _two_query_case(mask_size=8)
    got = Sam3Criterion().loss_masks(pred, targets, match, torch.tensor(2.0))
    focal_sum = dice_sum = 0.0
    for q, t in ((2, 0), (0, 1)):
        y = targets.masks[0][t].double()
        x = upsample(pred.masks[0, q].detach(), (8, 8))  # 4x4 logits -> 8x8 target canvas
        focal_sum += float(focal(x, y, 0.25, 2.0).mean())
        prob = sig(x)
        dice_sum += 1 - (2 * float((prob * y).sum()) + 1) / (float(prob.sum()) + float(y.sum()) + 1)
    assert close(got["loss_mask"], focal_sum / 2)
    assert close(got["loss_dice"], dice_sum / 2)


def test_bilinear_reference_agrees_with_torch():
    """Sanity check of the test's own upsampling matrix (align_corners=False) on a non-integer scale."""
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = upsample(logits, (13, 7))
    theirs = torch.nn.functional.interpolate(logits[None, None], size=(13, 7), mode="bilinear",
                                             align_corners=False)[0, 0]
    assert torch.allclose(ours, theirs, atol=1e-12)


# ----- 4. the full criterion ----------------------------------------------------------------------------
TARGETS_FULL = [torch.tensor([[0.30, 0.30, 0.20, 0.20], [0.70, 0.65, 0.30, 0.20]]),
                torch.zeros(0, 4),
                torch.tensor([[0.50, 0.50, 0.40, 0.30], [0.20, 0.75, 0.15, 0.25], [0.80, 0.25, 0.20, 0.20]])]
MASK_SIZE = 16
Q_FULL = 8


def _layer(generator, final: bool, presence: bool, near: dict[tuple[int, int], torch.Tensor]) -> LayerPredictions:
    num_b = len(TARGETS_FULL)
    boxes = torch.cat([torch.rand(num_b, Q_FULL, 2, generator=generator) * 0.6 + 0.2,
                       torch.rand(num_b, Q_FULL, 2, generator=generator) * 0.3 + 0.1], dim=-1)
    logits = torch.randn(num_b, Q_FULL, generator=generator)
    for (b, q), box in near.items():
        boxes[b, q] = box + (torch.rand(4, generator=generator) - 0.5) * 0.04
        logits[b, q] += 1.5
    return LayerPredictions(
        logits=logits,
        boxes_cxcywh=boxes,
        presence_logits=torch.randn(num_b, 1, generator=generator) if presence else None,
        masks=torch.randn(num_b, Q_FULL, 8, 8, generator=generator) * 2 if final else None,
    )


def _full_case(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    t0, _, t2 = TARGETS_FULL
    near_o2o = {(0, 1): t0[0], (0, 4): t0[1], (2, 0): t2[0], (2, 6): t2[1], (2, 3): t2[2]}
    # several o2m queries per instance, so the one-to-many matcher gives more matches than instances
    near_o2m = {(0, 0): t0[0], (0, 2): t0[0], (0, 5): t0[0], (0, 3): t0[1], (0, 7): t0[1],
                (2, 1): t2[0], (2, 2): t2[0], (2, 4): t2[1], (2, 7): t2[2], (2, 5): t2[2]}
    o2o = [_layer(generator, final=l == 1, presence=True, near=near_o2o) for l in range(2)]
    o2m = [_layer(generator, final=l == 1, presence=False, near=near_o2m) for l in range(2)]
    masks = [torch.stack([box_mask(b, MASK_SIZE) for b in t]) if len(t) else torch.zeros(0, MASK_SIZE, MASK_SIZE)
             for t in TARGETS_FULL]
    return DetectorOutputs(o2o=o2o, o2m=o2m), ConceptTargets(list(TARGETS_FULL), masks)


def _expected_total(outputs: DetectorOutputs, targets: ConceptTargets, aux: bool = True, o2m: bool = True,
                    sqrt_batch: bool = True) -> tuple[float, dict[str, float]]:
    """sqrt(B) * sum over layers of the weighted terms; the matchers are called here, layer by layer."""
    num_boxes = float(max(1, sum(len(b) for b in targets.boxes_cxcywh)))
    total, logged = 0.0, {}
    for layer in range(2):
        final = layer == 1
        if not final and not aux:
            continue
        branches = [("o2o", outputs.o2o[layer], HungarianMatcher(), 1.0)]
        if o2m:
            branches.append(("o2m", outputs.o2m[layer], OneToManyMatcher() if final else HungarianMatcher(), 2.0))
        for name, pred, matcher, scale in branches:
            match = pairs(matcher(pred, targets))
            terms = ref_terms(pred, targets.boxes_cxcywh, targets.masks if final else None, match, num_boxes)
            for term, value in terms.items():
                logged[f"{name}/{term}/layer{layer}"] = scale * WEIGHTS[term] * value
                total += scale * WEIGHTS[term] * value
    return total * (math.sqrt(targets.batch_size) if sqrt_batch else 1.0), logged


def test_full_criterion_by_hand():
    outputs, targets = _full_case()
    final_o2m = pairs(OneToManyMatcher()(outputs.o2m[1], targets))
    assert len(final_o2m) > 5  # the o2m branch really is one-to-many here
    assert pairs(HungarianMatcher()(outputs.o2m[1], targets)) != final_o2m

    total, logged = Sam3Criterion()(outputs, targets)
    expected, expected_logged = _expected_total(outputs, targets)
    assert set(logged) - {"num_boxes"} == set(expected_logged)
    for key, value in expected_logged.items():
        assert close(logged[key], value), (key, float(logged[key]), value)
    assert close(total, expected), (float(total), expected)
    assert float(logged["num_boxes"]) == 5.0
    # masks on the final layer only, presence on o2o only
    assert "o2o/loss_mask/layer1" in logged and "o2m/loss_dice/layer1" in logged
    assert not any("loss_mask/layer0" in k or "loss_dice/layer0" in k for k in logged)
    assert not any(k.startswith("o2m/loss_presence") for k in logged)
    assert all(f"o2o/loss_presence/layer{l}" in logged for l in range(2))


@pytest.mark.parametrize("aux,o2m,sqrt_batch", [(False, True, True), (True, False, True), (True, True, False)])
def test_full_criterion_toggles(aux, o2m, sqrt_batch):
    outputs, targets = _full_case()
    config = ObjectiveConfig(aux_layers=aux, one_to_many=o2m, scale_by_sqrt_batch=sqrt_batch)
    total, logged = Sam3Criterion(config)(outputs, targets)
    expected, expected_logged = _expected_total(outputs, targets, aux=aux, o2m=o2m, sqrt_batch=sqrt_batch)
    assert set(logged) - {"num_boxes"} == set(expected_logged)
    assert close(total, expected), (float(total), expected)
    full, _ = _expected_total(outputs, targets)
    assert not close(expected, full)  # each toggle changes the total
    if not sqrt_batch:
        assert close(total * math.sqrt(3), full)


# ----- 5. invariance to the order of the instances ----------------------------------------------------
def test_total_is_invariant_to_target_order():
    outputs, targets = _full_case(seed=1)
    # this test needs no o2m query matched to two instances (see test_one_to_many_matches_by_hand)
    o2m_queries = [(b, q) for b, q, _ in pairs(OneToManyMatcher()(outputs.o2m[1], targets))]
    assert len(o2m_queries) == len(set(o2m_queries))
    total, _ = Sam3Criterion()(outputs, targets)
    for perm0, perm2 in (([1, 0], [2, 0, 1]), ([0, 1], [1, 2, 0]), ([1, 0], [0, 2, 1])):
        boxes = [targets.boxes_cxcywh[0][perm0], targets.boxes_cxcywh[1], targets.boxes_cxcywh[2][perm2]]
        masks = [targets.masks[0][perm0], targets.masks[1], targets.masks[2][perm2]]
        permuted, _ = Sam3Criterion()(outputs, ConceptTargets(boxes, masks))
        assert abs(float(permuted) - float(total)) < 1e-6 * max(1.0, abs(float(total))), (float(permuted),
                                                                                          float(total))


# ----- 6. perfect predictions --------------------------------------------------------------------------
def test_perfect_boxes_give_zero_box_loss():
    outputs, targets = _full_case()
    t0, _, t2 = TARGETS_FULL
    for layer in outputs.o2o:
        layer.boxes_cxcywh[0, 1], layer.boxes_cxcywh[0, 4] = t0[0], t0[1]
        layer.boxes_cxcywh[2, 0], layer.boxes_cxcywh[2, 6], layer.boxes_cxcywh[2, 3] = t2[0], t2[1], t2[2]
        layer.logits[0, [1, 4]] = 3.0
        layer.logits[2, [0, 6, 3]] = 3.0
    criterion = Sam3Criterion()
    for layer in outputs.o2o:
        match = criterion.matcher(layer, targets)
        assert pairs(match) == [(0, 1, 0), (0, 4, 1), (2, 0, 2), (2, 3, 4), (2, 6, 3)]
        boxes = criterion.loss_boxes(layer, targets, match, torch.tensor(5.0))
        assert float(boxes["loss_bbox"]) < 1e-6 and float(boxes["loss_giou"]) < 1e-6
    _, logged = criterion(outputs, targets)
    for layer in range(2):
        assert float(logged[f"o2o/loss_bbox/layer{layer}"]) < 1e-6
        assert float(logged[f"o2o/loss_giou/layer{layer}"]) < 2 * 1e-6


# An 8 px instance on the official 1008 px canvas, predicted exactly: the overlap has no eps bias.
SMALL_BOX = torch.tensor([[0.5, 0.5, 8 / 1008, 8 / 1008]])
def test_perfect_small_box_gives_zero_giou_loss():
    pred = LayerPredictions(torch.tensor([[2.0]]), SMALL_BOX[None].clone())
    match = MatchIndices(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    got = Sam3Criterion().loss_boxes(pred, ConceptTargets([SMALL_BOX.clone()]), match, torch.tensor(1.0))
    assert float(got["loss_bbox"]) == 0.0
    assert float(got["loss_giou"]) < 1e-6, float(got["loss_giou"])  # official: 1 - GIoU = 0


def test_perfect_small_box_soft_target_uses_exact_iou():
    pred = LayerPredictions(torch.tensor([[2.0]]), SMALL_BOX[None].clone())
    match = MatchIndices(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    got = Sam3Criterion().loss_labels(pred, ConceptTargets([SMALL_BOX.clone()]), match)
    expected = 10 * bce(2.0, sig(2.0) ** 0.25 * 1.0 ** 0.75)  # IoU = 1 exactly; Q = B = 1
    assert close(got["loss_ce"], expected, 1e-6), (float(got["loss_ce"]), expected)


# ----- 7. only negative phrases -------------------------------------------------------------------------
def test_only_negative_phrases_learn_through_presence_only():
    generator = torch.Generator().manual_seed(7)
    num_b, num_q = 2, 5

    def layer(final: bool, presence: bool) -> LayerPredictions:
        boxes = torch.cat([torch.rand(num_b, num_q, 2, generator=generator) * 0.6 + 0.2,
                           torch.rand(num_b, num_q, 2, generator=generator) * 0.3 + 0.1], dim=-1)
        return LayerPredictions(
            torch.randn(num_b, num_q, generator=generator).requires_grad_(),
            boxes.requires_grad_(),
            torch.randn(num_b, 1, generator=generator).requires_grad_() if presence else None,
            (torch.randn(num_b, num_q, 4, 4, generator=generator)).requires_grad_() if final else None)

    o2o = [layer(l == 1, True) for l in range(2)]
    o2m = [layer(l == 1, False) for l in range(2)]
    targets = ConceptTargets([torch.zeros(0, 4)] * num_b, [torch.zeros(0, 8, 8)] * num_b)
    total, logged = Sam3Criterion()(DetectorOutputs(o2o, o2m), targets)
    expected = 0.0
    for pred in o2o:
        presence = [bce(float(pred.presence_logits.detach()[b, 0]), 0.0) for b in range(num_b)]
        expected += 20 * 0.5 * sum(presence) / num_b
    assert close(total, math.sqrt(num_b) * expected)
    assert float(logged["num_boxes"]) == 1.0
    for key, value in logged.items():
        if "loss_presence" in key:
            assert float(value) > 0
        elif key != "num_boxes":
            assert float(value) == 0.0, key
    assert {"o2o/loss_ce/layer0", "o2o/loss_bbox/layer1", "o2m/loss_ce/layer1"} <= set(logged)

    total.backward()
    for pred in o2o + o2m:
        assert pred.logits.grad is not None and torch.count_nonzero(pred.logits.grad) == 0
        assert pred.boxes_cxcywh.grad is None or torch.count_nonzero(pred.boxes_cxcywh.grad) == 0
        if pred.masks is not None:
            assert pred.masks.grad is None or torch.count_nonzero(pred.masks.grad) == 0
    for pred in o2o:
        assert torch.count_nonzero(pred.presence_logits.grad) == num_b
        # d/dx [sqrt(B) * 20 * 0.5 * mean_b BCE(x_b, 0)] = sqrt(B) * 10 * sigmoid(x_b) / B
        expected_grad = math.sqrt(num_b) * 10 * sig(pred.presence_logits.detach().double()) / num_b
        assert torch.allclose(pred.presence_logits.grad.double(), expected_grad, atol=1e-6)


# ----- 8. point-sampled mask loss ----------------------------------------------------------------------
def test_point_sample_reads_pixel_centres():
    maps = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    rows, cols = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    points = torch.stack([(cols.flatten() + 0.5) / 7, (rows.flatten() + 0.5) / 5], dim=-1)  # (x, y)
    values = point_sample(maps, points[None].expand(2, -1, -1))
    assert values.shape == (2, 35)
    assert torch.allclose(values, maps.flatten(1), atol=1e-6)
    # halfway between two horizontal pixel centres: their mean
    mid = point_sample(maps, torch.tensor([[[2.0 / 7, 1.5 / 5]]] * 2))
    assert torch.allclose(mid[:, 0], (maps[:, 1, 1] + maps[:, 1, 2]) / 2, atol=1e-6)


def test_uncertain_points_prefer_uncertain_regions():
    size, num_points = 32, 100
    centres = (torch.arange(size) + 0.5) / size
    band = ((centres > 0.3) & (centres < 0.7)).float()  # logit 0 inside, +-10 outside (along x)
    logits = torch.stack([10 * (1 - band).expand(size, size), -10 * (1 - band).expand(size, size)])
    points = uncertain_points(logits, num_points, generator=torch.Generator().manual_seed(0))
    assert points.shape == (2, num_points, 2)
    assert float(points.min()) >= 0 and float(points.max()) <= 1
    importance = points[:, : int(0.75 * num_points)]
    in_band = ((importance[..., 0] > 0.3) & (importance[..., 0] < 0.7)).float().mean()
    assert float(in_band) >= 0.95
    values = point_sample(logits, points).abs()
    assert float(values[:, :75].mean()) < float(values[:, 75:].mean())


def _smooth_mask_case():
    """One instance: smooth radial logits on a 16 x 16 grid, a disk target on 64 x 64."""
    grid = (torch.arange(16) + 0.5) / 16
    radius = ((grid[None, :] - 0.5) ** 2 + (grid[:, None] - 0.45) ** 2).sqrt()
    logits = (6 * (0.3 - radius))[None, None]  # (B=1, Q=1, 16, 16)
    fine = (torch.arange(64) + 0.5) / 64
    disk = ((((fine[None, :] - 0.52) ** 2 + (fine[:, None] - 0.5) ** 2).sqrt()) < 0.28).float()
    pred = LayerPredictions(torch.zeros(1, 1), torch.tensor([[[0.5, 0.5, 0.5, 0.5]]]), masks=logits)
    targets = ConceptTargets([torch.tensor([[0.52, 0.5, 0.56, 0.56]])], [disk[None]])
    match = MatchIndices(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    return pred, targets, match


def test_point_sampled_mask_loss_approximates_dense_loss():
    pred, targets, match = _smooth_mask_case()
    num_boxes = torch.tensor(1.0)
    dense = Sam3Criterion().loss_masks(pred, targets, match, num_boxes)
    # uniform points: an unbiased estimate of the dense pixel mean
    torch.manual_seed(0)
    uniform = Sam3Criterion(ObjectiveConfig(mask_points=4096, mask_importance_ratio=0.0)).loss_masks(
        pred, targets, match, num_boxes)
    assert abs(float(uniform["loss_mask"]) - float(dense["loss_mask"])) < 0.1 * float(dense["loss_mask"])
    assert abs(float(uniform["loss_dice"]) - float(dense["loss_dice"])) < 0.03
    # default importance sampling: the same order of magnitude (it over-weights the uncertain boundary)
    torch.manual_seed(0)
    default = Sam3Criterion(ObjectiveConfig(mask_points=4096)).loss_masks(pred, targets, match, num_boxes)
    for term in ("loss_mask", "loss_dice"):
        ratio = float(default[term]) / float(dense[term])
        assert 0.5 < ratio < 4.0, (term, ratio)


# ----- 9. num_boxes -------------------------------------------------------------------------------------
def test_global_num_boxes():
    boxes = [torch.tensor([[0.5, 0.5, 0.1, 0.1]] * 2), torch.zeros(0, 4), torch.tensor([[0.5, 0.5, 0.1, 0.1]] * 3)]
    count = global_num_boxes(ConceptTargets(boxes), torch.device("cpu"))
    assert count.dtype == torch.float32 and float(count) == 5.0
    assert float(global_num_boxes(ConceptTargets([torch.zeros(0, 4)] * 4), torch.device("cpu"))) == 1.0


# ----- 10. target validation ----------------------------------------------------------------------------
@pytest.mark.parametrize("box", [[0.5, 0.5, 0.0, 0.2], [0.5, 0.5, 0.2, 0.0], [0.5, 0.5, -0.1, 0.2],
                                 [float("nan"), 0.5, 0.2, 0.2], [0.5, 0.5, float("inf"), 0.2]])
def test_invalid_boxes_raise(box):
    with pytest.raises(TargetError):
        ConceptTargets([torch.tensor([[0.3, 0.3, 0.1, 0.1], box])])


def test_mask_count_mismatch_raises():
    boxes = torch.tensor([[0.3, 0.3, 0.1, 0.1], [0.6, 0.6, 0.2, 0.2]])
    with pytest.raises(TargetError):
        ConceptTargets([boxes], [torch.zeros(1, 8, 8)])  # 2 instances, 1 mask
    with pytest.raises(TargetError):
        ConceptTargets([boxes, torch.zeros(0, 4)], [torch.zeros(2, 8, 8)])  # 2 queries, 1 mask entry
    with pytest.raises(TargetError):
        ConceptTargets([boxes], [torch.zeros(2, 8)])  # not (T, H, W)
    ConceptTargets([boxes, torch.zeros(0, 4)], [torch.zeros(2, 8, 8), torch.zeros(0, 8, 8)])  # valid


# ----- 11. structure: one loss_* per term, one weight dict, matchers configured by ObjectiveConfig only -----
def test_presence_has_its_own_loss_method():
    pred, targets, match = _two_query_case()
    criterion = Sam3Criterion()
    num_boxes = torch.tensor(2.0)
    presence = criterion.loss_presence(pred, targets, match)
    assert set(presence) == {"loss_presence"}
    assert close(presence["loss_presence"], 0.5 * (bce(0.7, 1.0) + bce(-0.3, 0.0)) / 2)
    assert set(criterion.loss_labels(pred, targets, match)) == {"loss_ce"}
    assert set(criterion.loss_boxes(pred, targets, match, num_boxes)) == {"loss_bbox", "loss_giou"}
    assert set(criterion.loss_masks(pred, targets, match, num_boxes)) == {"loss_mask", "loss_dice"}
    # the classification term does not reach the presence logit, and presence reaches nothing else
    criterion.loss_labels(pred, targets, match)["loss_ce"].backward()
    assert pred.presence_logits.grad is None
    presence["loss_presence"].backward()
    assert torch.count_nonzero(pred.presence_logits.grad) == 2
    with pytest.raises(ValueError):  # one-to-many predictions carry no presence logits
        criterion.loss_presence(LayerPredictions(pred.logits, pred.boxes_cxcywh), targets, match)


def test_loss_presence_is_the_only_source_of_presence_terms():
    outputs, targets = _full_case()
    criterion = Sam3Criterion()
    _, logged = criterion(outputs, targets)
    presence_keys = {k for k in logged if "loss_presence" in k}
    assert presence_keys == {"o2o/loss_presence/layer0", "o2o/loss_presence/layer1"}
    for layer, pred in enumerate(outputs.o2o):  # each logged presence term is loss_presence's, weighted
        own = criterion.loss_presence(pred, targets, criterion.matcher(pred, targets))["loss_presence"]
        assert close(logged[f"o2o/loss_presence/layer{layer}"], 20 * float(own))
    criterion.loss_presence = lambda *args, **kwargs: {}  # silence it: no presence term is left anywhere
    _, without = criterion(outputs, targets)
    assert not any("loss_presence" in k for k in without)
    assert set(without) == set(logged) - presence_keys
    for key in without:
        assert torch.equal(without[key], logged[key]), key


def test_weight_dict_scales_only_its_term():
    outputs, targets = _full_case()
    base_total, base = Sam3Criterion()(outputs, targets)
    for term in ("loss_ce", "loss_presence", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"):
        config = ObjectiveConfig(**{term: 2 * getattr(ObjectiveConfig(), term)})
        assert Sam3Criterion(config).weight_dict[term] == 2 * WEIGHTS[term]
        total, logged = Sam3Criterion(config)(outputs, targets)
        assert set(logged) == set(base)
        for key, value in logged.items():
            factor = 2.0 if f"/{term}/" in key else 1.0
            assert close(value, factor * float(base[key])), (term, key)
        extra = sum(float(v) for k, v in base.items() if f"/{term}/" in k) * math.sqrt(targets.batch_size)
        assert close(total, float(base_total) + extra, 1e-5), term


def _cost_case():
    """One target; query 0 sits on it with a low logit, query 1 is far from it with a high logit."""
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    logits = torch.tensor([[-3.0, 3.0]])
    return LayerPredictions(logits, boxes), ConceptTargets([target])


def test_matcher_costs_come_from_objective_config():
    pred, targets = _cost_case()
    box, tgt = pred.boxes_cxcywh[0], targets.boxes_cxcywh[0][0]

    def hand(q: int, cost_bbox: float) -> float:
        l1 = sum(abs(float(p) - float(t)) for p, t in zip(box[q], tgt))
        return cost_bbox * l1 + 2 * focal_cost(float(pred.logits[0, q])) - 2 * iou_giou(box[q], tgt)[1]

    for cost_bbox, expected_query in ((5.0, 0), (0.0, 1)):  # without the L1 cost the confident query wins
        assert min(range(2), key=lambda q: hand(q, cost_bbox)) == expected_query
        criterion = Sam3Criterion(ObjectiveConfig(cost_bbox=cost_bbox))
        cost, _ = criterion.matcher.cost_matrix(pred, targets)
        assert all(close(cost[0, q, 0], hand(q, cost_bbox)) for q in range(2))
        assert pairs(criterion.matcher(pred, targets)) == [(0, expected_query, 0)]
    # the default matcher is the default config's
    assert pairs(HungarianMatcher()(pred, targets)) == pairs(HungarianMatcher(ObjectiveConfig())(pred, targets))


def test_matcher_focal_cost_comes_from_objective_config():
    pred, targets = _cost_case()
    alpha, gamma = 0.6, 1.0
    cost, _ = HungarianMatcher(ObjectiveConfig(cost_focal_alpha=alpha, cost_focal_gamma=gamma,
                                               cost_bbox=0.0, cost_giou=0.0)).cost_matrix(pred, targets)
    for q in range(2):
        p = sig(float(pred.logits[0, q]))
        expected = 2 * (-alpha * (1 - p) ** gamma * math.log(p) + (1 - alpha) * p ** gamma * math.log(1 - p))
        assert close(cost[0, q, 0], expected), (q, float(cost[0, q, 0]), expected)


def test_one_to_many_settings_come_from_objective_config():
    outputs, targets = _full_case()
    pred = outputs.o2m[1]
    default = pairs(OneToManyMatcher()(pred, targets))
    assert default == _o2m_expected(pred.logits, pred.boxes_cxcywh, targets.boxes_cxcywh)
    for alpha, threshold, topk in ((0.3, 0.4, 1), (0.3, 0.0, 4), (0.8, 0.4, 4)):
        config = ObjectiveConfig(o2m_alpha=alpha, o2m_threshold=threshold, o2m_topk=topk)
        got = pairs(Sam3Criterion(config).o2m_matcher(pred, targets))
        assert got == _o2m_expected(pred.logits, pred.boxes_cxcywh, targets.boxes_cxcywh, alpha, threshold, topk)
        assert got != default, (alpha, threshold, topk)
