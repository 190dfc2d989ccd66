"""Shared fixtures: every test runs offline on small models built in code."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 so train-mode outputs are deterministic."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


@pytest.fixture
def tiny():
    """A seeded tiny SAM 3 and its offline processor."""
    from sam3_model.loading import load_model

    return load_model("tiny", seed=0)
