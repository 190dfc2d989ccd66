"""MV and EV by agreement with a second teacher: a different SAM 3 checkpoint (or size, or prompt) segments the
same images and phrases, and the first teacher's instances are checked against its masks.

Agreement is a common auto-labelling filter (data-engine-facts §3.4); the IoU threshold is our choice, not a
paper's. Each image is segmented once per call with all of its items' phrases; items share an image when they
hold the same PIL object (`id(item.image)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sam3_model.predict import ConceptSegmenter
from sam3_model.records import Instance

from .base import Verdict, VerifyItem
from .geometric import mask_iou


class TeacherAgreementVerifier:
    """Agreement with a second teacher (`segmenter`, a `ConceptSegmenter`).

    MV: an instance is accepted iff the second teacher returns an instance of the same phrase with mask IoU
    >= `iou_threshold` (every instance the segmenter keeps counts, so its own `threshold` is the score filter);
    accept_score is the best IoU. EV: the item is accepted iff every second-teacher instance with score
    >= `min_score` is matched (IoU >= `iou_threshold`) by one of the item's instances; accept_score is
    1 - the highest score of an unmatched second-teacher instance (1.0 when all match), so it crosses
    1 - `min_score` exactly where the verdict flips.
    """

    def __init__(
        self, segmenter: ConceptSegmenter, *, name: str = "agreement", iou_threshold: float = 0.5,
        min_score: float = 0.5,
    ) -> None:
        self.segmenter, self.name = segmenter, name
        self.iou_threshold, self.min_score = iou_threshold, min_score

    @classmethod
    def from_config(cls, config: Any) -> TeacherAgreementVerifier:
        """The verifier a `verifiers.configs.AgreementConfig` describes."""
        return cls.from_pretrained(config.model, image_size=config.image_size, iou_threshold=config.iou_threshold,
                                   min_score=config.min_score)

    @property
    def torch_module(self) -> Any:
        """The second teacher's model, which the data engine moves to its device."""
        return self.segmenter.model

    @classmethod
    def from_pretrained(cls, source: str, *, name: str = "agreement", iou_threshold: float = 0.5,
                        min_score: float = 0.5, **segmenter_kwargs) -> TeacherAgreementVerifier:
        """A verifier around `ConceptSegmenter.from_pretrained(source, **segmenter_kwargs)`."""
        segmenter = ConceptSegmenter.from_pretrained(source, **segmenter_kwargs)
        return cls(segmenter, name=name, iou_threshold=iou_threshold, min_score=min_score)

    def second_opinion(self, items: Sequence[VerifyItem]) -> list[list[Instance]]:
        """Per item, the second teacher's instances of its phrase (each image segmented once, all phrases)."""
        images: dict[int, tuple[object, list[str]]] = {}
        for item in items:
            _, phrases = images.setdefault(id(item.image), (item.image, []))
            if item.phrase not in phrases:
                phrases.append(item.phrase)
        if not images:
            return []
        keys = list(images)
        results = self.segmenter([images[k][0] for k in keys], [images[k][1] for k in keys])
        found = {(key, result.prompt.text): result.instances
                 for key, image_results in zip(keys, results) for result in image_results}
        return [found[(id(item.image), item.phrase)] for item in items]

    def verify_masks(self, items: Sequence[VerifyItem]) -> list[list[Verdict]]:
        """One verdict per instance of every item."""
        verdicts = []
        for item, theirs in zip(items, self.second_opinion(items)):
            ious = mask_iou([i.mask for i in item.instances], [t.mask for t in theirs])
            row = []
            for k in range(len(item.instances)):
                best = float(ious[k].max()) if ious.shape[1] else 0.0
                if best >= self.iou_threshold:
                    row.append(Verdict(self.name, "accept", best, best,
                                       f"second teacher agrees: IoU {best:.3f} >= {self.iou_threshold:g}"))
                else:
                    row.append(Verdict(self.name, "reject", 1.0 - best, best,
                                       f"best IoU with the second teacher's {len(theirs)} instances {best:.3f} < "
                                       f"{self.iou_threshold:g}"))
            verdicts.append(row)
        return verdicts

    def verify_exhaustivity(self, items: Sequence[VerifyItem]) -> list[Verdict]:
        """One verdict per item."""
        verdicts = []
        for item, theirs in zip(items, self.second_opinion(items)):
            ious = mask_iou([t.mask for t in theirs], [i.mask for i in item.instances])
            matched = ious.max(axis=1) >= self.iou_threshold if ious.shape[1] else np.zeros(len(theirs), bool)
            unmatched = sorted((t.score for t, m in zip(theirs, matched) if not m), reverse=True)
            accept_score = 1.0 - max(unmatched, default=0.0)
            confident = [t for t in theirs if t.score >= self.min_score]
            missed = [s for s in unmatched if s >= self.min_score]
            counts = (f"second teacher finds {len(confident)} with score >= {self.min_score:g}, "
                      f"{len(missed)} unmatched; the item has {len(item.instances)}")
            if missed:
                verdicts.append(Verdict(self.name, "reject", 1.0 - accept_score, accept_score,
                                        f"{counts} (best unmatched score {missed[0]:.3f})"))
            else:
                verdicts.append(Verdict(self.name, "accept", accept_score, accept_score, counts))
        return verdicts
