"""Geometric MV checks (area, fragments, box, score) and the teacher-confidence EV heuristic, on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sam3_model.records import Instance, encode_mask
from verifiers.base import ExhaustivityVerifier, MaskVerifier, VerifyItem
from verifiers.geometric import GeometricMaskVerifier, TeacherConfidenceVerifier, box_iou, mask_box, mask_iou

H = W = 100
IMAGE = Image.new("RGB", (W, H), (30, 60, 90))


def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def inst(mask: np.ndarray, box=None, score: float = 0.9) -> Instance:
    return Instance(encode_mask(mask), tuple(box) if box is not None else mask_box(mask.astype(bool)) or (0, 0, 0, 0),
                    score)


def verdict(mask: np.ndarray, box=None, score: float = 0.9, **kw):
    [[v]] = GeometricMaskVerifier(**kw).verify_masks([VerifyItem(IMAGE, "thing", [inst(mask, box, score)])])
    return v


def test_protocols():
    assert isinstance(GeometricMaskVerifier(), MaskVerifier)
    assert isinstance(TeacherConfidenceVerifier(), ExhaustivityVerifier)


def test_clean_mask_is_accepted():
    v = verdict(rect(20, 30, 40, 50))
    assert (v.option, v.score, v.accept_score) == ("accept", 1.0, 1.0)
    assert v.reason == "area 0.0400, 1 fragment, box IoU 1.000, score 0.900"
    assert v.verifier == "geometric"


def test_each_check_rejects_with_its_numbers():
    assert verdict(rect(0, 0, 100, 98)).reason == "area 0.9800 > max 0.95"
    assert verdict(rect(10, 10, 12, 11)).reason == "area 0.0002 < min 0.0005"
    assert verdict(rect(20, 30, 40, 50), box=(60, 60, 80, 80)).reason == "box IoU 0.000 < min 0.5"
    assert verdict(rect(20, 30, 40, 50), score=0.2, min_score=0.5).reason == "score 0.200 < min 0.5"
    v = verdict(rect(20, 30, 40, 50), box=(20, 30, 40, 90))  # box 3x the mask's: IoU 1/3
    assert (v.option, v.accept_score, v.reason) == ("reject", 0.0, "box IoU 0.333 < min 0.5")


def test_all_failed_checks_are_listed():
    mask = np.ones((H, W), dtype=np.uint8)
    mask[:, [20, 40, 60, 80]] = 0  # five vertical strips, 96% of the image
    v = verdict(mask, box=(0, 0, 100, 100))
    assert v.option == "reject"
    assert v.reason == "area 0.9600 > max 0.95; 5 fragments > 3"


def test_fragments_ignore_specks_and_are_eight_connected():
    mask = rect(10, 10, 30, 30) | rect(50, 10, 70, 30) | rect(10, 50, 30, 70)  # three blobs of 400 px
    for x in range(40, 100, 10):  # six 1-px specks, each < 2% of the mask
        mask[90, x] = 1
    assert verdict(mask, box=(10, 10, 70, 91)).option == "accept"
    assert verdict(mask, box=(10, 10, 70, 91), min_fragment=0.0).reason == "9 fragments > 3"
    diagonal = rect(10, 10, 20, 20) | rect(20, 20, 30, 30)  # touching only at a corner: one 8-connected blob
    assert verdict(diagonal, max_fragments=1).option == "accept"


def test_empty_and_wrong_size_masks():
    assert verdict(np.zeros((H, W), np.uint8), box=(0, 0, 10, 10)).reason == "empty mask"
    wrong = Instance(encode_mask(np.ones((50, 50), np.uint8)), (0, 0, 50, 50))
    [[v]] = GeometricMaskVerifier().verify_masks([VerifyItem(IMAGE, "thing", [wrong])])
    assert v.option == "reject" and "mask size [50, 50] != image size [100, 100]" in v.reason


def test_one_verdict_per_instance_per_item():
    items = [VerifyItem(IMAGE, "a", [inst(rect(0, 0, 10, 10)), inst(rect(0, 0, 100, 100))]), VerifyItem(IMAGE, "b", [])]
    out = GeometricMaskVerifier().verify_masks(items)
    assert [[v.option for v in row] for row in out] == [["accept", "reject"], []]


def test_mask_iou_and_box_helpers():
    a, b = rect(0, 0, 10, 10), rect(5, 0, 15, 10)
    ious = mask_iou([encode_mask(a), encode_mask(b)], [encode_mask(b)])
    assert ious.shape == (2, 1)
    np.testing.assert_allclose(ious[:, 0], [50 / 150, 1.0])
    assert mask_iou([], [encode_mask(a)]).shape == (0, 1)
    assert mask_box(a.astype(bool)) == (0.0, 0.0, 10.0, 10.0) and mask_box(np.zeros((3, 3), bool)) is None
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def ev(instances, candidates=(), presence=None, **kw):
    item = VerifyItem(IMAGE, "thing", list(instances), presence=presence, candidates=list(candidates))
    [v] = TeacherConfidenceVerifier(**kw).verify_exhaustivity([item])
    return v


def test_matched_candidates_do_not_count():
    a = inst(rect(10, 10, 30, 30))
    v = ev([a], [inst(rect(10, 10, 30, 30), score=0.4)], presence=0.9)
    assert (v.option, v.accept_score) == ("accept", 1.0)
    assert v.verifier == "teacher_confidence"


def test_unmatched_candidate_rejects_with_its_score():
    a = inst(rect(10, 10, 30, 30))
    v = ev([a], [inst(rect(60, 60, 80, 80), score=0.3), inst(rect(60, 10, 80, 30), score=0.1)])
    assert v.option == "reject"
    assert v.accept_score == pytest.approx(0.7) and v.score == pytest.approx(0.3)
    assert "2 unmatched candidates (best score 0.300)" in v.reason


def test_candidate_iou_threshold():
    a = inst(rect(0, 0, 20, 20))
    partial = inst(rect(8, 0, 28, 20), score=0.45)  # IoU 240 / 560 = 0.43
    assert ev([a], [partial]).option == "reject"
    assert ev([a], [partial], candidate_iou=0.4).option == "accept"


def test_low_candidates_below_min_score_lower_the_score_only():
    v = ev([inst(rect(0, 0, 20, 20))], [inst(rect(50, 50, 60, 60), score=0.05)], min_candidate_score=0.1)
    assert v.option == "accept" and v.accept_score == pytest.approx(0.95)
    assert "1 unmatched below 0.1" in v.reason


def test_presence_without_instances():
    v = ev([], presence=0.8)
    assert v.option == "reject" and v.accept_score == pytest.approx(0.2)
    assert "no instance but presence 0.800 >= 0.5" in v.reason
    v = ev([], presence=0.3)  # a verified negative
    assert v.option == "accept" and v.accept_score == pytest.approx(0.7)
    assert (ev([]).option, ev([]).accept_score) == ("accept", 1.0)
    # with instances, presence says nothing about completeness
    assert ev([inst(rect(0, 0, 20, 20))], presence=0.99).accept_score == 1.0
