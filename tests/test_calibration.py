"""Calibration against human labels: exact metrics and threshold choice, the human sample reader, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from sam3_model.errors import DatasetError
from sam3_model.records import decode_mask, encode_mask
from verifiers.base import EV_OPTIONS, MV_OPTIONS, UNPARSED, Verdict
from verifiers.calibration import calibrate, evaluate_verifiers, read_human_sample, write_calibration_report
from verifiers.geometric import GeometricMaskVerifier, TeacherConfidenceVerifier

H, W = 40, 50


def V(option: str, accept_score: float) -> Verdict:
    return Verdict("v", option, 1.0, accept_score, "")


# accept_score: 0.9 0.8 0.7 0.2 0.6 0.0; humans: A A R R A A
VERDICTS = [V("accept", 0.9), V("accept", 0.8), V("accept", 0.7), V("reject", 0.2), V("accept", 0.6),
            V(UNPARSED, 0.0)]
LABELS = ["accept", "accept", "reject", "reject", "accept", "accept"]


def test_metrics_at_the_verdicts_as_given():
    cal = calibrate(VERDICTS, LABELS, MV_OPTIONS)
    assert cal.n == 6 and cal.task == "mv"
    assert cal.accuracy == pytest.approx(4 / 6)
    assert (cal.precision, cal.recall, cal.f1) == (pytest.approx(0.75), pytest.approx(0.75), pytest.approx(0.75))
    assert cal.option_recall == {"accept": 0.75, "accept_as_text": None, "flag_label": None, "whole_image": None,
                                 "reject": 0.5}
    assert cal.confusion["accept"] == {"accept": 3, "accept_as_text": 0, "flag_label": 0, "whole_image": 0,
                                       "reject": 0, UNPARSED: 1}
    assert cal.confusion["reject"]["accept"] == 1 and cal.confusion["reject"]["reject"] == 1
    assert cal.pr_curve == [
        {"threshold": 0.6, "precision": 0.75, "recall": 0.75},
        {"threshold": 0.7, "precision": pytest.approx(2 / 3), "recall": 0.5},
        {"threshold": 0.8, "precision": 1.0, "recall": 0.5},
        {"threshold": 0.9, "precision": 1.0, "recall": 0.25},
    ]


@pytest.mark.parametrize("target, threshold, precision, recall", [
    (0.9, 0.8, 1.0, 0.5),     # the lowest threshold reaching 0.9: most recall at that precision
    (0.75, 0.6, 0.75, 0.75),  # reached exactly
    (0.7, 0.6, 0.75, 0.75),   # precision is not monotone: 0.7 fails at 0.7 but not at 0.6
    (1.0, 0.8, 1.0, 0.5),
])
def test_threshold_choice(target, threshold, precision, recall):
    cal = calibrate(VERDICTS, LABELS, MV_OPTIONS, target_precision=target)
    assert (cal.threshold, cal.threshold_precision, cal.threshold_recall) == (threshold, precision, recall)
    assert cal.threshold_note.startswith(f"lowest threshold with accept precision >= {target:g}: {threshold:.4f}")


def test_no_threshold_reaches_the_target():
    cal = calibrate([V("accept", 0.9), V("accept", 0.4), V("reject", 0.1)], ["reject", "accept", "reject"],
                    MV_OPTIONS, target_precision=0.9)
    assert cal.threshold is None and cal.threshold_precision is None
    assert cal.precision == 0.5 and cal.recall == 1.0
    assert cal.threshold_note == "no threshold reaches accept precision 0.9; the best is 0.500 at threshold 0.4000"
    none = calibrate([V("reject", 0.3), V("reject", 0.1)], ["accept", "reject"], EV_OPTIONS)
    assert none.task == "ev" and none.precision is None and none.f1 is None and none.recall == 0.0
    assert none.threshold is None and none.threshold_note == "the verifier accepts nothing: no threshold to pick"
    assert none.pr_curve == []


def test_calibrate_rejects_mismatched_input():
    with pytest.raises(ValueError, match="2 verdicts for 1 labels"):
        calibrate([V("accept", 1.0)] * 2, ["accept"], MV_OPTIONS)
    with pytest.raises(ValueError, match="labels \\['acept'\\]"):
        calibrate([V("accept", 1.0)], ["acept"], MV_OPTIONS)
    with pytest.raises(ValueError, match="verdict options \\['accept_as_text'\\]"):
        calibrate([V("accept_as_text", 1.0)], ["accept"], EV_OPTIONS)


def rect(x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


@pytest.fixture
def sample_dir(tmp_path):
    Image.new("RGB", (W, H), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (W, H), (10, 200, 10)).save(tmp_path / "imgs" / "b.png")
    (tmp_path / "broken.png").write_text("not a png")
    return tmp_path


def human_data() -> dict:
    full = rect(0, 0, W, H)
    uncompressed = {"size": [H, W], "counts": [0, H * W]}  # column-major run lengths: all foreground
    return {
        "mask": [
            {"file_name": "a.png", "phrase": "red square", "mask": encode_mask(rect(10, 5, 30, 25)), "label": "accept"},
            {"file_name": "a.png", "phrase": "red square", "mask": uncompressed, "box_xyxy_px": [0, 0, W, H],
             "score": 0.4, "negatives": ["blue square"], "label": "reject"},
            {"file_name": "imgs/b.png", "phrase": "green dot", "mask": encode_mask(rect(3, 3, 4, 4)), "label": "accept"},
        ],
        "exhaustivity": [
            {"file_name": "a.png", "phrase": "red square", "instances": [{"mask": encode_mask(rect(10, 5, 30, 25))}],
             "presence": 0.9, "label": "accept"},
            {"file_name": "imgs/b.png", "phrase": "cat", "instances": [], "presence": 0.8, "label": "reject"},
            {"file_name": "imgs/b.png", "phrase": "dog", "instances": [], "presence": 0.1,
             "candidates": [{"mask": encode_mask(full), "score": 0.3}], "label": "reject"},
        ],
    }


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_read_human_sample(sample_dir, suffix):
    path = sample_dir / f"human{suffix}"
    data = human_data()
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    sample = read_human_sample(path)
    assert [label for _, label in sample.mask] == ["accept", "reject", "accept"]
    assert [label for _, label in sample.exhaustivity] == ["accept", "reject", "reject"]
    (first, _), (second, _), (third, _) = sample.mask
    assert first.image is second.image is sample.exhaustivity[0][0].image  # one image object per file
    assert first.image.getpixel((0, 0)) == (200, 10, 10) and third.image.getpixel((0, 0)) == (10, 200, 10)
    assert first.instances[0].box_xyxy_px == (10.0, 5.0, 30.0, 25.0)  # from the mask
    assert first.instances[0].score == 1.0 and first.key == "a.png: red square"
    assert decode_mask(second.instances[0].mask).all()  # the uncompressed RLE, re-encoded
    assert second.instances[0].score == 0.4 and second.negatives == ["blue square"]
    ev_items = [item for item, _ in sample.exhaustivity]
    assert [len(i.instances) for i in ev_items] == [1, 0, 0]
    assert [i.presence for i in ev_items] == [0.9, 0.8, 0.1]
    assert ev_items[2].candidates[0].score == 0.3 and ev_items[2].candidates[0].box_xyxy_px == (0, 0, W, H)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["mask"][1].update(label="acept"),
     "mask[1]: label 'acept' is not one of accept, accept_as_text, flag_label, whole_image, reject"),
    (lambda d: d["exhaustivity"][2].update(label="accept_as_text"),
     "exhaustivity[2]: label 'accept_as_text' is not one of accept, reject, reject_unseparated"),
    (lambda d: d["exhaustivity"][0].update(file_name="missing.png"), "exhaustivity[0]: image 'missing.png' not found"),
    (lambda d: d["mask"][0].update(file_name="broken.png"), "mask[0]: cannot read image 'broken.png'"),
    (lambda d: d["mask"][2].update(mask=encode_mask(np.zeros((H, W + 1), np.uint8))),
     "mask[2]: mask: RLE size [40, 51] (height, width) disagrees with the image's [40, 50]"),
    (lambda d: d["mask"][2].update(mask={"size": [H, W], "counts": "3Z2"}),  # runs cover 3 + 0 + ... pixels
     "mask[2]: mask: compressed RLE counts are corrupt"),
    (lambda d: d["mask"][0].update(lable="accept"), "mask[0]: unknown keys ['lable']"),
    (lambda d: d["mask"][0].pop("phrase"), "mask[0]: missing phrase"),
    (lambda d: d["mask"][0].update(box_xyxy_px=[5, 5, 1, 1]), "mask[0]: box_xyxy_px [5.0, 5.0, 1.0, 1.0] has"),
    (lambda d: d["exhaustivity"][1].update(presence=1.5), "exhaustivity[1]: presence 1.5 is outside [0, 1]"),
    (lambda d: d["exhaustivity"][0]["instances"][0].update(score="high"),
     "exhaustivity[0]: instances[0].score must be a finite number, got 'high'"),
    (lambda d: d.update(masks=[]), "unknown top-level keys ['masks']"),
])
def test_reader_errors_name_file_and_entry(sample_dir, edit, message):
    data = human_data()
    edit(data)
    path = sample_dir / "human.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as err:
        read_human_sample(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_reader_file_errors(sample_dir):
    with pytest.raises(DatasetError, match="no such human sample file"):
        read_human_sample(sample_dir / "nope.json")
    (sample_dir / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json: not valid JSON"):
        read_human_sample(sample_dir / "bad.json")
    (sample_dir / "empty.yaml").write_text("mask: []\n")
    with pytest.raises(DatasetError, match="empty.yaml: no entries"):
        read_human_sample(sample_dir / "empty.yaml")


def test_evaluate_and_report(sample_dir):
    path = sample_dir / "human.json"
    path.write_text(json.dumps(human_data()))
    sample = read_human_sample(path)
    results = evaluate_verifiers(sample, [GeometricMaskVerifier(min_area=0.001)], [TeacherConfidenceVerifier()])
    assert list(results) == ["mv:geometric", "ev:teacher_confidence"]
    mv, ev = results["mv:geometric"], results["ev:teacher_confidence"]
    # geometric: accepts the square, rejects the full-image mask (right) and the 1-px dot (wrong)
    assert (mv.accuracy, mv.precision, mv.recall) == (pytest.approx(2 / 3), 1.0, 0.5)
    assert (mv.threshold, mv.threshold_precision, mv.threshold_recall) == (1.0, 1.0, 0.5)
    # teacher confidence: complete pair accepted; presence 0.8 and an unmatched candidate rejected
    assert (ev.accuracy, ev.precision, ev.recall, ev.threshold) == (1.0, 1.0, 1.0, 1.0)

    out = sample_dir / "report"
    md_path = write_calibration_report(results, out)
    assert md_path == out / "calibration.md"
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json", "calibration.md", "calibration.png"]
    md = md_path.read_text()
    assert "| verifier | task | n | accuracy | precision | recall | F1 | target precision | threshold" in md
    assert "| mv:geometric | mv | 3 | 0.667 | 1.000 | 0.500 | 0.667 | 0.9 | 1.0000 | 1.000 | 0.500 |" in md
    assert "| ev:teacher_confidence | ev | 3 | 1.000 |" in md
    assert "77.7%" in md and "81.1%" in md
    assert "| human \\ verifier | accept | accept_as_text | flag_label | whole_image | reject | unparsed |" in md
    report = json.loads((out / "calibration.json").read_text())
    assert report["verifiers"]["mv:geometric"]["threshold"] == 1.0
    assert report["verifiers"]["ev:teacher_confidence"]["task"] == "ev"
    png = (out / "calibration.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
