"""Build or load a SAM 3 model and its processor: from a preset name, a local directory, or a Hub id."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

from .errors import ModelLoadError
from .notices import notice
from .presets import (  # noqa: F401 - DEFAULT_HUB_ID and is_explicit_path are part of this module's API
    DEFAULT_HUB_ID,
    PRESET_SPECS,
    PRESETS,
    RENAMED_PRESETS,
    build_config,
    init_for_scratch_training,
    input_size,
    is_explicit_path,
    renamed_preset_message,
)
from .tokenizer import build_offline_tokenizer



def build_processor(image_size: int = 1008) -> Sam3Processor:
    """A `Sam3Processor` for square inputs of `image_size` px, built offline (no Hub access)."""
    mask_size = 4 * (image_size // 14)  # mask logits are at 4x the ViT token grid (288 at 1008 px)
    image_processor = Sam3ImageProcessor(
        size={"height": image_size, "width": image_size}, mask_size={"height": mask_size, "width": mask_size}
    )
    return Sam3Processor(image_processor=image_processor, tokenizer=build_offline_tokenizer())


def _hub_error_message(source: str, err: Exception) -> str:
    text = f"{type(err).__name__}: {err}"
    if os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in text.lower() or "connect" in text.lower():
        hint = "the Hub cannot be reached; pass a local directory saved with save_pretrained, or a preset"
    elif "gated" in text.lower() or "401" in text or "403" in text or "restricted" in text.lower():
        hint = "the repository is gated: accept its licence on the Hub, run `hf auth login`, then retry"
    else:
        hint = "check the id, or pass a local directory saved with save_pretrained, or a preset"
    return f"cannot load model {source!r}: {hint} (presets: {', '.join(PRESETS)})"


def _load_processor(source: str, config: Sam3Config) -> Sam3Processor:
    """The saved processor when there is one; otherwise one built offline for the model's input size."""
    try:
        return Sam3Processor.from_pretrained(source)
    except Exception:  # noqa: BLE001 - no processor saved, or the Hub is unreachable: build it offline
        return build_processor(input_size(config))


def load_model(
    source: str = DEFAULT_HUB_ID,
    *,
    image_size: int | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> tuple[Sam3Model, Sam3Processor]:
    """Load (model, processor) from a preset name, a local `save_pretrained` or peft adapter directory, or a Hub id.

    Presets are random-init (`tiny` and `small` with an init that can learn from scratch, seeded by `seed`) and
    win over a folder of the same name unless the path is explicit (`./tiny`). An adapter directory (peft's
    `adapter_config.json`) is loaded on its base model and merged. Loaded models come back in eval mode.
    """
    if source in RENAMED_PRESETS and not is_explicit_path(source):
        raise ModelLoadError(renamed_preset_message(source))
    if source in PRESETS and not is_explicit_path(source):
        if Path(source).exists():
            notice(f"--model {source}: using the built-in preset; a folder named {source!r} is here too: "
                   f"pass ./{source} to load it")
        return _build_preset(source, image_size, seed, dtype)

    path = Path(source).expanduser()
    if is_explicit_path(source) and not path.exists():
        raise ModelLoadError(f"{source}: no such directory; pass a directory written by save_pretrained")
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"{source}: is a file; pass the directory written by save_pretrained")
    if path.is_dir() and not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            return _load_adapter(path, image_size, seed, dtype)
        raise ModelLoadError(f"{source}: no config.json here; pass a directory written by save_pretrained")
    try:
        model = Sam3Model.from_pretrained(source, dtype=dtype) if dtype else Sam3Model.from_pretrained(source)
    except Exception as err:  # noqa: BLE001 - every failure becomes one actionable line
        if path.is_dir():
            raise ModelLoadError(f"{source}: not a loadable SAM 3 checkpoint ({type(err).__name__}: {err})") from err
        raise ModelLoadError(_hub_error_message(source, err)) from err
    return model.eval(), _load_processor(source, model.config)


def _build_preset(name: str, image_size: int | None, seed: int,
                  dtype: torch.dtype | None) -> tuple[Sam3Model, Sam3Processor]:  # fmt: skip
    """A random-init preset model, seeded, and its offline processor."""
    config = build_config(name, image_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Sam3Model(config)
        if name in PRESET_SPECS:
            init_for_scratch_training(model)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), build_processor(input_size(config))


def _load_adapter(path: Path, image_size: int | None, seed: int,
                  dtype: torch.dtype | None) -> tuple[Sam3Model, Sam3Processor]:  # fmt: skip
    """A peft adapter directory: its base model (from `base_model_name_or_path`) with the adapter merged in."""
    from peft import PeftModel

    try:
        base_name = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path}/adapter_config.json: not readable JSON ({err})") from None
    if not isinstance(base_name, str) or not base_name:
        raise ModelLoadError(f"{path}/adapter_config.json: names no base_model_name_or_path to load the adapter on")
    base, processor = load_model(base_name, image_size=image_size, seed=seed, dtype=dtype)
    try:
        merged = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    except Exception as err:  # noqa: BLE001 - one actionable line
        raise ModelLoadError(f"{path}: the adapter does not fit its base model {base_name!r} "
                             f"({type(err).__name__}: {err})") from None
    return merged.eval(), processor
