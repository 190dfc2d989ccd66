"""`sam3-adapt eval`: score predictions (or a model, predicting first) against ground truth, write the metrics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from sam3_model.errors import ConfigError
from sam3_model.formats import write_json_dataset


def evaluate_files(
    gt: list[Path],
    pred: Path | None = None,
    model: str | None = None,
    out: Path = Path("metrics.json"),
    report: Path | None = None,
    iou_type: Literal["segm", "bbox"] = "segm",
    format: Literal["saco", "coco"] | None = None,
    images: Path | None = None,
    threshold: float = 0.05,
    top_k: int | None = 100,
    device: str | None = None,
    pred_out: Path | None = None,
    exclude_category: list[str] | None = None,
    keep_placeholder_categories: bool = False,
) -> None:
    """cgF1, pmF1 and IL_MCC (SA-Co) and COCO AP of predictions, or of a model on the ground truth's images.

    Args:
        gt: ground-truth JSON (SA-Co or COCO); several SA-Co files give the oracle protocol.
        pred: COCO-results JSON to score, joined by file_name and phrase when its entries carry them, else by id.
        model: instead of pred: predict on the ground truth's images and phrases, then score (a Hub id, export,
            training checkpoint, run folder or preset).
        out: metrics JSON to write.
        report: markdown report to write (a PNG plot beside it).
        iou_type: segm (masks) or bbox.
        format: override the format detected from the ground truth.
        images: with model: the folder the ground truth's file_names are relative to (default: its folder).
        threshold: with model: keep instances scoring above this (0.05, as fit's validation; cgF1 counts >= 0.5).
        top_k: with model: instances per image and phrase.
        device: with model: torch device (default: cuda when available).
        pred_out: with model: where to write the predictions (default: predictions.json beside out).
        exclude_category: COCO categories left out with their annotations.
        keep_placeholder_categories: keep Roboflow's root category and labelme's _background_ (left out, as fit does).
    """
    from adapt.evaluation import evaluate, write_evaluation
    from adapt.predicting import category_rules

    if (pred is None) == (model is None):
        raise ConfigError("give exactly one of --pred PREDS.JSON (predictions to score) and --model M "
                          "(predict on the ground truth's images, then score)")
    rules = category_rules(exclude_category, keep_placeholder_categories)
    pred_path, predictions = pred, None
    if model is not None:
        from adapt.evaluation.on_truth import check_truth_images, predict_on_truth, truth_queries
        from adapt.predicting import inference_segmenter

        queries = truth_queries(gt[0], images, rules, format)
        check_truth_images(queries)
        predictions = predict_on_truth(inference_segmenter(model, device, threshold, top_k, "evaluation"), queries)
        pred_path = pred_out or Path(out).with_name("predictions.json")
        write_json_dataset(pred_path, predictions)
        print(f"wrote {pred_path} ({len(predictions)} results on {len(queries.images)} images)")
    evaluation = evaluate(gt, pred_path, iou_type=iou_type, format=format, rules=rules, predictions=predictions)
    write_evaluation(evaluation, out, report, title=f"Evaluation of {Path(pred_path).name}")
    m = evaluation.metrics
    line = (f"{evaluation.format} {evaluation.iou_type}: cgF1 {100 * m['cgF1']:.2f}  pmF1 {100 * m['pmF1']:.2f}  "
            f"IL_MCC {m['IL_MCC']:.3f}  ({int(m['num_pairs'])} pairs")
    skipped = int(m.get("num_pairs_skipped_non_exhaustive", 0))
    line += f", {skipped} non-exhaustive skipped)" if skipped else ")"
    if "AP" in m:
        line += f"  AP {100 * m['AP']:.2f}  AP50 {100 * m['AP50']:.2f}"
    print(line)
    for note in evaluation.notes:
        print(note, file=sys.stderr)
    print(f"wrote {out}" + (f" and {report}" if report else ""))
