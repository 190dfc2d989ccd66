"""COCO ground truth as pairs, COCO AP equal to pycocotools, input checks, and the markdown report."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from adapt.evaluation.coco import (
    AP_KEYS,
    check_predictions,
    coco_ap,
    coco_pairs,
    coco_predictions,
    image_sizes,
)
from sam3_model.formats import detect_format, read_json
from adapt.evaluation.report import phrase_rows, write_report
from sam3_model.errors import DatasetError


def rle(mask: np.ndarray) -> dict:
    """Compressed RLE with str counts."""
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(out["size"]), "counts": out["counts"].decode("ascii")}


def small_coco() -> dict:
    """2 images x 3 categories: a polygon, an uncompressed-RLE crowd, a box-only... all in pixels."""
    crowd = np.zeros((20, 30), dtype=np.uint8)
    crowd[5:15, 10:25] = 1
    uncompressed = {"size": [20, 30], "counts": [int(v) for v in _runs(crowd)]}
    return {
        "images": [{"id": 7, "height": 20, "width": 30}, {"id": 3, "height": 16, "width": 16}],
        "categories": [{"id": 2, "name": "dog"}, {"id": 1, "name": "cat"}, {"id": 5, "name": "bird"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [2, 2, 6, 4], "area": 24, "iscrowd": 0,
             "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]]},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [10, 5, 15, 10], "area": 150, "iscrowd": 1,
             "segmentation": uncompressed},
            {"id": 3, "image_id": 3, "category_id": 2, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0,
             "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]},
        ],
    }  # fmt: skip


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts (column-major, starting with zeros)."""
    flat = mask.flatten(order="F")
    runs, current, count = [], 0, 0
    for v in flat:
        if v != current:
            runs.append(count)
            current, count = v, 0
        count += 1
    return runs + [count]


def random_dataset(seed: int = 0, images: int = 6, cats: int = 3) -> tuple[dict, list[dict]]:
    """A random COCO ground truth with masks, and noisy predictions of it with boxes and masks."""
    rng = np.random.default_rng(seed)
    gt = {"images": [], "categories": [{"id": c + 1, "name": f"thing {c}"} for c in range(cats)], "annotations": []}
    preds: list[dict] = []
    for i in range(1, images + 1):
        h, w = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        gt["images"].append({"id": i, "height": h, "width": w, "file_name": f"{i}.jpg"})
        for _ in range(int(rng.integers(0, 5))):
            x, y = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
            bw, bh = int(rng.integers(3, w - x)), int(rng.integers(3, h - y))
            mask = np.zeros((h, w), dtype=np.uint8)
            mask[y : y + bh, x : x + bw] = 1
            cat = int(rng.integers(1, cats + 1))
            crowd = int(rng.random() < 0.1)
            gt["annotations"].append(
                {"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, bw, bh],
                 "area": bw * bh, "iscrowd": crowd, "segmentation": rle(mask)}
            )  # fmt: skip
            if rng.random() < 0.8:
                dx, dy = int(rng.integers(-2, 3)), int(rng.integers(-2, 3))
                pm = np.zeros((h, w), dtype=np.uint8)
                pm[max(y + dy, 0) : y + dy + bh, max(x + dx, 0) : x + dx + bw] = 1
                box = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(pm))).tolist()
                preds.append({"image_id": i, "category_id": cat, "bbox": box, "segmentation": rle(pm),
                              "score": float(rng.random())})  # fmt: skip
        for _ in range(int(rng.integers(0, 3))):  # false positives, possibly on absent categories
            x, y = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
            pm = np.zeros((h, w), dtype=np.uint8)
            pm[y : y + 6, x : x + 6] = 1
            preds.append({"image_id": i, "category_id": int(rng.integers(1, cats + 1)), "bbox": [x, y, 6, 6],
                          "segmentation": rle(pm), "score": float(rng.random())})  # fmt: skip
    return gt, preds


