"""Agreement with a second teacher (the tiny SAM 3): its own masks agree, others do not; one segmentation per image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sam3_model.loading import load_model
from sam3_model.predict import ConceptSegmenter
from sam3_model.records import Instance, decode_mask, encode_mask
from verifiers.agreement import TeacherAgreementVerifier
from verifiers.base import ExhaustivityVerifier, MaskVerifier, VerifyItem
from verifiers.geometric import mask_iou

H, W = 60, 90


@pytest.fixture(scope="module")
def segmenter():
    model, processor = load_model("tiny", seed=0)
    return ConceptSegmenter(model, processor, threshold=0.0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)) for _ in range(2)]


@pytest.fixture(scope="module")
def teacher(segmenter, images):
    """The second teacher's own instances of "a cat" in the first image, best first."""
    [result] = segmenter([images[0]], ["a cat"])[0]
    assert len(result.instances) > 5
    return result.instances


def square(x0, y0, size) -> Instance:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0 : y0 + size, x0 : x0 + size] = 1
    return Instance(encode_mask(mask), (x0, y0, x0 + size, y0 + size), 0.9)


def test_protocols(segmenter):
    verifier = TeacherAgreementVerifier(segmenter)
    assert isinstance(verifier, MaskVerifier) and isinstance(verifier, ExhaustivityVerifier)


def test_mv_accepts_the_second_teachers_own_mask(segmenter, images, teacher):
    own = teacher[0]
    empty = Instance(encode_mask(np.zeros((H, W), np.uint8)), (0, 0, 1, 1))
    [[same, small, nothing]] = TeacherAgreementVerifier(segmenter).verify_masks(
        [VerifyItem(images[0], "a cat", [own, square(5, 5, 3), empty])])
    assert (same.option, same.accept_score, same.score) == ("accept", 1.0, 1.0)
    assert same.reason == "second teacher agrees: IoU 1.000 >= 0.5" and same.verifier == "agreement"
    assert small.option == "reject" and small.accept_score < 0.01  # 9 px vs masks of thousands
    assert (nothing.option, nothing.accept_score) == ("reject", 0.0)
    assert f"second teacher's {len(teacher)} instances" in nothing.reason


def test_mv_score_is_the_best_iou(segmenter, images, teacher):
    eroded = decode_mask(teacher[0].mask).copy()
    rows = np.flatnonzero(eroded.any(1))
    eroded[rows[: len(rows) // 3]] = 0  # drop the top third of the mask
    inst = Instance(encode_mask(eroded), teacher[0].box_xyxy_px, 0.5)
    theirs = np.stack([decode_mask(t.mask).astype(bool) for t in teacher])
    mine = eroded.astype(bool)
    best = max((mine & t).sum() / (mine | t).sum() for t in theirs)
    [[v]] = TeacherAgreementVerifier(segmenter).verify_masks([VerifyItem(images[0], "a cat", [inst])])
    assert v.accept_score == pytest.approx(best) and v.option == ("accept" if best >= 0.5 else "reject")
    [[strict]] = TeacherAgreementVerifier(segmenter, iou_threshold=0.999).verify_masks(
        [VerifyItem(images[0], "a cat", [inst])])
    assert strict.option == "reject" and strict.accept_score == pytest.approx(best)


def test_each_image_is_segmented_once_with_all_its_phrases(segmenter, images, teacher):
    calls = []

    class Spy:
        def __call__(self, imgs, prompts):
            calls.append(([id(i) for i in imgs], prompts))
            return segmenter(imgs, prompts)

    items = [VerifyItem(images[0], "a cat", [teacher[0]]), VerifyItem(images[1], "a cat", [teacher[0]]),
             VerifyItem(images[0], "dog", [square(0, 0, 20)]), VerifyItem(images[0], "a cat", [teacher[1]])]
    together = TeacherAgreementVerifier(Spy()).verify_masks(items)
    assert calls == [([id(images[0]), id(images[1])], [["a cat", "dog"], ["a cat"]])]
    apart = [TeacherAgreementVerifier(segmenter).verify_masks([item])[0] for item in items]
    assert [[v.accept_score for v in row] for row in together] == [[v.accept_score for v in row] for row in apart]
    assert together[0][0].accept_score == 1.0 and together[3][0].accept_score == 1.0
    assert together[1][0].accept_score < 1.0  # the same mask on another image is no longer the teacher's own


def test_ev_counts_unmatched_confident_instances(segmenter, images, teacher):
    min_score = 0.2
    confident = [t for t in teacher if t.score >= min_score]
    assert 1 < len(confident) < len(teacher)
    verifier = TeacherAgreementVerifier(segmenter, min_score=min_score, iou_threshold=0.99)
    complete, empty, missing_top = verifier.verify_exhaustivity([
        VerifyItem(images[0], "a cat", confident),
        VerifyItem(images[0], "a cat", []),
        VerifyItem(images[0], "a cat", confident[1:]),
    ])
    assert complete.option == "accept" and complete.accept_score > 1 - min_score
    assert complete.reason == f"second teacher finds {len(confident)} with score >= 0.2, 0 unmatched; the item has " \
                              f"{len(confident)}"
    assert empty.option == "reject" and empty.accept_score == pytest.approx(1 - teacher[0].score)
    assert empty.reason.startswith(f"second teacher finds {len(confident)} with score >= 0.2, {len(confident)} "
                                   "unmatched; the item has 0")
    # no other teacher mask is a near-copy of the best one, so dropping it leaves exactly it unmatched
    assert mask_iou([teacher[0].mask], [t.mask for t in teacher[1:]]).max() < 0.99
    assert missing_top.option == "reject" and ", 1 unmatched;" in missing_top.reason
    assert missing_top.accept_score == pytest.approx(1 - teacher[0].score)


def test_from_pretrained_builds_the_same_teacher(segmenter, images, teacher):
    verifier = TeacherAgreementVerifier.from_pretrained("tiny", threshold=0.0, iou_threshold=0.9)
    assert verifier.iou_threshold == 0.9 and verifier.segmenter.threshold == 0.0
    [[v]] = verifier.verify_masks([VerifyItem(images[0], "a cat", [teacher[2]])])
    assert (v.option, v.accept_score) == ("accept", 1.0)
