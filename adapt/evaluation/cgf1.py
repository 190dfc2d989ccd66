"""The SA-Co cgF1 metric family (cgF1, pmF1, IL_MCC, ...), exactly as `sam3/eval/cgf1_eval.py` computes it.

Per image-phrase pair (official `CGF1Eval.evaluateImg`): D = predictions with score >= 0.5, G = GT with
iscrowd = 0 (crowd GTs are dropped, so a prediction on a crowd region is an FP).
|G| = |D| = 0 is an image-level TN (no box-level numbers); |G| > 0, |D| = 0 is an IL_FN with FN = |G|;
otherwise one Hungarian assignment maximising total IoU, TP_t = #assigned pairs with IoU >= t.
Accumulation (`CGF1Eval.accumulate`) and the summary (`CGF1Eval.summarize`) follow, with the same epsilons;
several GT files give the oracle protocol (`CGF1Evaluator._select_best_scoring`).
Values match the official evaluator to ~1e-12 (see tests/test_cgf1.py), without the COCOeval machinery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pycocotools.mask as mask_utils
from scipy.optimize import linear_sum_assignment

from adapt.evaluation.pairs import PairId, PairPrediction, PairTruth
from sam3_model.errors import DatasetError
from sam3_model.formats import (
    FormatProblem,
    RleBatch,
    check_phrase,
    check_rle,
    gc_paused,
    read_json,
    require_keys,
)

# The official thresholds, built the same way (COCOeval.Params): 0.75 is exactly the 6th element.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
BOX_EPS = 1e-4  # box-level precision / recall / F1
IL_EPS = 1e-6  # image-level precision / recall / F1 / FPR / MCC
_IL_NAMES = ("TP", "FP", "TN", "FN")
# Threshold-wise metrics, reported as the mean over the 10 thresholds and at 0.5 / 0.75 (official names + pmF1).
_THRESHOLD_METRICS = (
    "cgF1", "pmF1", "precision", "recall", "F1",
    "positive_macro_F1", "positive_micro_F1", "positive_micro_precision",
)  # fmt: skip


@dataclass
class PairOutcome:
    """How one evaluated pair scored (after the oracle selection when there are several GT files)."""

    pair_id: PairId
    phrase: str
    num_gt: int  # non-crowd GT instances of the selected GT file
    num_pred: int  # predictions with score >= the threshold
    il_outcome: str  # "TP" | "FP" | "TN" | "FN"
    local_f1: list[float] | None  # F1 at the 10 IoU thresholds; None for a true negative (as official)
    gt_file: int = 0  # index of the GT file the oracle selected


@dataclass
class CgF1Result:
    """The metrics, the per-threshold curves and the per-pair outcomes of one evaluation."""

    metrics: dict[str, float]
    f1_by_threshold: dict[str, list[float]]
    per_pair: list[PairOutcome] = field(default_factory=list)
    iou_thresholds: list[float] = field(default_factory=lambda: IOU_THRESHOLDS.tolist())
    # The per-pair counts the metrics were accumulated from, rows in `per_pair` order (after the oracle selection).
    num_gt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) non-crowd GT instances
    num_dt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) predictions >= threshold
    tps: np.ndarray = field(default_factory=lambda: np.zeros((0, len(IOU_THRESHOLDS)), np.int64))  # (N, T) TP_t


@dataclass
class _FileCounts:
    """Per-pair counts of the evaluated pairs against one GT file (arrays over pairs)."""

    num_gt: np.ndarray  # (N,) int64
    num_dt: np.ndarray  # (N,) int64
    tps: np.ndarray  # (N, T) int64
    local_f1: np.ndarray  # (N, T) float64, meaningless where the pair is a TN


# ----------------------------------------------------------------------------------------- evaluation


def evaluate_pairs(
    truths: Sequence[Mapping[PairId, PairTruth]],
    predictions: Mapping[PairId, PairPrediction],
    iou_type: str = "segm",
    score_threshold: float = 0.5,
) -> CgF1Result:
    """cgF1 family over the pairs of `truths[0]` that are exhaustive in every GT file (oracle if several)."""
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    if not truths:
        raise ValueError("evaluate_pairs needs at least one GT mapping")
    ids = _evaluated_ids(truths)
    per_file = [_file_counts(t, ids, predictions, iou_type, score_threshold, k) for k, t in enumerate(truths)]
    chosen = _select_best(per_file)
    rows = np.arange(len(ids))
    num_gt = np.stack([c.num_gt for c in per_file], 1)[rows, chosen] if ids else np.zeros(0, np.int64)
    num_dt = per_file[0].num_dt
    tps = np.stack([c.tps for c in per_file], 1)[rows, chosen] if ids else np.zeros((0, len(IOU_THRESHOLDS)), np.int64)
    local_f1 = np.stack([c.local_f1 for c in per_file], 1)[rows, chosen] if ids else np.zeros(tps.shape)
    metrics, curves = _accumulate(num_gt, num_dt, tps, local_f1)
    metrics["num_pairs"] = float(len(ids))
    metrics["num_pairs_skipped_non_exhaustive"] = float(len(truths[0]) - len(ids))
    outcomes = _outcomes(truths[0], ids, num_gt, num_dt, local_f1, chosen)
    return CgF1Result(metrics=metrics, f1_by_threshold=curves, per_pair=outcomes, num_gt=num_gt, num_dt=num_dt,
                      tps=tps)


def _evaluated_ids(truths: Sequence[Mapping[PairId, PairTruth]]) -> list[PairId]:
    """Pairs of the first file, exhaustive there and not marked non-exhaustive in any other (official rule)."""
    excluded = {pid for t in truths[1:] for pid, pt in t.items() if not pt.exhaustive}
    ids = [pid for pid, pt in truths[0].items() if pt.exhaustive and pid not in excluded]
    for k, t in enumerate(truths[1:], start=1):
        missing = [pid for pid in ids if pid not in t]
        if missing:
            # Official: loadRes asserts when the pair has predictions; we refuse such GT sets outright.
            raise DatasetError(f"GT file {k} lacks pair id {missing[0]} of GT file 0 ({len(missing)} missing)")
    return ids


def _file_counts(
    truth: Mapping[PairId, PairTruth],
    ids: Sequence[PairId],
    predictions: Mapping[PairId, PairPrediction],
    iou_type: str,
    threshold: float,
    file_index: int,
) -> _FileCounts:
    """Per-pair G, D, TP_t and local F1_t of every evaluated pair against one GT file."""
    n, t = len(ids), len(IOU_THRESHOLDS)
    num_gt, num_dt, tps = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros((n, t), np.int64)
    for i, pid in enumerate(ids):
        num_gt[i], num_dt[i], tps[i] = _match_pair(truth[pid], predictions.get(pid), iou_type, threshold, file_index)
    fps, fns = num_dt[:, None] - tps, num_gt[:, None] - tps
    # Same expression as evaluateImg; it also yields the official zeros of the IL_FN and IL_FP cases.
    precision = tps / (tps + fps + BOX_EPS)
    recall = tps / (tps + fns + BOX_EPS)
    local_f1 = 2 * precision * recall / (precision + recall + BOX_EPS)
    return _FileCounts(num_gt, num_dt, tps, local_f1)


def _match_pair(
    truth: PairTruth, pred: PairPrediction | None, iou_type: str, threshold: float, file_index: int
) -> tuple[int, int, np.ndarray]:
    """(|G|, |D|, TP_t) of one pair: crowds dropped, scores >= threshold, one max-IoU assignment."""
    tps = np.zeros(len(IOU_THRESHOLDS), np.int64)
    keep_gt = ~np.asarray(truth.iscrowd, dtype=bool).reshape(-1)
    keep_dt = np.zeros(0, bool) if pred is None else np.asarray(pred.scores, np.float64).reshape(-1) >= threshold
    g, d = int(keep_gt.sum()), int(keep_dt.sum())
    if g == 0 or d == 0:
        return g, d, tps
    ious = _ious(truth, pred, keep_gt, keep_dt, iou_type, file_index)
    rows, cols = linear_sum_assignment(-ious)
    tps[:] = (ious[rows, cols][:, None] >= IOU_THRESHOLDS[None, :]).sum(0)
    return g, d, tps


def _ious(
    truth: PairTruth, pred: PairPrediction, keep_gt: np.ndarray, keep_dt: np.ndarray, iou_type: str, k: int
) -> np.ndarray:
    """(D, G) IoU with pycocotools, as official. The kept GTs are all non-crowd, so no crowd flags are needed."""
    if iou_type == "bbox":
        d = np.asarray(pred.boxes_xywh, np.float64).reshape(-1, 4)[keep_dt]
        g = np.asarray(truth.boxes_xywh, np.float64).reshape(-1, 4)[keep_gt]
    else:
        if len(truth.masks) != len(keep_gt) or len(pred.masks) != len(keep_dt):
            raise DatasetError(f"pair {truth.pair_id}: segm evaluation needs masks (GT file {k} or predictions)")
        d = [m for m, keep in zip(pred.masks, keep_dt) if keep]
        g = [m for m, keep in zip(truth.masks, keep_gt) if keep]
    ious = mask_utils.iou(d, g, [0] * len(g))
    return np.asarray(ious, np.float64).reshape(len(d), len(g))


def _select_best(per_file: Sequence[_FileCounts]) -> np.ndarray:
    """Oracle choice per pair (`_select_best_scoring`): higher mean local F1 wins, earlier file on ties."""
    n = len(per_file[0].num_dt)
    chosen = np.zeros(n, np.int64)
    is_tn = [(c.num_gt == 0) & (c.num_dt == 0) for c in per_file]
    for i in range(n):
        for k in range(1, len(per_file)):
            best = chosen[i]
            if not is_tn[best][i] and not is_tn[k][i]:
                # Same reduction as official: mean of the 1-D array of the 10 local F1s.
                if per_file[k].local_f1[i].mean() > per_file[best].local_f1[i].mean():
                    chosen[i] = k
            elif is_tn[k][i]:
                # Official: a TN has no local F1 and counts as perfect; a newer TN replaces the current best,
                # and a TN best is never replaced by a non-TN (even one with local F1 = 1).
                chosen[i] = k
    return chosen


def _accumulate(
    num_gt: np.ndarray, num_dt: np.ndarray, tps: np.ndarray, local_f1: np.ndarray
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """`CGF1Eval.accumulate` + `summarize` on the selected per-pair counts."""
    pos, det = num_gt > 0, num_dt > 0
    boxed = pos | det  # every non-TN pair contributes box-level counts
    fps_pair, fns_pair = num_dt[:, None] - tps, num_gt[:, None] - tps
    tp, fp, fn = tps[boxed].sum(0), fps_pair[boxed].sum(0), fns_pair[boxed].sum(0)
    # pmFP: FPs of pairs with a GT only ("local_positive_F1s" exists for IL_TP and IL_FN), not of negatives.
    pm_fp = fps_pair[pos].sum(0)
    il = {"TP": int((pos & det).sum()), "FP": int((~pos & det).sum()),
          "TN": int((~pos & ~det).sum()), "FN": int((pos & ~det).sum())}  # fmt: skip
    by_thr = _box_level(tp, fp, fn, pm_fp)
    il_metrics = _image_level(il["TP"], il["FP"], il["TN"], il["FN"])
    # Official: the FN pairs add their zero F1 to the sum but are not counted (num_dt == 0); 0/0 gives NaN -> -1.
    valid = int((pos & det).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        by_thr["positive_macro_F1"] = local_f1[pos].sum(0) / valid if len(local_f1) else np.full(len(tp), np.nan)
    by_thr["cgF1"] = by_thr["positive_micro_F1"] * il_metrics["IL_MCC"]
    by_thr["pmF1"] = by_thr["positive_micro_F1"]
    metrics: dict[str, float] = {}
    for name in _THRESHOLD_METRICS:
        metrics[name] = _summary(by_thr[name])
        metrics[f"{name}@0.5"] = _summary(by_thr[name][IOU_THRESHOLDS == 0.5])
        metrics[f"{name}@0.75"] = _summary(by_thr[name][IOU_THRESHOLDS == 0.75])
    metrics.update(il_metrics)
    i50 = int(np.flatnonzero(IOU_THRESHOLDS == 0.5)[0])
    metrics.update({"TP@0.5": float(tp[i50]), "FP@0.5": float(fp[i50]), "FN@0.5": float(fn[i50])})
    metrics["pmFP@0.5"] = float(pm_fp[i50])
    metrics.update({f"IL_{k}": float(v) for k, v in il.items()})
    curves = {k: by_thr[k].tolist() for k in ("cgF1", "pmF1", "F1")}
    return metrics, curves


def _box_level(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, pm_fp: np.ndarray) -> dict[str, np.ndarray]:
    """Micro precision / recall / F1 per threshold, with the official 1e-4 epsilons."""
    precision = tp / (tp + fp + BOX_EPS)
    pm_precision = tp / (tp + pm_fp + BOX_EPS)
    recall = tp / (tp + fn + BOX_EPS)
    return {
        "precision": precision,
        "positive_micro_precision": pm_precision,
        "recall": recall,
        "F1": 2 * precision * recall / (precision + recall + BOX_EPS),
        "positive_micro_F1": 2 * pm_precision * recall / (pm_precision + recall + BOX_EPS),
    }


def _image_level(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    """Image-level precision / recall / F1 / FPR / MCC with the official 1e-6 epsilons."""
    rec = tp / (tp + fn + IL_EPS)
    prec = tp / (tp + fp + IL_EPS)
    denom = (float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn)) ** 0.5 + IL_EPS
    return {
        "IL_precision": prec,
        "IL_recall": rec,
        "IL_F1": 2 * prec * rec / (prec + rec + IL_EPS),
        "IL_FPR": fp / (fp + tn + IL_EPS),
        "IL_MCC": float(tp * tn - fp * fn) / denom,
    }


def _summary(values: np.ndarray) -> float:
    """Official `_summarize`: mean of the entries > -1 (NaN drops out), -1 when none is left."""
    kept = values[values > -1]
    return float(np.mean(kept)) if len(kept) else -1.0


def _outcomes(
    truth: Mapping[PairId, PairTruth],
    ids: Sequence[PairId],
    num_gt: np.ndarray,
    num_dt: np.ndarray,
    local_f1: np.ndarray,
    chosen: np.ndarray,
) -> list[PairOutcome]:
    """One `PairOutcome` per evaluated pair, in GT-file order."""
    out, rows = [], local_f1.tolist()  # one conversion: per-row tolist() is far slower
    for i, pid in enumerate(ids):
        g, d = int(num_gt[i]), int(num_dt[i])
        il = ("TP" if d else "FN") if g else ("FP" if d else "TN")
        f1 = None if il == "TN" else rows[i]
        out.append(PairOutcome(pid, truth[pid].phrase, g, d, il, f1, int(chosen[i])))
    return out


def official_keys(metrics: Mapping[str, float], iou_type: str) -> dict[str, float]:
    """The metrics under the official output names `cgF1_eval_{iou_type}_{name}[@thr]` (official names only)."""
    names = [n for n in _THRESHOLD_METRICS if n != "pmF1"]
    keys = [f"{n}{s}" for s in ("", "@0.5", "@0.75") for n in names]
    keys += ["IL_precision", "IL_recall", "IL_F1", "IL_FPR", "IL_MCC"]
    return {f"cgF1_eval_{iou_type}_{k}": metrics[k] for k in keys}


# ----------------------------------------------------------------------------------------------- files


class SacoTruth(dict):
    """`{pair_id: PairTruth}` of one SA-Co GT file, plus its category ids and what was dropped."""

    def __init__(self, path: str, category_ids: Sequence[int]) -> None:
        super().__init__()
        self.path = path
        self.category_ids = tuple(sorted(category_ids))
        self.num_dropped_category = 0  # annotations whose category_id is not a GT category (ignored, as official)


class PredictionSet(dict):
    """`{pair_id: PairPrediction}` of one COCO-results file, plus the count of dropped predictions."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.num_predictions = 0
        self.num_dropped_category = 0  # category_id not a GT category: silently dropped by the official code


