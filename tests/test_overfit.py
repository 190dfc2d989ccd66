"""The objective trains: a tiny model overfits one image-phrase pair (the code path of `sam3-adapt overfit`)."""

from __future__ import annotations

import torch

from adapt.overfit import evaluate_pair, fit_pair, toy_pair
from sam3_model.adapters import prepare_for_training
from sam3_model.presets import input_size


def test_tiny_model_overfits_one_pair(tiny):
    torch.manual_seed(0)
    model, processor = tiny
    pair = toy_pair(input_size(model.config))
    iou_before, _ = evaluate_pair(model, processor, pair)
    model = prepare_for_training(model, lora=None)  # full fine-tuning, text encoder frozen (the default)
    losses = fit_pair(model, processor, pair, steps=300, lr=1e-3)
    assert losses[-1] <= 0.1 * losses[0], f"loss fell only from {losses[0]:.2f} to {losses[-1]:.2f}"
    iou, score = evaluate_pair(model, processor, pair)
    assert iou >= 0.9 > iou_before, f"mask IoU {iou_before:.3f} -> {iou:.3f}"
    assert score > 0.5
