"""Shared fixtures: every test runs offline on small models built in code."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest
import torch

# Tiny models are overhead-bound: one thread is as fast, and does not collapse when other jobs share the cores.
torch.set_num_threads(1)


def random_prompt_batch(batch: int = 2, size: int = 112, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images with text and exemplar-box prompts, so every component (geometry too) is on the graph."""
    gen = torch.Generator().manual_seed(seed)
    return dict(
        pixel_values=torch.randn(batch, 3, size, size, generator=gen),
        input_ids=torch.randint(0, 49408, (batch, 8), generator=gen),
        attention_mask=torch.ones(batch, 8, dtype=torch.long),
        input_boxes=torch.tensor([[[0.5, 0.5, 0.2, 0.2]], [[0.3, 0.4, 0.2, 0.1]]])[:batch],
        input_boxes_labels=torch.ones(batch, 1, dtype=torch.long),
    )


@pytest.fixture
def tiny():
    """A seeded tiny SAM 3 and its offline processor."""
    from sam3_model.loading import load_model

    return load_model("tiny", seed=0)
