"""What a data engine's `verify:` section says: one config per verifier, and the chain they form.

Each verifier owns its settings here, as a plain dataclass (no torch: reading a config stays fast) whose
`build()` constructs the verifier through its class's `from_config`. `VerifyConfig.build_chain()` builds the
configured ones, cheap first, without knowing any of them: adding a verifier is its module plus its config class
here and a field of `VerifyConfig`. Model fields are resolved at load (`sam3_model.configs.MODEL`): a folder under
the config's folder, else a Hub id.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

from sam3_model.configs import MODEL
from sam3_model.errors import ConfigError


@dataclass
class GeometricConfig:
    """Mask verification by geometry: area, fragments, mask-box agreement, teacher score."""

    roles: ClassVar[tuple[str, ...]] = ("mask",)
    min_area: float = 0.0005  # smallest mask, as a fraction of the image
    max_area: float = 0.95  # largest mask, as a fraction of the image
    max_fragments: int = 3  # most connected components (fragments under min_fragment of the mask ignored)
    min_fragment: float = 0.02
    min_box_iou: float = 0.5  # IoU between the mask's tight box and the predicted box
    min_score: float = 0.0  # teacher score

    def build(self) -> Any:
        from .geometric import GeometricMaskVerifier

        return GeometricMaskVerifier.from_config(self)


@dataclass
class TeacherConfidenceConfig:
    """Exhaustivity by the teacher's own doubts: unmatched low-score candidates, presence without instances."""

    roles: ClassVar[tuple[str, ...]] = ("exhaustivity",)
    presence_accept: float = 0.5  # a pair with no instance but presence >= this is not a trusted negative
    candidate_iou: float = 0.5  # a candidate overlapping an accepted instance by this much is that instance

    def build(self) -> Any:
        from .geometric import TeacherConfidenceVerifier

        return TeacherConfidenceVerifier.from_config(self)


@dataclass
class CropClassifierVerifyConfig:
    """Mask verification by a small classifier trained on human-verified labels (verifiers.crop_classifier)."""

    roles: ClassVar[tuple[str, ...]] = ("mask",)
    model: str = field(metadata=MODEL)  # directory written by CropClassifierVerifier.save
    threshold: float = 0.5  # on the phrase's probability

    def build(self) -> Any:
        from .crop_classifier import CropClassifierVerifier

        return CropClassifierVerifier.from_pretrained(self.model, threshold=self.threshold)


@dataclass
class ClipConfig:
    """Mask verification by CLIP/SigLIP similarity of the masked crop with the phrase against its negatives."""

    roles: ClassVar[tuple[str, ...]] = ("mask",)
    model: str = field(metadata=MODEL)  # Hub id or local directory of a CLIP or SigLIP model
    threshold: float = 0.5  # on the phrase's probability
    prompt_template: str = "a photo of a {phrase}"
    contrast_phrases: list[str] = field(default_factory=lambda: ["an object", "background"])
    batch_size: int = 32

    def build(self) -> Any:
        from .clip_score import ClipMaskVerifier

        return ClipMaskVerifier.from_config(self)


@dataclass
class AgreementConfig:
    """Agreement with a second teacher SAM 3 (mask IoU per instance; matched counts per pair)."""

    model: str = field(metadata=MODEL)  # Hub id, local directory or preset of the second teacher
    iou_threshold: float = 0.5
    min_score: float = 0.5  # second-teacher detections that count
    image_size: int | None = None
    mask: bool = True  # judge instances
    exhaustivity: bool = True  # judge pairs

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(r for r, on in (("mask", self.mask), ("exhaustivity", self.exhaustivity)) if on)

    def build(self) -> Any:
        from .agreement import TeacherAgreementVerifier

        return TeacherAgreementVerifier.from_config(self)


@dataclass
class VlmConfig:
    """A vision-language model answering the paper's multiple-choice MV / EV questions."""

    model: str = field(metadata=MODEL)  # any transformers image-text-to-text chat model (Qwen2.5-VL, SmolVLM...)
    threshold: float = 0.5  # on the probability of "accept"
    mode: Literal["logits", "generate"] = "logits"  # option-letter probabilities, or parse a generated answer
    batch_size: int = 8
    max_new_tokens: int = 8
    mask: bool = True
    exhaustivity: bool = True

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(r for r, on in (("mask", self.mask), ("exhaustivity", self.exhaustivity)) if on)

    def build(self) -> Any:
        from .vlm import VlmVerifier

        return VlmVerifier.from_config(self)


@dataclass
class VerifyConfig:
    """The verifiers, in this order (cheap first): geometric, crop_classifier, clip, agreement, vlm for masks;
    teacher_confidence, agreement, vlm for exhaustivity. Unset ones are off; with none at all, the verified
    dataset equals the pseudo-labels."""

    geometric: GeometricConfig | None = None
    teacher_confidence: TeacherConfidenceConfig | None = None
    crop_classifier: CropClassifierVerifyConfig | None = None
    clip: ClipConfig | None = None
    agreement: AgreementConfig | None = None
    vlm: VlmConfig | None = None
    cascade: bool = True  # a later verifier does not see what an earlier one rejected
    non_exhaustive: Literal["drop", "keep_flagged"] = "drop"  # an EV-rejected pair: dropped, or kept with its
    #                                                            accepted instances and is_instance_exhaustive false
    hard_negatives: Literal["adversarial", "all"] = "adversarial"  # a negative pair of a phrase confusable with a
    #   concept present in the image (a sibling, a listed hard negative) stays in syn only when the teacher's
    #   detections for it overlap that concept's accepted masks (the paper's adversarial rule); "all" keeps every one
    adversarial_iou: float = 0.5  # mask IoU at which a detection of the negative phrase overlaps a positive

    def __post_init__(self) -> None:
        if not 0 < self.adversarial_iou <= 1:
            raise ConfigError(f"verify.adversarial_iou must be in (0, 1], got {self.adversarial_iou}")

    def configured(self) -> list[tuple[str, Any]]:
        """(name, config) of every verifier that is set, in field (cost) order."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)
                if hasattr(getattr(self, f.name), "build")]

    def build_chain(self) -> tuple[Any, dict[str, Any]]:
        """The `VerifierChain` of the configured verifiers and the torch modules they run (by name)."""
        from .compose import VerifierChain

        mask, exhaustivity, modules = [], [], {}
        for name, config in self.configured():
            verifier = config.build()
            mask += [verifier] if "mask" in config.roles else []
            exhaustivity += [verifier] if "exhaustivity" in config.roles else []
            module = getattr(verifier, "torch_module", None)
            if module is not None:
                modules[name] = module
        return VerifierChain(mask, exhaustivity, cascade=self.cascade), modules
