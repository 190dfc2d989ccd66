"""`sam3-adapt eval` end to end: SA-Co and COCO ground truth, the report, and bad input exiting with code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sam3_adapt.cli import main
from sam3_model.records import encode_mask

H, W = 40, 60


def _square(x0: int, y0: int, side: int) -> dict:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0 : y0 + side, x0 : x0 + side] = 1
    return encode_mask(mask)


@pytest.fixture
def saco_files(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "height": H, "width": W, "text_input": "cat",
               "is_instance_exhaustive": True, "is_pixel_exhaustive": True},
              {"id": 2, "file_name": "a.jpg", "height": H, "width": W, "text_input": "dog",
               "is_instance_exhaustive": True, "is_pixel_exhaustive": True}]
    gt_box = [10 / W, 10 / H, 20 / W, 20 / H]  # SA-Co: xywh normalised
    gt = {"images": images, "categories": [{"id": 1, "name": "object"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": gt_box, "area": 400,
                           "iscrowd": 0, "segmentation": _square(10, 10, 20)}]}
    preds = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": gt_box, "segmentation": _square(10, 10, 20)},
             {"image_id": 2, "category_id": 1, "score": 0.4, "bbox": gt_box, "segmentation": _square(10, 10, 20)}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    return tmp_path / "gt.json", tmp_path / "pred.json"


def test_eval_saco_perfect_predictions(saco_files, tmp_path, capsys):
    gt, pred = saco_files
    out, report = tmp_path / "metrics.json", tmp_path / "report.md"
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "--out", str(out), "--report", str(report)]) == 0
    metrics = json.loads(out.read_text())
    # pair 1: one perfect match (TP at every threshold); pair 2: its only prediction is below 0.5 -> true negative
    assert metrics["cgF1"] == pytest.approx(1.0, abs=1e-3) and metrics["IL_MCC"] == pytest.approx(1.0, abs=1e-5)
    for key in ("cgF1", "cgF1@0.5", "cgF1@0.75", "pmF1", "pmF1@0.5", "pmF1@0.75", "IL_MCC"):
        assert key in metrics
    assert metrics["IL_TP"] == 1 and metrics["IL_TN"] == 1 and "AP" not in metrics
    assert report.read_text().count("|") > 10 and any(tmp_path.glob("*.png"))
    assert "saco segm: cgF1" in capsys.readouterr().out


def test_eval_coco_ground_truth_adds_ap(tmp_path):
    gt = {"images": [{"id": 7, "file_name": "a.jpg", "height": H, "width": W}],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0, "segmentation": _square(10, 10, 20)}]}
    preds = [{"image_id": 7, "category_id": 1, "score": 0.9, "bbox": [10, 10, 20, 20],
              "segmentation": _square(10, 10, 20)}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    out = tmp_path / "m.json"
    assert main(["eval", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json"),
                 "--iou-type", "bbox", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["num_pairs"] == 2 and metrics["IL_TN"] == 1  # "dog" is absent: a negative phrase


@pytest.mark.parametrize("corrupt,needle", [
    (lambda gt, pred: pred.unlink(), "no such predictions file"),
    (lambda gt, pred: pred.write_text(pred.read_text()[:40]), "truncated"),
    (lambda gt, pred: pred.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 1.3,
                                                    "bbox": [0, 0, 0.1, 0.1]}])), "outside [0, 1]"),
    (lambda gt, pred: gt.write_text(json.dumps({"images": [{"id": 1}]})), "gt.json"),
])
def test_eval_bad_input_exits_2_with_one_line(saco_files, tmp_path, capsys, corrupt, needle):
    gt, pred = saco_files
    corrupt(gt, pred)
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sam3-adapt: error:") and "\n" not in err and needle in err, err
    assert not (tmp_path / "m.json").exists()
