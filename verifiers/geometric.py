"""Cheap verifiers that need no extra model: mask geometry (MV) and the teacher's own leftovers (EV).

`GeometricMaskVerifier` is mask hygiene in the spirit of X-Paste: area bounds, few connected fragments, and a
mask that agrees with its own box. `TeacherConfidenceVerifier` reads the teacher's presence score and its
detections below the keep threshold. Both are heuristics, not the paper's fine-tuned MCQ verifiers (SAM 3 §D.4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from sam3_model.records import RLE, Instance, coco_rle, decode_mask

from .base import Verdict, VerifyItem

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def mask_iou(masks_a: Sequence[RLE], masks_b: Sequence[RLE]) -> np.ndarray:
    """(len(a), len(b)) mask IoU between two lists of same-size RLE masks (pycocotools, no decoding)."""
    if not masks_a or not masks_b:
        return np.zeros((len(masks_a), len(masks_b)))
    ious = mask_utils.iou([coco_rle(m) for m in masks_a], [coco_rle(m) for m in masks_b], [0] * len(masks_b))
    return np.asarray(ious, dtype=float).reshape(len(masks_a), len(masks_b))


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight xyxy pixel box of a binary mask (x1, y1 exclusive), None when the mask is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes (0 when both are degenerate)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class GeometricMaskVerifier:
    """MV by mask geometry: accept a mask only when every check passes.

    Checks: area within [`min_area`, `max_area`] (fractions of the image); at most `max_fragments` connected
    components (8-connected), not counting fragments smaller than `min_fragment` of the mask; IoU between the
    mask's tight box and the instance's box at least `min_box_iou`; teacher score at least `min_score`.
    The verdict is deterministic: score 1.0, accept_score 1.0 (accept) or 0.0 (reject); the reason lists every
    failed check with its numbers.
    """

    def __init__(
        self,
        name: str = "geometric",
        *,
        min_area: float = 0.0005,
        max_area: float = 0.95,
        max_fragments: int = 3,
        min_fragment: float = 0.02,
        min_box_iou: float = 0.5,
        min_score: float = 0.0,
    ) -> None:
        self.name = name
        self.min_area, self.max_area = min_area, max_area
        self.max_fragments, self.min_fragment = max_fragments, min_fragment
        self.min_box_iou, self.min_score = min_box_iou, min_score

    @classmethod
    def from_config(cls, config: Any) -> GeometricMaskVerifier:
        """The verifier a `verifiers.configs.GeometricConfig` describes."""
        return cls(**dataclasses.asdict(config))

    def verify_masks(self, items: Sequence[VerifyItem]) -> list[list[Verdict]]:
        """One verdict per instance of every item."""
        return [[self._verify(item, inst) for inst in item.instances] for item in items]

    def _verdict(self, failures: list[str], passed: str) -> Verdict:
        if failures:
            return Verdict(self.name, "reject", 1.0, 0.0, "; ".join(failures))
        return Verdict(self.name, "accept", 1.0, 1.0, passed)

    def _verify(self, item: VerifyItem, inst: Instance) -> Verdict:
        height, width = item.image.height, item.image.width
        if tuple(inst.mask["size"]) != (height, width):
            return self._verdict([f"mask size {list(inst.mask['size'])} != image size {[height, width]}"], "")
        mask = decode_mask(inst.mask).astype(bool)
        area = int(mask.sum())
        if area == 0:
            return self._verdict(["empty mask"], "")
        failures = []
        frac = area / float(height * width)
        if frac < self.min_area:
            failures.append(f"area {frac:.4f} < min {self.min_area:g}")
        if frac > self.max_area:
            failures.append(f"area {frac:.4f} > max {self.max_area:g}")
        labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        fragments = int((sizes >= self.min_fragment * area).sum())
        if fragments > self.max_fragments:
            failures.append(f"{fragments} fragments > {self.max_fragments}")
        iou = box_iou(mask_box(mask), inst.box_xyxy_px)
        if iou < self.min_box_iou:
            failures.append(f"box IoU {iou:.3f} < min {self.min_box_iou:g}")
        if inst.score < self.min_score:
            failures.append(f"score {inst.score:.3f} < min {self.min_score:g}")
        passed = (f"area {frac:.4f}, {fragments} fragment{'s' * (fragments != 1)}, box IoU {iou:.3f}, "
                  f"score {inst.score:.3f}")
        return self._verdict(failures, passed)


class TeacherConfidenceVerifier:
    """EV from the teacher's own scores: a cheap heuristic, NOT the paper's exhaustivity verifier.

    The paper's EV is a fine-tuned multimodal LLM judging the image with every accepted box drawn (SAM 3 §D.4).
    This one only asks whether the teacher itself hinted at something missing:
    - a candidate (`item.candidates`: teacher detections below the keep threshold) with score at least
      `min_candidate_score` whose mask overlaps no accepted instance (mask IoU < `candidate_iou`) suggests a
      missed instance -> "reject";
    - no accepted instance while the teacher's presence score is at least `presence_accept` -> "reject" (the
      teacher thinks the phrase is present but found nothing it trusts);
    - otherwise "accept" (with no instance: a verified negative).
    accept_score = 1 - max(scores of unmatched candidates, and for items without instances the presence),
    1.0 when there is none of either.
    """

    def __init__(
        self,
        name: str = "teacher_confidence",
        *,
        presence_accept: float = 0.5,
        candidate_iou: float = 0.5,
        min_candidate_score: float = 0.0,
    ) -> None:
        self.name = name
        self.presence_accept, self.candidate_iou = presence_accept, candidate_iou
        self.min_candidate_score = min_candidate_score

    @classmethod
    def from_config(cls, config: Any) -> TeacherConfidenceVerifier:
        """The verifier a `verifiers.configs.TeacherConfidenceConfig` describes."""
        return cls(**dataclasses.asdict(config))

    def verify_exhaustivity(self, items: Sequence[VerifyItem]) -> list[Verdict]:
        """One verdict per item."""
        return [self._verify(item) for item in items]

    def _verify(self, item: VerifyItem) -> Verdict:
        ious = mask_iou([c.mask for c in item.candidates], [i.mask for i in item.instances])
        best = ious.max(axis=1) if ious.shape[1] else np.zeros(len(item.candidates))
        unmatched = sorted((c.score for c, iou in zip(item.candidates, best) if iou < self.candidate_iou),
                           reverse=True)
        doubts = list(unmatched)
        presence = item.presence
        if not item.instances and presence is not None:
            doubts.append(presence)
        accept_score = 1.0 - max(doubts, default=0.0)
        reasons = []
        missed = [s for s in unmatched if s >= self.min_candidate_score]
        if missed:
            reasons.append(f"{len(missed)} unmatched candidate{'s' * (len(missed) != 1)} "
                           f"(best score {missed[0]:.3f})")
        if not item.instances and presence is not None and presence >= self.presence_accept:
            reasons.append(f"no instance but presence {presence:.3f} >= {self.presence_accept:g}")
        if reasons:
            return Verdict(self.name, "reject", 1.0 - accept_score, accept_score, "; ".join(reasons))
        matched = len(item.candidates) - len(unmatched)
        text = f"{len(item.instances)} instances; {matched} of {len(item.candidates)} candidates matched"
        if unmatched:
            text += f"; {len(unmatched)} unmatched below {self.min_candidate_score:g} (best {unmatched[0]:.3f})"
        if presence is not None:
            text += f"; presence {presence:.3f}"
        return Verdict(self.name, "accept", accept_score, accept_score, text)
