"""Validation metrics of the fine-tuner: predictions on the model canvas -> original images -> cgF1 family and AP.

Every (image, phrase) query of the validation set becomes one SA-Co pair; its ground truth comes from the
dataset's original annotations (not the transformed targets), so the figures are those `sam3-adapt eval` would
give on the same predictions. COCO box and mask AP are computed over the same predictions with one category per
phrase. Across data-parallel ranks the predictions are gathered first (duplicates from sampler padding dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from adapt.data.batch import SampleMeta
from adapt.data.records import ImageSample
from adapt.evaluation.bootstrap import PairTable
from adapt.evaluation.cgf1 import CgF1Result, evaluate_pairs
from adapt.evaluation.coco import coco_ap
from adapt.evaluation.pairs import PairPrediction, PairTruth
from sam3_model.records import RLE, ConceptPrompt, ConceptResult, Instance, encode_mask, mask_area

QueryKey = tuple[int, int, str]  # (dataloader index, sample index, phrase)


@dataclass
class QueryPrediction:
    """Predictions of one (image, phrase) query in pixels of the original image, best first."""

    key: QueryKey
    scores: np.ndarray  # (D,)
    boxes_xyxy_px: np.ndarray  # (D, 4)
    masks: list[RLE]  # D RLEs of the original (H, W)
    presence: float


def _to_original(boxes_xyxy_norm: Tensor, meta: SampleMeta, canvas: int) -> Tensor:
    """(D, 4) boxes normalised by the canvas -> xyxy pixels of the original image, clipped to it."""
    size_h, size_w = meta.size_h or canvas, meta.size_w or canvas
    boxes = boxes_xyxy_norm.float() * canvas - boxes_xyxy_norm.new_tensor([meta.left, meta.top] * 2)
    boxes = boxes * boxes.new_tensor([meta.width / size_w, meta.height / size_h] * 2)
    limit = boxes.new_tensor([meta.width, meta.height] * 2)
    return torch.minimum(boxes, limit).clamp(min=0)


def _masks_to_original(mask_logits: Tensor, meta: SampleMeta, canvas: int) -> list[RLE]:
    """(D, h, w) mask logits over the canvas -> D RLEs of the original image (crop the content, resize)."""
    if not len(mask_logits):
        return []
    size_h, size_w = meta.size_h or canvas, meta.size_w or canvas
    up = F.interpolate(mask_logits[None].float(), size=(canvas, canvas), mode="bilinear", align_corners=False)[0]
    content = up[:, meta.top : meta.top + size_h, meta.left : meta.left + size_w]  # (D, size_h, size_w)
    resized = F.interpolate(content[None], size=(meta.height, meta.width), mode="bilinear", align_corners=False)[0]
    return [encode_mask(m) for m in (resized > 0).cpu().numpy()]


def query_predictions(
    logits: Tensor,  # (P, Q)
    presence_logits: Tensor,  # (P, 1)
    boxes_xyxy_norm: Tensor,  # (P, Q, 4)
    mask_logits: Tensor | None,  # (P, Q, h, w)
    image_index: Tensor,  # (P,)
    phrases: Sequence[str],
    meta: Sequence[SampleMeta],
    dataloader_idx: int,
    canvas: int,
    min_score: float,
    max_detections: int,
) -> list[QueryPrediction]:
    """One `QueryPrediction` per query: score = sigmoid(logit) x sigmoid(presence), kept when >= min_score."""
    scores = logits.float().sigmoid() * presence_logits.float().sigmoid()  # (P, Q)
    out = []
    for p, phrase in enumerate(phrases):
        m = meta[int(image_index[p])]
        keep = torch.nonzero(scores[p] >= min_score).squeeze(1)
        keep = keep[scores[p, keep].argsort(descending=True)][:max_detections]
        boxes = _to_original(boxes_xyxy_norm[p, keep], m, canvas)
        masks = _masks_to_original(mask_logits[p, keep], m, canvas) if mask_logits is not None else []
        out.append(QueryPrediction((dataloader_idx, m.index, phrase), scores[p, keep].cpu().numpy(),
                                   boxes.cpu().numpy(), masks, float(presence_logits[p].float().sigmoid())))
    return out


def gather_predictions(local: list[QueryPrediction]) -> list[QueryPrediction]:
    """Every rank's predictions (all ranks get all), one per query key."""
    gathered: list[QueryPrediction] = list(local)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[list[QueryPrediction] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        gathered = [q for part in parts for q in (part or [])]
    unique: dict[QueryKey, QueryPrediction] = {}
    for q in gathered:
        unique.setdefault(q.key, q)
    return [unique[k] for k in sorted(unique, key=lambda k: (k[0], k[1], k[2]))]


@dataclass
class ValidationMetrics:
    """Metrics over the validation queries, the number of queries evaluated and, when asked, their per-pair tables."""

    metrics: dict[str, float] = field(default_factory=dict)
    num_queries: int = 0
    table: PairTable | None = None  # the evaluation of `cgF1` (segm when the data has masks, else box)
    box_table: PairTable | None = None  # the evaluation of `cgF1_box`


def _truth(sample: ImageSample, phrase: str, pair_id: int) -> PairTruth:
    """The original annotation of `phrase` in `sample` (a negative when the phrase was not annotated there)."""
    for item in sample.phrases:
        if item.phrase == phrase:
            return PairTruth(pair_id, phrase, sample.height, sample.width, item.exhaustive,
                             boxes_xywh=np.asarray(item.boxes_xywh_px, np.float64).reshape(-1, 4),
                             masks=list(item.masks or []), iscrowd=np.zeros(item.num_instances, bool))
    return PairTruth(pair_id, phrase, sample.height, sample.width, True)  # a sampled hard negative


def compute_metrics(predictions: Sequence[QueryPrediction], samples: Sequence[Sequence[ImageSample]],
                    score_threshold: float = 0.5, tables: bool = False) -> ValidationMetrics:
    """cgF1, pmF1, IL_MCC (box, and mask when the data has masks) and COCO box/mask AP over the queries
    (`tables`: with the per-pair tables of the cgF1 evaluations, for bootstrap intervals)."""
    truths: dict[int, PairTruth] = {}
    preds: dict[int, PairPrediction] = {}
    has_masks = True
    for pid, q in enumerate(predictions):
        loader, index, phrase = q.key
        truths[pid] = truth = _truth(samples[loader][index], phrase, pid)
        has_masks &= bool(truth.masks) or truth.boxes_xywh.shape[0] == 0
        boxes_xywh = q.boxes_xyxy_px.copy().reshape(-1, 4)
        boxes_xywh[:, 2:] -= boxes_xywh[:, :2]
        preds[pid] = PairPrediction(pid, q.scores.astype(np.float64), boxes_xywh.astype(np.float64), list(q.masks))
    if not predictions:
        return ValidationMetrics()
    has_masks &= all(len(p.masks) == len(p.scores) for p in preds.values())
    metrics: dict[str, float] = {}
    box_result = evaluate_pairs([truths], preds, "bbox", score_threshold)
    box = box_result.metrics
    metrics.update({f"{k}_box": box[k] for k in ("cgF1", "pmF1", "IL_MCC")})
    main_result = evaluate_pairs([truths], preds, "segm", score_threshold) if has_masks else box_result
    main = main_result.metrics
    metrics.update({k: main[k] for k in ("cgF1", "cgF1@0.5", "pmF1", "IL_MCC")})
    gt, dt = _coco_views(predictions, truths, preds)
    for iou_type, suffix in (("bbox", "box"), ("segm", "mask")) if has_masks else (("bbox", "box"),):
        ap = coco_ap(gt, dt, iou_type, "validation predictions")
        metrics[f"AP_{suffix}"], metrics[f"AP50_{suffix}"] = ap["AP"], ap["AP50"]
    if not tables:
        return ValidationMetrics(metrics, len(predictions))
    main_table = _pair_table(main_result, predictions, samples, "segm" if has_masks else "bbox", score_threshold)
    box_table = _pair_table(box_result, predictions, samples, "bbox", score_threshold)
    return ValidationMetrics(metrics, len(predictions), main_table, box_table)


def _pair_table(result: CgF1Result, predictions: Sequence[QueryPrediction], samples: Sequence[Sequence[ImageSample]],
                iou_type: str, score_threshold: float) -> PairTable:
    """The per-pair table of one evaluation; an image's key is "<dataloader index>:<sample index>"."""
    image_of = {pid: f"{q.key[0]}:{q.key[1]}" for pid, q in enumerate(predictions)}  # pair ids: query order
    info = {f"{q.key[0]}:{q.key[1]}": (str(samples[q.key[0]][q.key[1]].image_id),
                                       str(samples[q.key[0]][q.key[1]].image_path)) for q in predictions}
    return PairTable.from_result(result, image_of, iou_type=iou_type, score_threshold=score_threshold,
                                 image_info=info)


def _coco_views(predictions: Sequence[QueryPrediction], truths: dict[int, PairTruth],
                preds: dict[int, PairPrediction]) -> tuple[dict, list[dict]]:
    """COCO ground truth (one category per phrase) and results over the same queries, for COCO AP."""
    phrases = sorted({q.key[2] for q in predictions})
    category = {p: i + 1 for i, p in enumerate(phrases)}
    image_ids: dict[tuple[int, int], int] = {}
    images, annotations, results = [], [], []
    for pid, q in enumerate(predictions):
        truth, pred = truths[pid], preds[pid]
        image_key = q.key[:2]
        if image_key not in image_ids:
            image_ids[image_key] = len(image_ids) + 1
            images.append({"id": image_ids[image_key], "height": truth.height, "width": truth.width})
        image_id, category_id = image_ids[image_key], category[q.key[2]]
        for g, box in enumerate(truth.boxes_xywh.tolist()):
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id, "bbox": box,
                   "iscrowd": 0, "area": box[2] * box[3]}
            if truth.masks:
                ann["segmentation"], ann["area"] = truth.masks[g], mask_area(truth.masks[g])
            annotations.append(ann)
        for d, (score, box) in enumerate(zip(pred.scores.tolist(), pred.boxes_xywh.tolist())):
            entry = {"image_id": image_id, "category_id": category_id, "score": score, "bbox": box}
            if pred.masks:
                entry["segmentation"] = pred.masks[d]
            results.append(entry)
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": i, "name": p} for p, i in category.items()]}
    return gt, results