def _is_key(value: Any) -> bool:
    """A JSON value that can be an id (a number or a string; a list or object cannot)."""
    return isinstance(value, (int, float, str))


def _number(value: Any, where: str, key: str) -> float:
    """A finite JSON number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DatasetError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


_JSON_NUMBERS = (int, float)  # exact types: a JSON true/false (bool) is not a coordinate


def _box(value: Any, where: str) -> list[float]:
    """An xywh box of 4 finite numbers."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise DatasetError(f"{where}: bbox must be a list of 4 numbers [x, y, w, h], got {value!r}")
    x, y, w, h = value
    if (type(x) in _JSON_NUMBERS and type(y) in _JSON_NUMBERS and type(w) in _JSON_NUMBERS
            and type(h) in _JSON_NUMBERS and math.isfinite(x + y + w + h)):  # fast path: one check per box
        return [float(x), float(y), float(w), float(h)]
    return [_number(v, where, "bbox") for v in value]  # names the offending value


def _rle(segm: Any, height: int, width: int, where: str, batch: RleBatch | None = None) -> dict:
    """Compressed RLE of a segmentation (compressed / uncompressed RLE or polygons), size- and runs-checked
    (the runs of compressed ones queued in `batch`, when given, for one vectorised check per file)."""
    if isinstance(segm, dict):
        try:
            return check_rle(segm, height, width, batch, where)
        except FormatProblem as err:
            raise DatasetError(f"{where}: {err}") from None
    if isinstance(segm, list):  # polygons, as COCO.annToRLE
        try:
            return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        except Exception as e:  # noqa: BLE001 - pycocotools raises assorted types on garbage
            raise DatasetError(f"{where}: unreadable polygon segmentation ({e})") from None
    raise DatasetError(f"{where}: segmentation must be an RLE {{size, counts}} or a polygon list")


