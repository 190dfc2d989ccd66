"""COCO ground truth as image-phrase pairs, COCO AP through pycocotools, and the input checks both formats share.

A COCO file (categories with names, images without `text_input`) is evaluated two ways:

* the cgF1 family, on every image x every category: the category name is the phrase, and a category absent
  from an image is a negative phrase (as in the official fine-tuning evaluations); COCO files are exhaustive;
* COCO AP, by pycocotools' own `COCOeval` on the same data, so the numbers equal its `stats`.

Every problem with an input file is a `DatasetError` with one line naming the file (and the entry).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from adapt.evaluation.pairs import PairId, PairPrediction, PairTruth
from sam3_model.errors import DatasetError
from sam3_model.formats import (
    CategoryChoice,
    CategoryRules,
    FormatProblem,
    RleBatch,
    check_rle,
    read_categories,
    require_keys,
    str_counts,
)

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")

# --------------------------------------------------------------------------------------------- reading


def image_sizes(gt_json: Mapping[str, Any], source: str = "ground truth") -> dict[Any, tuple[int, int]]:
    """Image id -> (height, width) of a COCO-style ground truth (SA-Co or COCO), checking the required keys."""
    images = _list_field(gt_json, "images", source)
    sizes: dict[Any, tuple[int, int]] = {}
    for i, img in enumerate(images):
        where = f"{source}: images[{i}]"
        require_keys(img, ("id", "height", "width"), where)
        h, w = img["height"], img["width"]
        if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
            raise DatasetError(f"{where}: height and width must be positive integers, got {h!r} x {w!r}")
        if not _is_key(img["id"]):
            raise DatasetError(f"{where}: id must be a number or a string, got {img['id']!r}")
        if img["id"] in sizes:
            raise DatasetError(f"{where}: duplicate image id {img['id']!r}")
        sizes[img["id"]] = (h, w)
    return sizes


# --------------------------------------------------------------------------------------------- ground truth


def coco_pairs(
    gt_json: Mapping[str, Any], source: str = "ground truth"
) -> tuple[dict[PairId, PairTruth], dict[tuple[Any, Any], PairId]]:
    """Every image x every category as a pair (ids 1..N in sorted order), and the (image_id, category_id) map."""
    sizes = image_sizes(gt_json, source)
    names = _category_names(gt_json, source)
    by_key = _annotations_by_key(gt_json, sizes, names, source)
    box_only = not any(ann.get("_rle") is not None for anns in by_key.values() for ann in anns)
    keys = sorted(((i, c) for i in sizes for c in names), key=lambda k: (_sort_key(k[0]), _sort_key(k[1])))
    pair_map = {key: pid for pid, key in enumerate(keys, start=1)}
    truths = {
        pid: _pair_truth(pid, names[c], sizes[i], by_key.get((i, c), []), box_only) for (i, c), pid in pair_map.items()
    }
    return truths, pair_map


def _category_names(gt_json: Mapping[str, Any], source: str) -> dict[Any, str]:
    """Category id -> name, checking the required keys, the phrases and that names differ (as training does)."""
    return _categories(gt_json, CategoryRules(keep_placeholders=True), source).kept


def _categories(gt_json: Mapping[str, Any], rules: CategoryRules, source: str) -> CategoryChoice:
    """The file's categories read as training reads them (`sam3_model.formats.read_categories`)."""
    annotations = gt_json.get("annotations") if isinstance(gt_json.get("annotations"), list) else []
    try:
        return read_categories(_list_field(gt_json, "categories", source), annotations, rules, source)
    except FormatProblem as err:
        raise DatasetError(str(err)) from None


def apply_category_rules(gt_json: Mapping[str, Any], rules: CategoryRules,
                         source: str = "ground truth") -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """The ground truth without the categories `rules` leave out (and their annotations), and a note for each.

    Training reads the same file with the same rules, so a Roboflow root category or labelme's `_background_`
    is not a phrase in either.
    """
    entries = _list_field(gt_json, "categories", source)
    annotations = gt_json.get("annotations") if isinstance(gt_json.get("annotations"), list) else []
    choice = _categories(gt_json, rules, source)
    if not choice.dropped:
        return dict(gt_json), []
    if not choice.kept:
        raise DatasetError(f"{source}: no category is left once {', '.join(map(repr, choice.dropped))} are left out")
    names = {c["id"]: c["name"] for c in entries}
    kept = [c for c in entries if c["id"] in choice.kept]
    dropped_anns = [a for a in annotations if isinstance(a, Mapping) and _is_key(a.get("category_id"))
                    and a.get("category_id") in choice.dropped]
    notes = choice.notes(source, names)
    if dropped_anns:
        notes.append(f"{source}: left out {len(dropped_anns)} annotations of those categories")
    filtered = {**gt_json, "categories": kept,
                "annotations": [a for a in annotations if not any(a is d for d in dropped_anns)]}
    return filtered, notes