def direct_stats(gt: dict, preds: list[dict], iou_type: str) -> np.ndarray:
    """pycocotools' own COCOeval stats, computed the usual way."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(preds)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


# --------------------------------------------------------------------------------------------- format, pairs


def test_detect_format() -> None:
    assert detect_format(small_coco()) == "coco"
    saco = {"images": [{"id": 1, "text_input": "a dog", "height": 4, "width": 4}], "categories": [{"id": 1}]}
    assert detect_format(saco) == "saco"
    with pytest.raises(DatasetError, match="cannot tell the format"):
        detect_format({"images": [{"id": 1}], "annotations": []}, source="x.json")
    with pytest.raises(DatasetError, match="x.json"):
        detect_format([1, 2], source="x.json")


def test_coco_pairs_every_image_by_every_category() -> None:
    gt = small_coco()
    truths, pair_map = coco_pairs(gt)
    keys = [(i, c) for i in (3, 7) for c in (1, 2, 5)]  # sorted ids, 1..N
    assert pair_map == {key: pid for pid, key in enumerate(keys, start=1)}
    assert set(truths) == set(range(1, 7))
    cat7 = truths[pair_map[(7, 1)]]
    assert (cat7.phrase, cat7.height, cat7.width, cat7.exhaustive) == ("cat", 20, 30, True)
    assert cat7.iscrowd.tolist() == [False, True]
    np.testing.assert_array_equal(cat7.boxes_xywh, [[2, 2, 6, 4], [10, 5, 15, 10]])
    assert all(isinstance(m["counts"], str) and m["size"] == [20, 30] for m in cat7.masks)
    poly = mask_utils.decode(cat7.masks[0])
    assert poly.sum() == mask_utils.area(mask_utils.merge(mask_utils.frPyObjects([[2, 2, 8, 2, 8, 6, 2, 6]], 20, 30)))
    assert mask_utils.decode(cat7.masks[1])[5:15, 10:25].all() and mask_utils.decode(cat7.masks[1]).sum() == 150
    negatives = [pair_map[k] for k in [(7, 2), (7, 5), (3, 1), (3, 5)]]
    for pid in negatives:
        assert len(truths[pid].boxes_xywh) == 0 and truths[pid].masks == [] and truths[pid].exhaustive
    assert truths[pair_map[(3, 2)]].phrase == "dog" and len(truths[pair_map[(3, 2)]].masks) == 1
    assert image_sizes(gt) == {7: (20, 30), 3: (16, 16)}


def test_coco_pairs_box_only_file_has_no_masks() -> None:
    gt = small_coco()
    for ann in gt["annotations"]:
        ann["segmentation"] = []
    truths, _ = coco_pairs(gt)
    assert all(t.masks == [] for t in truths.values())


def test_coco_predictions_grouped_by_pair() -> None:
    gt = small_coco()
    _, pair_map = coco_pairs(gt)
    m = np.zeros((20, 30), dtype=np.uint8)
    m[2:6, 2:8] = 1
    preds = [
        {"image_id": 7, "category_id": 1, "bbox": [2, 2, 6, 4], "score": 0.9, "segmentation": rle(m)},
        {"image_id": 7, "category_id": 1, "score": 0.4, "segmentation": rle(m)},
        {"image_id": 3, "category_id": 5, "bbox": [0, 0, 2, 2], "score": 0.7},
        {"image_id": 3, "category_id": 99, "bbox": [0, 0, 2, 2], "score": 0.7},  # not a GT category: dropped
    ]
    check_predictions(preds[:3], "p.json", image_sizes(gt), category_ids={1, 2, 5})
    out = coco_predictions(preds, pair_map)
    assert set(out) == set(pair_map.values())
    cat = out[pair_map[(7, 1)]]
    np.testing.assert_allclose(cat.scores, [0.9, 0.4])
    np.testing.assert_allclose(cat.boxes_xywh, [[2, 2, 6, 4], [2, 2, 6, 4]])  # the 2nd from its mask
    assert len(cat.masks) == 2
    bird = out[pair_map[(3, 5)]]
    assert bird.masks == [] and bird.scores.tolist() == [0.7]
    assert sum(len(p.scores) for p in out.values()) == 3


# --------------------------------------------------------------------------------------------- COCO AP


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", [0, 1])
def test_coco_ap_equals_pycocotools(iou_type: str, seed: int, tmp_path: Path) -> None:
    gt, preds = random_dataset(seed)
    expected = direct_stats(gt, preds, iou_type)
    ours = coco_ap(gt, preds, iou_type)
    assert list(ours) == list(AP_KEYS) and list(ours)[:6] == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    np.testing.assert_array_equal([ours[k] for k in AP_KEYS], expected)
    assert ours["AP"] > 0
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    from_file = coco_ap(path, preds, iou_type)  # the file path gives the same numbers, and inputs are untouched
    assert from_file == ours
    assert gt == random_dataset(seed)[0] and preds == random_dataset(seed)[1]


def test_coco_ap_empty_predictions() -> None:
    gt, _ = random_dataset(0)
    ours = coco_ap(gt, [], "bbox")
    # what COCOeval itself reports for a result set matching nothing (a result on a category not in the GT)
    ignored = [{"image_id": 1, "category_id": 999, "bbox": [0, 0, 1, 1], "score": 0.5}]
    np.testing.assert_array_equal([ours[k] for k in AP_KEYS], direct_stats(gt, ignored, "bbox"))
    assert ours["AP"] == 0.0 and all(v in (0.0, -1.0) for v in ours.values())
    assert coco_ap(gt, [], "segm")["AP"] == 0.0


def test_coco_ap_segm_needs_masks() -> None:
    gt, preds = random_dataset(0)
    del preds[2]["segmentation"]
    with pytest.raises(DatasetError, match="preds.json: entry 2: segm AP needs"):
        coco_ap(gt, preds, "segm", pred_source="preds.json")
    coco_ap(gt, preds, "bbox")  # fine for box AP


# --------------------------------------------------------------------------------------------- bad input


def test_read_json_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(DatasetError, match=r"nope\.json: no such predictions file"):
        read_json(missing, "predictions")
    truncated = tmp_path / "cut.json"
    truncated.write_text('[{"image_id": 1, "score": 0.5},\n {"image_id": 2, "sc')
    with pytest.raises(DatasetError, match=r"cut\.json: .*not valid JSON.*line 2, column \d+.*truncated") as err:
        read_json(truncated, "predictions")
    assert "\n" not in str(err.value)
    good = tmp_path / "ok.json"
    good.write_text("[1, 2]")
    assert read_json(good, "predictions") == [1, 2]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1]}, "pred.json: entry 1: missing required key 'score'"),
        ({"image_id": 7, "category_id": 1, "score": 0.5}, "pred.json: entry 1: has neither 'bbox' nor 'segmentation'"),
        ({"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.3},
         r"pred.json: entry 1: score 1.3 is outside \[0, 1\]"),
        ({"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": float("nan")},
         "pred.json: entry 1: score nan is not a finite number"),
        ({"image_id": 7, "category_id": 1, "score": 0.5, "segmentation": rle(np.ones((16, 16)))},
         r"pred.json: entry 1: mask size \[16, 16\] \(height, width\) disagrees with image 7's \[20, 30\]"),
        ({"image_id": 42, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
         "pred.json: entry 1: image_id 42 is not in the ground truth"),
        ({"image_id": 7, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}, "pred.json: entry 1: bbox must be"),
    ],
)  # fmt: skip
def test_check_predictions_names_file_and_entry(entry: dict, message: str) -> None:
    sizes = image_sizes(small_coco())
    good = {"image_id": 3, "category_id": 2, "bbox": [0, 0, 2, 2], "score": 0.5}
    with pytest.raises(DatasetError, match=message):
        check_predictions([good, entry], "pred.json", sizes)


def test_check_predictions_unknown_category_optional() -> None:
    sizes = image_sizes(small_coco())
    preds = [{"image_id": 3, "category_id": 9, "bbox": [0, 0, 2, 2], "score": 0.5}]
    check_predictions(preds, "p.json", sizes)  # allowed by default (pycocotools ignores such results)
    with pytest.raises(DatasetError, match="p.json: entry 0: category_id 9 is not a ground-truth category"):
        check_predictions(preds, "p.json", sizes, category_ids={1, 2, 5})
    with pytest.raises(DatasetError, match="p.json: predictions must be a JSON list"):
        check_predictions({"annotations": []}, "p.json", sizes)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda g: g.pop("annotations"), "gt.json: missing required key 'annotations'"),
        (lambda g: g["images"][1].pop("height"), r"gt.json: images\[1\]: missing required key 'height'"),
        (lambda g: g["categories"][0].pop("name"), r"gt.json: categories\[0\]: a category needs 'id' and 'name'"),
        (lambda g: g["annotations"][2].update(image_id=99), r"gt.json: annotations\[2\]: image_id 99 is not in"),
        (lambda g: g["annotations"][1]["segmentation"].update(size=[30, 20]),
         r"gt.json: annotations\[1\]: RLE size \[30, 20\] \(height, width\) disagrees with the image's \[20, 30\]"),
    ],
)  # fmt: skip
def test_bad_ground_truth(edit, message: str) -> None:
    gt = small_coco()
    edit(gt)
    with pytest.raises(DatasetError, match=message):
        coco_pairs(gt, source="gt.json")


# --------------------------------------------------------------------------------------------- report


@dataclass
class StandInOutcome:
    pair_id: int
    phrase: str
    num_gt: int
    num_pred: int
    il_outcome: str
    local_f1: list[float] | None


@dataclass
class StandInResult:
    metrics: dict
    f1_by_threshold: dict
    per_pair: list = field(default_factory=list)


def stand_in() -> StandInResult:
    """Three phrases: 'cat' decent, 'dog' poor, 'bird' only negatives with a false positive."""
    per_pair = [
        StandInOutcome(1, "cat", 2, 2, "TP", [0.9] * 10),
        StandInOutcome(2, "cat", 0, 0, "TN", None),
        StandInOutcome(3, "dog", 1, 0, "FN", [0.0] * 10),
        StandInOutcome(4, "dog", 3, 1, "TP", list(np.linspace(0.5, 0.0, 10))),
        StandInOutcome(5, "bird", 0, 1, "FP", [0.0] * 10),
        StandInOutcome(6, "bird", 0, 0, "TN", None),
        StandInOutcome(7, "fish | eel", 1, 1, "TP", [1.0] * 10),
    ]
    curves = {"cgF1": list(np.linspace(0.6, 0.1, 10)), "pmF1": list(np.linspace(0.8, 0.2, 10)),
              "F1": list(np.linspace(0.7, 0.15, 10))}  # fmt: skip
    metrics = {"cgF1": 0.35, "cgF1@0.5": 0.6, "cgF1@0.75": 0.3, "pmF1": 0.5, "pmF1@0.5": 0.8, "pmF1@0.75": 0.45,
               "positive_macro_F1": -1.0, "IL_MCC": 0.41, "IL_TP": 3.0, "IL_FN": 1.0}  # fmt: skip
    return StandInResult(metrics, curves, per_pair)


def test_phrase_rows_worst_first() -> None:
    rows = phrase_rows(stand_in().per_pair)
    assert [r.phrase for r in rows] == ["dog", "bird", "cat", "fish | eel"]
    dog = rows[0]
    assert (dog.pairs, dog.positives, dog.gt_instances, dog.predictions) == (2, 2, 4, 1)
    assert dog.il == {"TP": 1, "FP": 0, "TN": 0, "FN": 1}
    assert dog.f1 == pytest.approx(0.125)
    assert rows[1].f1 is None and rows[1].il["FP"] == 1


def test_write_report(tmp_path: Path) -> None:
    result = stand_in()
    metrics = dict(result.metrics, AP=0.42, AP50=0.61, AP75=0.4, APs=-1.0, APm=0.3, APl=0.5)
    md = write_report(metrics, result, tmp_path / "out" / "report.md", "Adapted model on toy set")
    text = md.read_text()
    png = tmp_path / "out" / "report.png"
    assert md == tmp_path / "out" / "report.md" and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![F1 versus IoU threshold](report.png)" in text
    assert "| cgF1 | 35.0 | 60.0 | 30.0 |" in text and "| pmF1 | 50.0 | 80.0 | 45.0 |" in text
    assert "| positive_macro_F1 | n/a | – | – |" in text
    assert "| IL_MCC | 0.4100 |" in text
    assert "| COCO (x100) | AP | AP50 | AP75 | APs | APm | APl |\n|---|---:|---:|---:|---:|---:|---:|" in text
    assert "| value | 42.0 | 61.0 | 40.0 | n/a | 30.0 | 50.0 |" in text
    assert "| IL_TP | 3 |" in text
    phrase_lines = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 4 |"))]
    assert phrase_lines[0].startswith("| 1 | dog | 2 | 2 | 4 | 1 | 1 | 0 | 0 | 1 | 12.5 | 25.0 |")
    assert phrase_lines[1].startswith("| 4 | fish \\| eel |")
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left behind


def test_report_on_real_evaluation(tmp_path: Path) -> None:
    """COCO pairs and predictions go through the cgF1 evaluator into a report."""
    cgf1 = pytest.importorskip("adapt.evaluation.cgf1")
    gt, preds = random_dataset(2)
    truths, pair_map = coco_pairs(gt)
    result = cgf1.evaluate_pairs([truths], coco_predictions(preds, pair_map), iou_type="segm")
    metrics = {**result.metrics, **coco_ap(gt, preds, "segm")}
    md = write_report(metrics, result, tmp_path / "r.md", "random")
    text = md.read_text()
    assert "## Per phrase, worst first" in text and (tmp_path / "r.png").stat().st_size > 0
    assert len(result.per_pair) == len(pair_map)


def test_report_shows_a_negative_cgf1(tmp_path: Path) -> None:
    """cgF1 = pmF1 x IL_MCC is negative when the model says "present" where it is absent more than not."""
    result = stand_in()
    metrics = dict(result.metrics, cgF1=-0.2, **{"cgF1@0.5": -0.25, "cgF1@0.75": -1.0})
    text = write_report(metrics, result, tmp_path / "report.md", "negative").read_text()
    assert "| cgF1 | -20.0 | -25.0 | n/a |" in text  # -1 is the evaluator's "undefined"; -0.2 is a value
