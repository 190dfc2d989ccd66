"""Export an adapted `Sam3Model`: merged weights, the LoRA adapter alone, or a `Sam3VideoModel` checkpoint.

Every export is a directory written next to its target under a temporary name, then renamed into place, so a
crash never leaves a half-written export; an existing export at the target is replaced. The caller's model is
never modified: LoRA is merged into a deep copy.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from peft import PeftModel
from torch import nn
from transformers import Sam3Config, Sam3Model, Sam3Processor, Sam3VideoConfig, Sam3VideoModel

from .errors import ConfigError, ModelLoadError
from .atomic import umask
from .atomic import atomic_write_text
from .model_card import ModelCardInfo, write_model_card
from .presets import PRESETS

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def merged_copy(model: nn.Module) -> Sam3Model:
    """A plain `Sam3Model` with any LoRA merged in (a merged deep copy; a plain model is returned as is)."""
    if isinstance(model, PeftModel):
        model = copy.deepcopy(model).merge_and_unload()
    if not isinstance(model, Sam3Model):
        raise ConfigError(f"expected a Sam3Model or a peft-wrapped one, got {type(model).__name__}")
    return model


def _check_replaceable(target: Path) -> None:
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir() or target.is_symlink():
        raise ConfigError(f"{target}: exists and is not a directory; choose another output directory")
    entries = {p.name for p in target.iterdir()}
    is_export = bool(entries & {"config.json", "adapter_config.json"}) and bool(entries & set(_WEIGHT_FILES))
    if entries and not is_export:
        raise ConfigError(f"{target}: a non-empty directory that is not an export (no config and weights); "
                          "refusing to replace it; choose another output directory")


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`, replacing an existing directory there without ever losing both."""
    if not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp directory next to `out_dir`; on success it replaces `out_dir`, on error it is removed."""
    target = Path(out_dir).expanduser().absolute()
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it owner-only; give it an ordinary directory's mode
        yield tmp
        for path in tmp.rglob("*"):  # transformers writes model.safetensors owner-only (0600); exports are shared
            if path.is_file() and not path.is_symlink():
                os.chmod(path, 0o666 & ~umask())
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_merged(
    model: nn.Module, processor: Sam3Processor, out_dir: str | os.PathLike[str], card: ModelCardInfo
) -> Path:
    """Save a plain `Sam3Model` (LoRA merged, safetensors), its processor and a model card to `out_dir`."""
    merged = merged_copy(model)
    target = Path(out_dir)
    with atomic_directory(target) as tmp:
        merged.save_pretrained(tmp)  # safetensors: the only format of transformers 5
        processor.save_pretrained(tmp)
        write_model_card(card, "merged", tmp / "README.md")
    return target


def _name_base_model(adapter_config: Path, base_model_id: str) -> None:
    """Record the card's base model in the saved adapter config when peft left it empty (preset-built bases)."""
    config = json.loads(adapter_config.read_text())
    if not config.get("base_model_name_or_path"):
        config["base_model_name_or_path"] = base_model_id
        atomic_write_text(adapter_config, json.dumps(config, indent=2, sort_keys=True) + "\n")


def export_adapter(peft_model: PeftModel, out_dir: str | os.PathLike[str], card: ModelCardInfo) -> Path:
    """Save the LoRA adapter alone in peft's format (adapter_config.json, adapter_model.safetensors) with a card."""
    if not isinstance(peft_model, PeftModel):
        raise ConfigError(f"export_adapter needs a peft-wrapped model, got {type(peft_model).__name__}; "
                          "use export_merged for a plain Sam3Model")
    if card.base_model in PRESETS:  # random weights built in code: no Hub id or folder to load them from
        card = replace(card, notes="\n\n".join(n for n in (card.notes, PRESET_BASE_NOTE.format(card.base_model)) if n))
    target = Path(out_dir)
    with atomic_directory(target) as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        _name_base_model(tmp / "adapter_config.json", card.base_model)
        write_model_card(card, "adapter", tmp / "README.md")  # replaces peft's template card
    return target


PRESET_BASE_NOTE = (
    "**This adapter cannot be used outside sam3-adapt.** Its base model, `{0}`, is one of sam3-adapt's "
    "random-weight presets, built in code (`sam3_model.load_model('{0}', seed=...)` with the training seed), "
    "so there is no Hub id or folder that plain peft could load it onto. Export the checkpoint merged "
    "(`sam3-adapt export --checkpoint ... --out DIR`) for a model that loads in plain transformers.")