def _annotations_by_key(
    gt_json: Mapping[str, Any], sizes: Mapping[Any, tuple[int, int]], names: Mapping[Any, str], source: str
) -> dict[tuple[Any, Any], list[dict]]:
    """Checked annotations grouped by (image_id, category_id), each with its mask as `_rle` (None if it has none)."""
    groups: dict[tuple[Any, Any], list[dict]] = defaultdict(list)
    batch = RleBatch()
    for i, ann in enumerate(_list_field(gt_json, "annotations", source)):
        where = f"{source}: annotations[{i}]"
        require_keys(ann, ("image_id", "category_id", "bbox"), where)
        if not _is_key(ann["image_id"]) or ann["image_id"] not in sizes:
            raise DatasetError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        if not _is_key(ann["category_id"]) or ann["category_id"] not in names:
            raise DatasetError(f"{where}: category_id {ann['category_id']!r} is not in 'categories'")
        _check_bbox(ann["bbox"], where)
        h, w = sizes[ann["image_id"]]
        rle = _gt_rle(ann.get("segmentation"), h, w, where, batch)
        groups[(ann["image_id"], ann["category_id"])].append({**ann, "_rle": rle})
    _verify(batch)
    return groups


def _gt_rle(seg: Any, h: int, w: int, where: str, batch: RleBatch) -> dict | None:
    """A ground-truth segmentation (polygons, uncompressed or compressed RLE) as compressed RLE; None if absent."""
    if seg is None or (isinstance(seg, list) and not seg):
        return None
    if isinstance(seg, dict):
        return _checked_rle(seg, h, w, where, batch)
    polygons = isinstance(seg, list) and all(isinstance(p, list) and len(p) >= 4 and len(p) % 2 == 0 for p in seg)
    if polygons and all(_is_number(v) for p in seg for v in p):
        return str_counts(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
    raise DatasetError(f"{where}: segmentation must be polygons (lists of x, y) or an RLE {{size, counts}}")


def _checked_rle(seg: Mapping[str, Any], h: int, w: int, where: str, batch: RleBatch) -> dict:
    """`sam3_model.formats.check_rle` with the file and entry in the message (runs queued in `batch`)."""
    try:
        return check_rle(seg, h, w, batch, where)
    except FormatProblem as err:
        raise DatasetError(f"{where}: {err}") from None


def _verify(batch: RleBatch) -> None:
    """Raise `DatasetError` naming the entry of the first corrupt RLE the batch holds."""
    problem = batch.first_problem()
    if problem is not None:
        raise DatasetError(f"{problem[0]}: {problem[1]}")


def _pair_truth(pid: PairId, phrase: str, size: tuple[int, int], anns: list[dict], box_only: bool) -> PairTruth:
    """One pair's ground truth; without a mask an instance gets its box as mask (unless the file is box-only)."""
    h, w = size
    boxes = np.array([ann["bbox"] for ann in anns], dtype=np.float64).reshape(-1, 4)
    masks = [] if box_only else [ann["_rle"] or _box_rle(ann["bbox"], h, w) for ann in anns]
    crowd = np.array([bool(ann.get("iscrowd", 0)) for ann in anns], dtype=bool)
    return PairTruth(pid, phrase, h, w, exhaustive=True, boxes_xywh=boxes, masks=masks, iscrowd=crowd)


def _box_rle(bbox: Sequence[float], h: int, w: int) -> dict:
    """The compressed RLE of an xywh box."""
    return str_counts(mask_utils.frPyObjects(np.asarray([bbox], dtype=np.float64), h, w)[0])


# --------------------------------------------------------------------------------------------- predictions


def check_predictions(
    preds: Any,
    path: str | os.PathLike[str],
    sizes: Mapping[Any, tuple[int, int]],
    category_ids: Collection[Any] | None = None,
) -> None:
    """Check a COCO results list against the ground truth's image sizes; entries are numbered from 0."""
    if not isinstance(preds, list):
        raise DatasetError(f"{path}: predictions must be a JSON list of COCO results, got {type(preds).__name__}")
    batch = RleBatch()
    for i, entry in enumerate(preds):
        _check_entry(entry, f"{path}: entry {i}", sizes, category_ids, batch)
    _verify(batch)


def _check_entry(
    entry: Any, where: str, sizes: Mapping[Any, tuple[int, int]], category_ids: Collection[Any] | None,
    batch: RleBatch,
) -> None:
    """Check one COCO result: keys, score, image and category ids, box, RLE size."""
    require_keys(entry, ("image_id", "category_id", "score"), where)
    if "bbox" not in entry and "segmentation" not in entry:
        raise DatasetError(f"{where}: has neither 'bbox' nor 'segmentation'")
    score = entry["score"]
    if not _is_number(score) or not math.isfinite(score):
        raise DatasetError(f"{where}: score {score!r} is not a finite number")
    if not 0.0 <= score <= 1.0:
        raise DatasetError(f"{where}: score {score} is outside [0, 1]")
    if not _is_key(entry["image_id"]) or entry["image_id"] not in sizes:
        raise DatasetError(f"{where}: image_id {entry['image_id']!r} is not in the ground truth")
    if category_ids is not None and (not _is_key(entry["category_id"]) or entry["category_id"] not in category_ids):
        raise DatasetError(f"{where}: category_id {entry['category_id']!r} is not a ground-truth category")
    if "bbox" in entry:
        _check_bbox(entry["bbox"], where)
    if "segmentation" in entry:
        seg = entry["segmentation"]
        if not isinstance(seg, dict) or not isinstance(seg.get("counts"), str):
            raise DatasetError(f"{where}: segmentation must be a compressed RLE {{size, counts: str}}")
        _check_rle_size(seg, *sizes[entry["image_id"]], where, image_id=entry["image_id"])
        _checked_rle(seg, *sizes[entry["image_id"]], where, batch)


def coco_predictions(
    pred_json: Iterable[Mapping[str, Any]], pair_map: Mapping[tuple[Any, Any], PairId]
) -> dict[PairId, PairPrediction]:
    """Group checked COCO results by (image_id, category_id) into pairs; every pair gets an entry, maybe empty.

    A result whose category is not in the ground truth is dropped, as pycocotools and the official cgF1 do.
    """
    groups: dict[PairId, list[Mapping[str, Any]]] = {pid: [] for pid in pair_map.values()}
    for entry in pred_json:
        pid = pair_map.get((entry["image_id"], entry["category_id"])) if _is_key(entry["category_id"]) else None
        if pid is not None:
            groups[pid].append(entry)
    return {pid: _pair_prediction(pid, entries) for pid, entries in groups.items()}


def _pair_prediction(pid: PairId, entries: Sequence[Mapping[str, Any]]) -> PairPrediction:
    """One pair's predictions; masks only when every entry has one, a missing box is the mask's box."""
    with_masks = bool(entries) and all("segmentation" in e for e in entries)
    masks = [str_counts(dict(e["segmentation"])) for e in entries] if with_masks else []
    boxes = [e["bbox"] if "bbox" in e else mask_utils.toBbox(e["segmentation"]).tolist() for e in entries]
    return PairPrediction(
        pid,
        scores=np.array([float(e["score"]) for e in entries], dtype=np.float64),
        boxes_xywh=np.array(boxes, dtype=np.float64).reshape(-1, 4),
        masks=masks,
    )


# --------------------------------------------------------------------------------------------- COCO AP


def coco_ap(
    gt_path_or_json: str | os.PathLike[str] | Mapping[str, Any],
    pred_json: Sequence[Mapping[str, Any]],
    iou_type: str = "bbox",
    pred_source: str = "predictions",
) -> dict[str, float]:
    """pycocotools' COCOeval `stats` as AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl.

    Values are COCOeval's own, -1 included (no ground truth in that area range). An empty prediction list,
    which `loadRes` cannot take, is evaluated as an empty result set: AP 0 where there is ground truth.
    """
    if iou_type not in IOU_TYPES:
        raise DatasetError(f"iou type {iou_type!r} is not one of {', '.join(IOU_TYPES)}")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = _coco_api(gt_path_or_json)
        gt_source = "ground truth" if isinstance(gt_path_or_json, Mapping) else str(gt_path_or_json)
        _check_ap_inputs(gt, pred_json, iou_type, gt_source, pred_source)
        dt = gt.loadRes(_prepared_results(pred_json)) if pred_json else _empty_results(gt)
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {key: float(value) for key, value in zip(AP_KEYS, evaluator.stats)}


def _coco_api(gt_path_or_json: str | os.PathLike[str] | Mapping[str, Any]) -> COCO:
    """A pycocotools COCO on a file, or on a copy of a loaded ground truth (COCOeval rewrites segmentations)."""
    if isinstance(gt_path_or_json, Mapping):
        gt = COCO()
        gt.dataset = copy.deepcopy(dict(gt_path_or_json))
        gt.createIndex()
        return gt
    return COCO(str(gt_path_or_json))


def _check_ap_inputs(
    gt: COCO, pred_json: Sequence[Mapping[str, Any]], iou_type: str, gt_source: str, pred_source: str
) -> None:
    """Mask AP needs masks on both sides: refuse rather than score boxes as masks."""
    if iou_type != "segm":
        return
    missing = next((i for i, a in enumerate(gt.dataset.get("annotations", [])) if not a.get("segmentation")), None)
    if missing is not None:
        raise DatasetError(f"{gt_source}: annotations[{missing}]: segm AP needs a segmentation on every annotation")
    missing = next((i for i, e in enumerate(pred_json) if "segmentation" not in e), None)
    if missing is not None:
        raise DatasetError(f"{pred_source}: entry {missing}: segm AP needs a 'segmentation' on every result")


def _prepared_results(pred_json: Sequence[Mapping[str, Any]]) -> list[dict]:
    """A copy for `loadRes` (it writes ids and areas); when only some results have a box, the rest get the mask's."""
    results = [dict(e) for e in copy.deepcopy(list(pred_json))]
    if any("bbox" in r for r in results):
        for r in (r for r in results if "bbox" not in r):
            r["bbox"] = mask_utils.toBbox(r["segmentation"]).tolist()
    return results


def _empty_results(gt: COCO) -> COCO:
    """An empty result set over the ground truth's images and categories (what `loadRes([])` would mean)."""
    dt = COCO()
    dt.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": copy.deepcopy(gt.dataset.get("categories", [])),
        "annotations": [],
    }
    dt.createIndex()
    return dt