def load_saco_truth(path: str | Path, data: Any = None) -> SacoTruth:
    """Read one SA-Co GT file (or its already parsed `data`): `images[]` are the pairs, `annotations[]` their instances."""
    with gc_paused():
        return _load_saco_truth(path, read_json(path, "ground truth") if data is None else data)


def _load_saco_truth(path: str | Path, data: Any) -> SacoTruth:
    require_keys(data, ("images", "annotations", "categories"), f"{path}")
    if not all(isinstance(data[k], list) for k in ("images", "annotations", "categories")):
        raise DatasetError(f"{path}: images, annotations and categories must be lists")
    cats = []
    for i, cat in enumerate(data["categories"]):
        require_keys(cat, ("id",), f"{path}: categories[{i}]")
        if not isinstance(cat["id"], int) or isinstance(cat["id"], bool):
            raise DatasetError(f"{path}: categories[{i}]: id must be an integer, got {cat['id']!r}")
        cats.append(cat["id"])
    truth = SacoTruth(str(path), cats)
    for i, img in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        require_keys(img, ("id", "height", "width", "is_instance_exhaustive"), where)
        if not _is_key(img["id"]):
            raise DatasetError(f"{where}: id must be a number or a string, got {img['id']!r}")
        if img["id"] in truth:
            raise DatasetError(f"{where}: duplicate image id {img['id']!r}")
        h, w = int(_number(img["height"], where, "height")), int(_number(img["width"], where, "width"))
        try:  # the phrase rules of training: a pair fit would refuse is refused here too
            phrase = check_phrase(img.get("text_input"))
        except FormatProblem as err:
            raise DatasetError(f"{where}: text_input: {err}") from None
        truth[img["id"]] = PairTruth(img["id"], phrase, h, w, bool(img["is_instance_exhaustive"]),
                                     file_name=str(img.get("file_name", "")))
    _add_annotations(truth, data["annotations"], str(path))
    return truth


