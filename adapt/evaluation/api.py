"""One entry point for evaluation: ground-truth file(s) + predictions -> the metrics dict (and a report).

SA-Co ground truth (one `images[]` entry per image-phrase pair) gets the cgF1 family, with the oracle over
several GT files; COCO ground truth gets the cgF1 family over every image x category and COCO AP.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sam3_model.atomic import atomic_write_text
from sam3_model.errors import ConfigError

from .cgf1 import CgF1Result, evaluate_pairs, load_predictions, load_saco_truth
from .coco import check_predictions, coco_ap, coco_pairs, coco_predictions, detect_format, image_sizes
from .jsonfiles import read_json
from .report import write_report

FORMATS = ("saco", "coco")
IOU_TYPES = ("segm", "bbox")


@dataclass
class Evaluation:
    """Metrics (`cgF1`, `pmF1`, `IL_MCC`, counts, and COCO `AP`... for COCO ground truth) and the details."""

    metrics: dict[str, float]
    result: CgF1Result
    format: str
    iou_type: str


def evaluate(gt_paths: Sequence[str | os.PathLike[str]], pred_path: str | os.PathLike[str],
             iou_type: str = "segm", format: str | None = None) -> Evaluation:
    """Evaluate COCO-results predictions against SA-Co or COCO ground truth (format detected unless given)."""
    if iou_type not in IOU_TYPES:
        raise ConfigError(f"iou_type must be one of {', '.join(IOU_TYPES)}, got {iou_type!r}")
    if not gt_paths:
        raise ConfigError("give at least one ground-truth file")
    first_gt = read_json(gt_paths[0], "ground truth")
    fmt = format or detect_format(first_gt, str(gt_paths[0]))
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "saco":
        truths = [load_saco_truth(path) for path in gt_paths]
        predictions = load_predictions(pred_path, truths[0])
        result = evaluate_pairs(truths, predictions, iou_type)
        metrics = dict(result.metrics, num_predictions_dropped_category=float(predictions.num_dropped_category))
        return Evaluation(metrics, result, fmt, iou_type)
    if len(gt_paths) > 1:
        raise ConfigError("several ground-truth files (the oracle protocol) are defined for SA-Co ground truth only")
    truths, pair_map = coco_pairs(first_gt, str(gt_paths[0]))
    pred_json = read_json(pred_path, "predictions")
    check_predictions(pred_json, str(pred_path), image_sizes(first_gt, str(gt_paths[0])))
    result = evaluate_pairs([truths], coco_predictions(pred_json, pair_map), iou_type)
    metrics = {**result.metrics, **coco_ap(first_gt, pred_json, iou_type, str(pred_path))}
    return Evaluation(metrics, result, fmt, iou_type)


def write_evaluation(evaluation: Evaluation, out_json: str | os.PathLike[str],
                     report_md: str | os.PathLike[str] | None = None, title: str = "Evaluation") -> None:
    """Write metrics.json (atomically) and, when asked, the markdown report with its plot."""
    atomic_write_text(out_json, json.dumps(evaluation.metrics, indent=2, sort_keys=True) + "\n")
    if report_md is not None:
        write_report(evaluation.metrics, evaluation.result, Path(report_md), title)