# --------------------------------------------------------------------------------------------- small checks


def _list_field(data: Any, key: str, source: str) -> list:
    """`data[key]`, which must be a list."""
    if not isinstance(data, Mapping) or key not in data:
        raise DatasetError(f"{source}: missing required key '{key}'")
    if not isinstance(data[key], list):
        raise DatasetError(f"{source}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data[key]


def _check_bbox(bbox: Any, where: str) -> None:
    """An xywh box: four finite numbers, width and height not negative."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) and math.isfinite(v) for v in bbox)):
        raise DatasetError(f"{where}: bbox must be four finite numbers [x, y, w, h], got {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise DatasetError(f"{where}: bbox {bbox} has a negative width or height")


def _check_rle_size(seg: Mapping[str, Any], h: int, w: int, where: str, image_id: Any = None) -> None:
    """An RLE with `counts` and a `size` equal to the image's [height, width]."""
    if "counts" not in seg or "size" not in seg:
        raise DatasetError(f"{where}: RLE segmentation needs 'size' and 'counts'")
    size = seg["size"]
    if not (isinstance(size, list) and len(size) == 2 and list(size) == [h, w]):
        image = "the image" if image_id is None else f"image {image_id!r}"
        raise DatasetError(f"{where}: mask size {size!r} (height, width) disagrees with {image}'s [{h}, {w}]")


def _is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_key(value: Any) -> bool:
    """A JSON value that can be an id (a number or a string; a list or object cannot)."""
    return isinstance(value, (int, float, str))


def _is_int(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _sort_key(value: Any) -> tuple[int, Any]:
    """Ids sort numerically, and any non-integer ids after them as text."""
    return (0, value) if _is_number(value) else (1, str(value))