def _check_tracker_fits(detector: Sam3Config, video: Sam3VideoConfig) -> None:
    width = detector.vision_config.fpn_hidden_size
    tracker = video.tracker_config
    tracker_width = tracker.mask_decoder_config.hidden_size
    if tracker_width != width or tracker.memory_attention_hidden_size != width:
        raise ConfigError(
            f"the video config's tracker is {tracker_width} wide but the detector's FPN is {width}: they must be "
            "equal (the tracker neck copies the detector neck); build the tracker config for this width"
        )
    if tracker.image_size != detector.vision_config.backbone_config.image_size:
        raise ConfigError(f"tracker image size {tracker.image_size} differs from the detector's "
                          f"{detector.vision_config.backbone_config.image_size}")


def _video_model(detector: Sam3Model, video_config: Sam3VideoConfig | None,
                 base_video_dir: str | os.PathLike[str] | None) -> tuple[Sam3VideoModel, str]:
    """A video model to receive `detector`'s weights, and a card note on where its tracker comes from."""
    if base_video_dir is not None:
        try:
            video = Sam3VideoModel.from_pretrained(base_video_dir)
        except Exception as err:  # noqa: BLE001 - one actionable line
            raise ModelLoadError(f"{base_video_dir}: not a loadable Sam3VideoModel checkpoint "
                                 f"({type(err).__name__}: {err})") from err
        return video, (f"The tracker (`tracker_model`, `tracker_neck`) is the base video checkpoint's, unchanged "
                       f"(`{base_video_dir}`); only `detector_model` holds adapted weights.")
    config = copy.deepcopy(video_config) if video_config is not None else Sam3VideoConfig()
    config.detector_config = copy.deepcopy(detector.config)
    _check_tracker_fits(config.detector_config, config)
    video = Sam3VideoModel(config)
    return video, ("**The tracker (`tracker_model`, `tracker_neck`) is randomly initialised**: this checkpoint "
                   "detects like the adapted model but cannot track until its tracker is trained or replaced by "
                   "a pretrained one (export again with a base video checkpoint).")


def export_video(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    card: ModelCardInfo,
    video_config: Sam3VideoConfig | None = None,
    base_video_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Save a `Sam3VideoModel` whose `detector_model` is the (merged) adapted model.

    With `base_video_dir` the tracker comes from that video checkpoint; otherwise a fresh video model is built
    from `video_config` (default `Sam3VideoConfig()`) with the adapted model's config as detector config and a
    randomly initialised tracker, which the card states.
    """
    if video_config is not None and base_video_dir is not None:
        raise ConfigError("pass either video_config (fresh tracker) or base_video_dir (its tracker), not both")
    detector = merged_copy(model)
    video, tracker_note = _video_model(detector, video_config, base_video_dir)
    try:
        video.detector_model.load_state_dict(detector.state_dict(), strict=True)
    except RuntimeError as err:
        raise ConfigError(f"the adapted model does not fit the video model's detector: {err}") from err
    notes = "\n\n".join(n for n in (card.notes, tracker_note) if n)
    target = Path(out_dir)
    with atomic_directory(target) as tmp:
        video.save_pretrained(tmp)
        write_model_card(replace(card, notes=notes), "video", tmp / "README.md")
    return target


EXPORT_KINDS = ("merged", "adapter", "video")


def export_model(model: str, out: str | os.PathLike[str], kind: str = "merged", adapter: str | None = None,
                 base_video: str | None = None, card: ModelCardInfo | None = None) -> Path:
    """Export a model (a Hub id, folder or preset; `adapter`: a peft adapter folder merged onto it) as `kind`:
    "merged" (transformers), "adapter" (the peft adapter re-exported) or "video" (a Sam3VideoModel)."""
    from .loading import is_explicit_path, load_model
    from .notices import warn

    if kind not in EXPORT_KINDS:
        raise ConfigError(f"export kind must be one of {', '.join(EXPORT_KINDS)}, got {kind!r}")
    if model in PRESETS and not is_explicit_path(model):
        warn(f"--model {model} is a preset with random weights: the export is not a trained model")
    if kind == "adapter" and not adapter:
        raise ConfigError("--adapter_only with --model needs --adapter (the adapter to re-export)")
    base, processor = load_model(model)
    if adapter:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"{adapter}: no adapter_config.json; pass a directory written by an adapter export")
        base = PeftModel.from_pretrained(base, adapter)
    card = card or ModelCardInfo(base_model=model, data="unspecified", recipe="unspecified")
    if kind == "adapter":
        return export_adapter(base, out, card)
    if kind == "merged":
        return export_merged(base, processor, out, card)
    return export_video(base, out, card, base_video_dir=base_video)