def _verify(batch: RleBatch) -> None:
    """Raise `DatasetError` naming the entry of the first corrupt RLE the batch holds."""
    problem = batch.first_problem()
    if problem is not None:
        raise DatasetError(f"{problem[0]}: {problem[1]}")


def _add_annotations(truth: SacoTruth, anns: list, path: str) -> None:
    """Attach the annotations to their pairs, in the official order (sorted category id, then file order)."""
    batch = RleBatch()
    order = {c: r for r, c in enumerate(truth.category_ids)}
    sole = truth.category_ids[0] if len(truth.category_ids) == 1 else None  # implied when an annotation omits it
    grouped: dict[PairId, list[tuple[int, int, list[float] | None, dict | None, bool]]] = {}
    for i, ann in enumerate(anns):
        where = f"{path}: annotations[{i}]"
        require_keys(ann, ("image_id",) if sole is not None else ("image_id", "category_id"), where)
        if "category_id" not in ann:
            ann = {**ann, "category_id": sole}
        pair = truth.get(ann["image_id"]) if _is_key(ann["image_id"]) else None
        if pair is None:
            raise DatasetError(f"{where}: image_id {ann['image_id']!r} is not in images[]")
        if ann["category_id"] not in order:
            truth.num_dropped_category += 1  # official: only the GT categories are looped over
            continue
        box = _box(ann["bbox"], where) if "bbox" in ann else None
        rle = _rle(ann["segmentation"], pair.height, pair.width, where, batch) if "segmentation" in ann else None
        if box is None and rle is None:
            raise DatasetError(f"{where}: needs a bbox or a segmentation")
        # Official: gt['ignore'] = 'iscrowd' in gt and gt['iscrowd'] (truthiness).
        grouped.setdefault(ann["image_id"], []).append((order[ann["category_id"]], i, box, rle, bool(ann.get("iscrowd", 0))))
    _verify(batch)
    for pid, items in grouped.items():
        items.sort(key=lambda it: it[0])  # stable: file order within a category
        _fill(truth[pid], items, path)


