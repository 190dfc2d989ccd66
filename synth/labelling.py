"""Teacher pseudo-labelling: a SAM 3 prompts every phrase of the ontology on an image and keeps what it is sure of.

Per image, each phrase (concepts, then hard negatives) is prompted once; detections scoring at least `threshold`
become instances, those between `candidate_threshold` and `threshold` are kept aside as candidates (an
exhaustivity verifier reads them as possibly missed instances). When the teacher does not know a fine concept,
its parent is prompted (SAM 3 §D.4: "prompt with a coarse parent concept it handles"): `parent_prompt`
"fallback" asks the parent only when the concept itself found nothing; "always" unites both (deduplicated by
mask IoU); "never" does not. Every instance records which prompt found it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from sam3_model.predict import ConceptSegmenter
from sam3_model.records import ConceptResult, Instance
from verifiers.geometric import mask_iou

from .config import TeacherConfig
from .ontology import Ontology


def instance_json(inst: Instance, prompted_with: str) -> dict[str, Any]:
    """An instance as JSON: RLE mask, xyxy pixel box, score and the prompt that found it."""
    return {"mask": inst.mask, "box_xyxy_px": [round(float(v), 3) for v in inst.box_xyxy_px],
            "score": round(float(inst.score), 6), "prompted_with": prompted_with}


def _dedupe(found: list[tuple[Instance, str]], iou: float) -> list[tuple[Instance, str]]:
    """Greedy mask NMS: best score first, drop any later detection overlapping a kept one by more than `iou`."""
    found = sorted(found, key=lambda f: -f[0].score)
    kept: list[tuple[Instance, str]] = []
    for inst, prompt in found:
        if kept and mask_iou([inst.mask], [k.mask for k, _ in kept]).max() > iou:  # (1, K)
            continue
        kept.append((inst, prompt))
    return kept

@dataclass
class PhraseLabel:
    """The teacher's answer for one (image, phrase) pair."""

    phrase: str
    kind: str  # "concept" or "hard_negative"
    presence: float  # the highest presence score among the prompts asked
    prompts: list[str]  # every prompt asked for this phrase, in order
    instances: list[tuple[Instance, str]] = field(default_factory=list)  # (instance, the prompt that found it)
    candidates: list[tuple[Instance, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The pair as JSON (the label stage's output)."""
        return {"phrase": self.phrase, "kind": self.kind, "presence": round(float(self.presence), 6),
                "prompts": self.prompts,
                "instances": [instance_json(i, p) for i, p in self.instances],
                "candidates": [instance_json(i, p) for i, p in self.candidates]}


class PseudoLabeller:
    """Label images with a teacher `ConceptSegmenter` for every phrase of an `Ontology`."""

    def __init__(self, segmenter: ConceptSegmenter, ontology: Ontology, config: TeacherConfig) -> None:
        self.segmenter, self.ontology, self.config = segmenter, ontology, config
        segmenter.threshold = min(config.candidate_threshold, config.threshold)

    def _prompts(self, phrase: str) -> list[str]:
        """The prompts asked first for `phrase` (the parent comes later in fallback mode)."""
        prompts = [phrase]
        if phrase in self.ontology:
            concept = self.ontology[phrase]
            if self.config.prompt_synonyms:
                prompts += list(concept.synonyms)
            if self.config.parent_prompt == "always" and concept.parent:
                prompts.append(concept.parent)
        return list(dict.fromkeys(prompts))

    def label(self, image: Image.Image) -> list[PhraseLabel]:
        """One `PhraseLabel` per ontology phrase (in `ontology.phrases()` order) for one RGB image."""
        phrases = self.ontology.phrases()
        first = {p: self._prompts(p) for p in phrases}
        asked = list(dict.fromkeys(q for qs in first.values() for q in qs))
        answers = self._ask(image, asked)
        labels = [self._combine(p, first[p], answers) for p in phrases]
        if self.config.parent_prompt == "fallback":
            retry = [lab for lab in labels if not lab.instances and lab.phrase in self.ontology
                     and self.ontology[lab.phrase].parent and self.ontology[lab.phrase].parent not in lab.prompts]
            parents = list(dict.fromkeys(self.ontology[lab.phrase].parent for lab in retry))
            answers.update(self._ask(image, [p for p in parents if p not in answers]))
            for i, lab in enumerate(labels):
                if lab in retry:
                    labels[i] = self._combine(lab.phrase, [*lab.prompts, self.ontology[lab.phrase].parent], answers)
        return labels

    def _ask(self, image: Image.Image, prompts: Sequence[str]) -> dict[str, ConceptResult]:
        """The teacher's result for each prompt on one image (one vision pass)."""
        if not prompts:
            return {}
        results = self.segmenter([image], list(prompts))[0]
        return dict(zip(prompts, results))

    def _combine(self, phrase: str, prompts: list[str], answers: dict[str, ConceptResult]) -> PhraseLabel:
        """United, deduplicated detections of `prompts`, split into instances and candidates."""
        found = [(inst, q) for q in prompts for inst in answers[q].instances]
        found = _dedupe(found, self.config.dedupe_iou)
        kind = "concept" if phrase in self.ontology else "hard_negative"
        keep = [f for f in found if f[0].score >= self.config.threshold][: self.config.max_instances]
        maybe = [f for f in found if self.config.candidate_threshold <= f[0].score < self.config.threshold]
        presence = max(answers[q].presence for q in prompts)
        return PhraseLabel(phrase, kind, presence, prompts, keep, maybe[: self.config.max_instances])
