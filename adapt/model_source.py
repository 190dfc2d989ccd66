"""What `--model` may name for inference (predict, eval, export): everything training leaves behind.

In order: a training checkpoint (`.ckpt`); a `fit` run folder (its `checkpoints/best-*.ckpt`, else `last.ckpt`);
a recipe run folder (its `model/`: an adapter or merged export); then whatever `sam3_model.load_model` takes:
a preset, a `save_pretrained` folder, a peft adapter folder (merged onto its base) or a Hub id. The model comes
back as a plain `Sam3Model` in eval mode (LoRA merged), with a line saying what was loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from transformers import Sam3Model, Sam3Processor

from sam3_model.errors import ModelLoadError
from sam3_model.export import merged_copy
from sam3_model.loading import is_explicit_path, load_model
from sam3_model.notices import notice, warn
from sam3_model.presets import PRESETS


@dataclass
class InferenceModel:
    """A plain `Sam3Model` ready to predict, its processor, and where it came from."""

    model: Sam3Model
    processor: Sam3Processor
    source: str  # what was loaded: the checkpoint file, the export folder, the preset or Hub id
    base_model: str  # the base it was adapted from (itself for a plain model), for model cards


def training_checkpoint(source: str | os.PathLike[str]) -> Path | None:
    """The `.ckpt` that `source` names: itself, or a `fit` run folder's best checkpoint, else its `last.ckpt`."""
    path = Path(source)
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such checkpoint file")
        return path
    if not path.is_dir() or (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return None
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    best = sorted(folder.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    return folder / "last.ckpt" if (folder / "last.ckpt").is_file() else None


def _recipe_model(source: str) -> Path | None:
    """A recipe run folder's `model/` export (adapter or merged)."""
    model = Path(source) / "model"
    if (model / "config.json").is_file() or (model / "adapter_config.json").is_file():
        return model
    return None


def load_for_inference(source: str, *, device: str | None = None, purpose: str = "predict") -> InferenceModel:
    """Load `source` for `purpose` (predict, evaluate, export): say what was loaded; warn about random weights."""
    from adapt.training.checkpoints import load_fine_tuner, read_checkpoint

    explicit_or_not_preset = is_explicit_path(source) or source not in PRESETS
    ckpt = training_checkpoint(source) if explicit_or_not_preset else None
    if ckpt is not None:
        module = load_fine_tuner(ckpt)
        base = str(read_checkpoint(ckpt)["hyper_parameters"].get("model", "unknown"))
        if str(ckpt) != str(source):
            notice(f"--model {source}: using the training checkpoint {ckpt}")
        model = merged_copy(module.model).eval()
        return InferenceModel(model.to(device) if device else model, module.processor, str(ckpt), base)
    exported = _recipe_model(source) if explicit_or_not_preset else None
    if exported is not None:
        notice(f"--model {source}: using the run's exported model {exported}")
        source = str(exported)
    model, processor = load_model(source)
    if source in PRESETS and not is_explicit_path(source):
        warn(f"--model {source} is a preset with random weights: its {purpose} results mean nothing; pass "
             "facebook/sam3, a fine-tuned export, a training checkpoint or a run folder")
    base = source
    adapter_config = Path(source) / "adapter_config.json"
    if adapter_config.is_file():
        import json

        base = str(json.loads(adapter_config.read_text()).get("base_model_name_or_path", source))
    return InferenceModel(model.to(device) if device else model, processor, source, base)