def _fill(pair: PairTruth, items: list, path: str) -> None:
    """Set the boxes, masks and crowd flags of one pair."""
    has_mask = [it[3] is not None for it in items]
    if any(has_mask) and not all(has_mask):
        raise DatasetError(f"{path}: annotations[{items[has_mask.index(False)][1]}]: pair {pair.pair_id} mixes "
                           "annotations with and without segmentation")  # fmt: skip
    pair.masks = [it[3] for it in items] if all(has_mask) else []
    boxes = [it[2] if it[2] is not None else mask_utils.toBbox(it[3]).tolist() for it in items]
    pair.boxes_xywh = np.asarray(boxes, np.float64).reshape(-1, 4)
    pair.iscrowd = np.asarray([it[4] for it in items], bool)


def load_predictions(path: str | Path, truth: Mapping[PairId, PairTruth]) -> PredictionSet:
    """Read COCO-results predictions; a `category_id` outside the GT categories is dropped and counted."""
    with gc_paused():
        return parse_predictions(read_json(path, "predictions"), truth, path)


def parse_predictions(data: Any, truth: Mapping[PairId, PairTruth], path: str | Path) -> PredictionSet:
    """`load_predictions` on an already parsed (and joined) list; `path` names it in messages."""
    if not isinstance(data, list):
        raise DatasetError(f"{path}: a COCO results file must be a JSON list of predictions")
    cats = getattr(truth, "category_ids", None)
    order = {c: r for r, c in enumerate(cats)} if cats is not None else None
    out = PredictionSet(str(path))
    out.num_predictions = len(data)
    grouped: dict[PairId, list[tuple[int, float, list[float], dict | None]]] = {}
    batch = RleBatch()
    for i, ann in enumerate(data):
        where = f"{path}: [{i}]"
        require_keys(ann, ("image_id", "category_id", "score"), where)
        pair = truth.get(ann["image_id"]) if _is_key(ann["image_id"]) else None
        if pair is None:
            raise DatasetError(f"{where}: image_id {ann['image_id']!r} is not a pair of the GT file")
        score = _number(ann["score"], where, "score")
        if not 0.0 <= score <= 1.0:
            raise DatasetError(f"{where}: score {score} is outside [0, 1]")
        if "bbox" not in ann and "segmentation" not in ann:
            raise DatasetError(f"{where}: needs a bbox or a segmentation")
        rank = 0 if order is None else order.get(ann["category_id"], -1)
        if rank < 0:
            out.num_dropped_category += 1
            continue
        grouped.setdefault(ann["image_id"], []).append((rank, score, *_pred_geometry(ann, pair, where, batch)))
    _verify(batch)
    for pid, items in grouped.items():
        items.sort(key=lambda it: it[0])  # official order: sorted category id, then file order
        out[pid] = PairPrediction(
            pid, np.asarray([it[1] for it in items], np.float64),
            np.asarray([it[2] for it in items], np.float64).reshape(-1, 4), [it[3] for it in items],
        )  # fmt: skip
    return out


def _pred_geometry(ann: dict, pair: PairTruth, where: str, batch: RleBatch) -> tuple[list[float], dict]:
    """(box, mask) of one prediction, completed as the official `loadRes` does when one is missing."""
    box = _box(ann["bbox"], where) if "bbox" in ann else None
    if "segmentation" in ann:
        rle = _rle(ann["segmentation"], pair.height, pair.width, where, batch)
    else:  # official loadRes: the box, as a polygon, is the mask
        x1, y1, bw, bh = box
        rle = _rle([[x1, y1, x1, y1 + bh, x1 + bw, y1 + bh, x1 + bw, y1]], pair.height, pair.width, where)
    if box is None:  # official loadRes: toBbox of the mask
        box = mask_utils.toBbox(rle).tolist()
    return box, rle
