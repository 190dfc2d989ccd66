"""The model layer's settings as plain dataclasses (no torch): LoRA and the training objective.

They are what configs and command lines name (`trainable.lora.r`, `objective.loss_mask`); the modules that use
them (`adapters`, `objective`) import them from here, so reading a config never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters: a preset from `LORA_PRESETS`, rank, alpha and dropout."""

    preset: str = "all_attn"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0


@dataclass
class ObjectiveConfig:
    """Weights and switches of the objective; defaults are the official SAM 3 fine-tuning values."""

    # one-to-one matcher costs (the only source of `HungarianMatcher`'s weights)
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    cost_focal_alpha: float = 0.25  # focal class cost of the matcher: alpha and gamma
    cost_focal_gamma: float = 2.0
    # loss weights
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    loss_ce: float = 20.0
    loss_presence: float = 20.0
    loss_mask: float = 200.0
    loss_dice: float = 10.0
    # IoU-aware BCE classification: positives get soft target clamp(p^a * IoU^(1-a), 0.01), weighted pos_weight;
    # negatives get BCE(x, 0) * p^gamma
    pos_weight: float = 10.0  # the official ODinW config uses 5.0
    iou_target_alpha: float = 0.25
    negative_gamma: float = 2.0
    pad_queries: int | None = None  # official: the per-query loss is averaged over 200 (padded) queries
    presence_alpha: float = 0.5
    presence_gamma: float = 0.0
    mask_focal_alpha: float = 0.25
    mask_focal_gamma: float = 2.0
    # branches
    aux_layers: bool = True  # box and classification losses on every decoder layer
    masks: bool = True  # mask focal + dice on the final layer, when targets carry masks
    one_to_many: bool = True  # DAC queries (needs `enable_dac` on the model)
    o2m_weight: float = 2.0
    # one-to-many matcher (the only source of `OneToManyMatcher`'s settings)
    o2m_alpha: float = 0.3
    o2m_threshold: float = 0.4
    o2m_topk: int = 4
    # memory: point-sampled mask loss (PointRend); None = every pixel of the target canvas (official)
    mask_points: int | None = None
    mask_oversample_ratio: float = 3.0
    mask_importance_ratio: float = 0.75
    # normalisation
    scale_by_sqrt_batch: bool = True
