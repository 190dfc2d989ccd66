"""What every verifier speaks: the item it judges, the verdict it returns, and the two verifier interfaces.

Mask verification (MV) judges each instance of an (image, phrase) pair on its own: is it a good, complete mask of
one instance of the phrase? Exhaustivity verification (EV) judges the pair as a whole: is every instance of the
phrase in the image covered by the accepted instances? With no instance, an EV accept makes the pair a verified
negative. The options are the paper's multiple-choice answers (SAM 3 §D.4 "AI verifiers").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

from sam3_model.records import Instance

# Mask verification: accept / the mask covers text matching the label / sensitive label / the label describes
# the whole scene / reject.
MV_OPTIONS: tuple[str, ...] = ("accept", "accept_as_text", "flag_label", "whole_image", "reject")
# Exhaustivity verification: accept / missing separable instances / missing instances that cannot be separated /
# sensitive label / whole scene / the phrase is ungroundable, vague or the verifier is unsure.
EV_OPTIONS: tuple[str, ...] = ("accept", "reject", "reject_unseparated", "flag_label", "whole_image", "ungroundable")
UNPARSED = "unparsed"  # a model answer that matched no option: never an accept, counted in the summary


@dataclass
class VerifyItem:
    """One (image, phrase, instances) pair to judge. `instances` are the ones still accepted so far."""

    image: Image.Image  # RGB, original size
    phrase: str
    instances: list[Instance]  # masks are RLEs of the image size; boxes xyxy pixels
    presence: float | None = None  # the teacher's image-level presence score of the phrase, when known
    negatives: list[str] = field(default_factory=list)  # confusable phrases (ontology siblings, hard negatives)
    candidates: list[Instance] = field(default_factory=list)  # teacher detections below the keep threshold
    key: str = ""  # who this is, for messages (image key and phrase)


@dataclass(frozen=True)
class Verdict:
    """One verifier's answer about one instance (MV) or one pair (EV).

    `option` is one of MV_OPTIONS / EV_OPTIONS (or UNPARSED); `score` the probability (or confidence in [0, 1])
    of that option; `accept_score` the probability of "accept", the number thresholds and calibration use.
    """

    verifier: str
    option: str
    score: float
    accept_score: float
    reason: str

    @property
    def accepted(self) -> bool:
        """True when the verdict lets the instance (or pair) through."""
        return self.option == "accept"

    def to_json(self) -> dict:
        """A JSON-ready dict (for provenance)."""
        return {"verifier": self.verifier, "option": self.option, "score": round(float(self.score), 6),
                "accept_score": round(float(self.accept_score), 6), "reason": self.reason}


@runtime_checkable
class MaskVerifier(Protocol):
    """Judges every instance of every item: one list of verdicts per item, one verdict per instance."""

    name: str

    def verify_masks(self, items: Sequence[VerifyItem]) -> list[list[Verdict]]: ...


@runtime_checkable
class ExhaustivityVerifier(Protocol):
    """Judges every item as a whole: one verdict per item."""

    name: str

    def verify_exhaustivity(self, items: Sequence[VerifyItem]) -> list[Verdict]: ...


def thresholded(verdict: Verdict, threshold: float) -> Verdict:
    """`verdict` with an "accept" below `threshold` (on accept_score) turned into a reject, saying why."""
    if verdict.option != "accept" or verdict.accept_score >= threshold:
        return verdict
    return Verdict(verdict.verifier, "reject", 1.0 - verdict.accept_score, verdict.accept_score,
                   f"accept score {verdict.accept_score:.3f} < threshold {threshold:.3f} ({verdict.reason})")
