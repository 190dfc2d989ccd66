"""Learning-rate schedules as a factor of every group's base lr, stepped once per optimizer step.

`inverse_sqrt` is the official SAM 3 fine-tuning schedule (training-objective reference, section 3); `cosine` and
`constant` are alternatives with the same linear warmup.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from adapt.settings import ScheduleConfig
from sam3_model.errors import ConfigError




def _warmup(step: int, warmup: int) -> float:
    return min(1.0, step / warmup) if warmup > 0 else 1.0


def lr_factor(config: ScheduleConfig, step: int, total_steps: int) -> float:
    """The lr factor of 0-based optimizer step `step` out of `total_steps` (T).

    inverse_sqrt (exactly the official formula, with w = warmup, t = timescale, c = cooldown):
    `[s > w ? 1/sqrt((s + t - w)/t) : 1] * min(1, s/w) * min(1, (T - s)/c)`; a zero warmup or cooldown drops its
    term; a warmup as long as the run or longer is cut to T - 1 steps. Every schedule's warmup is `min(1, s/w)`,
    so the first update (s = 0) uses lr 0, as the official code does (its scheduler is set before each
    `optimizer.step`). cosine: the warmup, then
    `m + (1 - m) * (1 + cos(pi * (s - w)/(T - w)))/2` down to m = min_lr_ratio at s = T (no cooldown term).
    constant: the warmup, then 1.
    """
    if total_steps < 1:
        raise ConfigError(f"total_steps={total_steps}: the schedule needs at least one optimizer step")
    s, w = step, min(config.warmup_steps, total_steps - 1)  # a warmup ends before the run does
    warm = _warmup(s, w)
    if config.name == "constant":
        return warm
    if config.name == "cosine":
        if s < w:
            return warm
        progress = min(1.0, (s - w) / max(1, total_steps - w))
        return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay = 1.0 / math.sqrt((s + config.timescale - w) / config.timescale) if s > w else 1.0
    cool = max(0.0, min(1.0, (total_steps - s) / config.cooldown_steps)) if config.cooldown_steps > 0 else 1.0
    return decay * warm * cool


def build_scheduler(optimizer: torch.optim.Optimizer, config: ScheduleConfig, total_steps: int) -> LambdaLR:
    """A LambdaLR scaling every group's lr by `lr_factor`; step it once per optimizer step (Lightning: interval="step")."""
    if total_steps < 1:
        raise ConfigError(f"total_steps={total_steps}: the schedule needs at least one optimizer step")
    return LambdaLR(optimizer, lambda step: lr_factor(config, step, total_steps))
