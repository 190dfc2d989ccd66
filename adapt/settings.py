"""The fine-tuning settings as plain dataclasses (no torch): what `fit`'s `model:` and `data:` sections and a
recipe's `train:` section name. The modules that use them import them from here, so reading a config or printing
a verb's help never imports torch or albumentations."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from sam3_model.errors import ConfigError
from sam3_model.formats.categories import CategoryRules
from sam3_model.settings import LoraSettings

MODES = ("lora", "full", "heads")
SCHEDULES: tuple[str, ...] = ("inverse_sqrt", "cosine", "constant")


@dataclass
class ValidationConfig:
    """How validation predicts: score threshold of the cgF1 family, what COCO AP sees, the image panel."""

    score_threshold: float = 0.5  # official cgF1 threshold on sigmoid(logit) x sigmoid(presence)
    min_score: float = 0.05  # predictions below this are dropped before COCO AP (and never reach cgF1)
    max_detections: int = 100  # per (image, phrase), as COCO AP's maxDets
    panel_images: int = 4  # validation images drawn with their predicted masks (W&B panel or PNGs)


@dataclass
class TrainableConfig:
    """What trains: mode, LoRA, frozen components, activation checkpointing."""

    mode: Literal["lora", "full", "heads"] = "lora"  # adapters; every parameter outside `frozen`; heads only
    lora: LoraSettings = field(default_factory=LoraSettings)
    frozen: list[str] = field(default_factory=lambda: ["text"])  # components kept frozen (see sam3_model.adapters)
    activation_checkpointing: bool = False  # ViT and text layers recompute activations in backward


@dataclass
class OptimizerConfig:
    """AdamW settings: base lrs per component, ViT layer-wise decay, weight decay (defaults: the official recipe)."""

    lr: float = 8e-5  # everything but the vision and text encoders
    vision_lr: float = 2.5e-5
    text_lr: float = 5e-6
    layer_decay: float = 0.9
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        for name in ("lr", "vision_lr", "text_lr", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"optimizer {name}={getattr(self, name)} is negative; use a value >= 0")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"optimizer layer_decay={self.layer_decay} must be in (0, 1] (1 disables the decay)")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optimizer betas={self.betas} must be two values in [0, 1)")
        if self.eps <= 0:
            raise ConfigError(f"optimizer eps={self.eps} must be > 0")


@dataclass
class ScheduleConfig:
    """Which schedule, and its warmup / timescale / cooldown in optimizer steps (defaults: the official recipe)."""

    name: Literal["inverse_sqrt", "cosine", "constant"] = "inverse_sqrt"
    warmup_steps: int = 20
    timescale: int = 20  # inverse_sqrt only
    cooldown_steps: int = 20  # inverse_sqrt only: linear ramp to 0 over the last steps
    min_lr_ratio: float = 0.0  # cosine only: final factor at total_steps

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(f"unknown lr schedule {self.name!r}: choose from {', '.join(SCHEDULES)}")
        for name in ("warmup_steps", "cooldown_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"schedule {name}={getattr(self, name)} is negative; use a value >= 0")
        if self.timescale <= 0:
            raise ConfigError(f"schedule timescale={self.timescale} must be > 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"schedule min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")


@dataclass
class AugmentConfig:
    """Train-time augmentation. Flips and colour jitter are extras; the official recipe has neither.

    `color_jitter` is a strength s: brightness, contrast and saturation factors uniform in [max(0, 1 - s), 1 + s],
    hue shift uniform in [-s/4, s/4] (capped at 0.5), applied to every image; 0 turns it off.
    `scale_jitter` True is the official random square resize + random pad; False is a plain resize to S x S.
    """

    hflip: float = 0.0  # probability
    vflip: float = 0.0  # probability
    color_jitter: float = 0.0  # strength; 0 = off
    scale_jitter: bool = True

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ConfigError(f"augment.{name} must be a probability in [0, 1], got {value!r}")
        if not (isinstance(self.color_jitter, (int, float)) and math.isfinite(self.color_jitter)
                and self.color_jitter >= 0):
            raise ConfigError(f"augment.color_jitter must be a finite strength >= 0, got {self.color_jitter!r}")


@dataclass
class DatasetSpec:
    """One dataset: its annotation file and how it enters the mix."""

    path: str  # COCO instance JSON or SA-Co JSON
    format: str = "auto"  # "coco", "saco" or "auto" (detected)
    images: str | None = None  # image folder; default: the JSON's folder
    name: str | None = None  # default: the JSON's file stem
    weight: float = 1.0  # share of training draws, relative to the other training datasets
    max_images: int | None = None  # keep a fixed subset of this many images (data-size sweeps)
    hard_negatives: list[str] = field(default_factory=list)  # phrases absent from this dataset's images
    negatives_per_image: int = 3  # hard negatives sampled into each image's prompts (when the list is given)
    max_negatives: int | None = None  # training: keep at most this many annotated negative phrases per image draw
    phrases: list[str] | None = None  # keep only these phrases (e.g. a recipe's ontology); images left with none go
    exclude_categories: list[str] = field(default_factory=list)  # COCO category names left out with their annotations
    keep_placeholder_categories: bool = False  # keep Roboflow's root category and labelme's _background_ as phrases

    def category_rules(self) -> CategoryRules:
        """Which COCO categories are phrases: the same rules `sam3-adapt eval` applies to the same file."""
        return CategoryRules(exclude=tuple(self.exclude_categories),
                             keep_only=None if self.phrases is None else tuple(self.phrases),
                             keep_placeholders=self.keep_placeholder_categories)
