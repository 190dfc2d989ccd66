"""What would train: parameter counts per component and the trainable counts of each LoRA preset; and what it
would train on (the CPU's name, for reports of measured times)."""

from __future__ import annotations

import platform
from pathlib import Path

from .presets import FULL_SIZE_PRESET


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe(model: str = FULL_SIZE_PRESET, lora_rank: int = 16) -> None:
    """Print the parameter counts of `model` per component and per LoRA preset (presets counted on the meta
    device: no memory, no weights).

    Args:
        model: a preset (sam3-random, small, tiny), a local folder or a Hub id.
        lora_rank: the LoRA rank the trainable counts are given for.
    """
    import torch
    from transformers import Sam3Model

    from .adapters import LORA_PRESETS, LoraSettings, apply_lora, trainable_summary
    from .loading import is_explicit_path, load_model
    from .presets import PRESETS, build_config

    if model in PRESETS and not is_explicit_path(model):
        with torch.device("meta"):
            sam3 = Sam3Model(build_config(model))
    else:
        sam3, _ = load_model(model)
    total = sum(p.numel() for p in sam3.parameters())
    print(f"{model}: {total / 1e6:.2f}M parameters")
    for key, count in trainable_summary(sam3).items():
        if key.endswith("/total") and not key.startswith("all/"):
            print(f"  {key.removesuffix('/total'):<16}{count / 1e6:9.2f}M")
    for preset in LORA_PRESETS:
        lora_model = apply_lora(sam3, LoraSettings(preset=preset, r=lora_rank))
        trainable = sum(p.numel() for p in lora_model.parameters() if p.requires_grad)
        print(f"  LoRA {preset:<16} r={lora_rank}: {trainable / 1e6:.2f}M trainable ({100 * trainable / total:.2f}%)")
        sam3 = lora_model.unload()
