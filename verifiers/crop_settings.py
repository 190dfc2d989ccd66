"""How the crop-classifier verifier crops and trains (torch-free, so a recipe's `verifier_training` section reads
fast; `verifiers.crop_classifier` does the work)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CropClassifierConfig:
    """Crop geometry and training settings of the crop classifier (verifiers.crop_classifier), trained on
    human-verified labels."""

    crop_size: int = 32  # crops are resized to crop_size x crop_size
    margin: float = 0.15  # box enlarged by this fraction of its side on each side
    width: int = 32  # channels of the first conv (doubled twice)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    background_per_image: int = 1  # random background crops per image, negatives for every phrase
    threshold: float = 0.5  # accept when P(phrase) >= threshold
    seed: int = 0
