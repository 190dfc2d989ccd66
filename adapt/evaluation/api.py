"""One entry point for evaluation: ground-truth file(s) + predictions -> the metrics dict (and a report).

SA-Co ground truth (one `images[]` entry per image-phrase pair) gets the cgF1 family, with the oracle over
several GT files; COCO ground truth gets the cgF1 family over every image x category and COCO AP.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam3_model.atomic import atomic_write_text
from sam3_model.errors import ConfigError
from sam3_model.formats import CategoryRules, detect_format, read_json

from .cgf1 import CgF1Result, evaluate_pairs, load_saco_truth, parse_predictions
from .coco import (
    apply_category_rules,
    check_predictions,
    coco_ap,
    coco_pairs,
    coco_predictions,
    image_sizes,
)
from .join import TruthIndex, check_box_units, join_predictions
from .pairs import PairTruth
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
    notes: list[str] = field(default_factory=list)  # what the user should read: left-out categories, box units


def evaluate(gt_paths: Sequence[str | os.PathLike[str]], pred_path: str | os.PathLike[str] | None = None,
             iou_type: str = "segm", format: str | None = None, rules: CategoryRules = CategoryRules(),  # noqa: B008
             predictions: list | None = None) -> Evaluation:
    """Evaluate COCO-results predictions against SA-Co or COCO ground truth (format detected unless given).

    Predictions come from `pred_path` or, already parsed, `predictions` (then `pred_path` only names them).
    Entries carrying `file_name` (and `phrase`) are joined to the ground truth by them (see `join`);
    `rules` leave placeholder and excluded categories of a COCO file out, as training does.
    """
    if iou_type not in IOU_TYPES:
        raise ConfigError(f"iou_type must be one of {', '.join(IOU_TYPES)}, got {iou_type!r}")
    if not gt_paths:
        raise ConfigError("give at least one ground-truth file")
    first_gt = read_json(gt_paths[0], "ground truth")
    fmt = format or detect_format(first_gt, str(gt_paths[0]))
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    source = str(pred_path) if pred_path is not None else "predictions"
    pred_json = predictions if predictions is not None else read_json(pred_path, "predictions")
    if fmt == "saco":
        truths = [load_saco_truth(gt_paths[0], first_gt)] + [load_saco_truth(path) for path in gt_paths[1:]]
        index = saco_index(truths[0])
        joined, report = join_predictions(pred_json, index, source)
        notes = report.notes + check_box_units(joined, index, iou_type, source)
        parsed = parse_predictions(joined, truths[0], source)
        result = evaluate_pairs(truths, parsed, iou_type)
        metrics = dict(result.metrics, num_predictions_dropped_category=float(parsed.num_dropped_category))
        return Evaluation(metrics, result, fmt, iou_type, notes + _dropped_note(parsed.num_dropped_category))
    if len(gt_paths) > 1:
        raise ConfigError("several ground-truth files (the oracle protocol) are defined for SA-Co ground truth only")
    gt, notes = apply_category_rules(first_gt, rules, str(gt_paths[0]))
    truths, pair_map = coco_pairs(gt, str(gt_paths[0]))
    index = coco_index(gt, str(gt_paths[0]))
    joined, report = join_predictions(pred_json, index, source)
    check_predictions(joined, source, index.size_of)
    notes += report.notes + check_box_units(joined, index, iou_type, source)
    kept = [e for e in joined if isinstance(e["category_id"], (int, str)) and e["category_id"] in index.category_names]
    result = evaluate_pairs([truths], coco_predictions(kept, pair_map), iou_type)
    dropped = len(joined) - len(kept)
    metrics = {**result.metrics, **coco_ap(gt, kept, iou_type, source),
               "num_predictions_dropped_category": float(dropped)}
    return Evaluation(metrics, result, fmt, iou_type, notes + _dropped_note(dropped))


def _dropped_note(count: int) -> list[str]:
    if not count:
        return []
    return [f"note: {count} predictions had a category_id that is not a ground-truth category and were ignored, "
            "as the official evaluator does"]


def saco_index(truth: Mapping[Any, PairTruth]) -> TruthIndex:
    """How to join predictions to an SA-Co ground truth: pair id -> file name, phrase, size."""
    categories = getattr(truth, "category_ids", ()) or (1,)
    return TruthIndex("saco", file_of={pid: t.file_name for pid, t in truth.items()},
                      size_of={pid: (t.height, t.width) for pid, t in truth.items()},
                      phrase_of={pid: t.phrase for pid, t in truth.items()}, pair_category=categories[0])


def coco_index(gt_json: Mapping[str, Any], source: str) -> TruthIndex:
    """How to join predictions to a COCO ground truth: image id -> file name, size; category id -> name."""
    files = {img["id"]: str(img.get("file_name", "")) for img in gt_json["images"]}
    return TruthIndex("coco", file_of=files, size_of=image_sizes(gt_json, source),
                      category_names={c["id"]: str(c["name"]).strip() for c in gt_json["categories"]})


def write_evaluation(evaluation: Evaluation, out_json: str | os.PathLike[str],
                     report_md: str | os.PathLike[str] | None = None, title: str = "Evaluation") -> None:
    """Write metrics.json (atomically) and, when asked, the markdown report with its plot."""
    atomic_write_text(out_json, json.dumps(evaluation.metrics, indent=2, sort_keys=True) + "\n")
    if report_md is not None:
        write_report(evaluation.metrics, evaluation.result, Path(report_md), title)