def panel_results(queries: Sequence[QueryPrediction], score_threshold: float) -> list[ConceptResult]:
    """The queries of one image as `ConceptResult`s (instances above the threshold), for the validation panel."""
    results = []
    for q in queries:
        keep = q.scores >= score_threshold
        instances = [Instance(mask=m, box_xyxy_px=tuple(b), score=float(s))
                     for m, b, s, k in zip(q.masks or [None] * len(q.scores), q.boxes_xyxy_px.tolist(),
                                           q.scores.tolist(), keep) if k and m is not None]
        results.append(ConceptResult(image_id=q.key[1], prompt=ConceptPrompt(text=q.key[2]), presence=q.presence,
                                     instances=instances, image_size=(0, 0)))
    return results


def panel_truth(sample: ImageSample) -> list[ConceptResult]:
    """The annotated instances of one image as `ConceptResult`s (those with masks), for the validation panel."""
    results = []
    for phrase in sample.phrases:
        boxes_xywh_px = phrase.boxes_xywh_px.tolist()
        instances = [Instance(mask=m, box_xyxy_px=(x, y, x + w, y + h))
                     for m, (x, y, w, h) in zip(phrase.masks or [], boxes_xywh_px)]
        results.append(ConceptResult(image_id=sample.image_id, prompt=ConceptPrompt(text=phrase.phrase), presence=1.0,
                                     instances=instances, image_size=(sample.height, sample.width)))
    return results
