"""`sam3-adapt export`: a training checkpoint, a run folder or a model (with an adapter) -> transformers, peft or
video checkpoints, each with a model card."""

from __future__ import annotations

from pathlib import Path

from sam3_model.errors import ConfigError


def export(out: Path, checkpoint: str | None = None, model: str | None = None, adapter: str | None = None,
           adapter_only: bool = False, video: bool = False, base_video: str | None = None,
           data: str = "unspecified", recipe: str = "unspecified", metrics: Path | None = None) -> None:
    """Export an adapted model for transformers (merged), peft (the adapter alone) or Sam3VideoModel.

    Args:
        out: the export folder to write (an existing export there is replaced, atomically).
        checkpoint: a training checkpoint (.ckpt) written by `fit`, or its run folder (the best checkpoint, else
            last.ckpt).
        model: instead of checkpoint: a Hub id, folder or preset (or a checkpoint or run folder too).
        adapter: with model: a peft adapter folder to merge onto it.
        adapter_only: write the LoRA adapter alone (peft format).
        video: write a Sam3VideoModel whose detector is the adapted model.
        base_video: with video: the video checkpoint whose tracker to keep.
        data: the training data, for the model card.
        recipe: the recipe, for the model card.
        metrics: a JSON object of metrics (e.g. eval's metrics.json), for the model card.
    """
    from adapt.model_source import training_checkpoint
    from sam3_model.presets import is_explicit_path
    from sam3_model.presets import PRESETS

    if video and adapter_only:
        raise ConfigError("choose one of --video and --adapter_only")
    if (checkpoint is None) == (model is None):
        raise ConfigError("give exactly one of --checkpoint (a training checkpoint or run folder) and --model")
    kind = "video" if video else "adapter" if adapter_only else "merged"
    names_preset = model in PRESETS and not is_explicit_path(model)
    if checkpoint is not None:
        ckpt = training_checkpoint(checkpoint)
        if ckpt is None:
            raise ConfigError(f"--checkpoint {checkpoint}: neither a .ckpt file nor a run folder with "
                              "checkpoints/best-*.ckpt or checkpoints/last.ckpt")
    else:  # --model may name a checkpoint or a run folder too, unless it is a preset or comes with --adapter
        ckpt = None if adapter or names_preset else training_checkpoint(model)
    if ckpt is not None:
        from adapt.training.checkpoints import export_checkpoint

        written = export_checkpoint(ckpt, out, kind, base_video_dir=base_video, data=data)
        print(f"wrote {kind} export of {ckpt} to {written}")
        return
    from sam3_model.export import export_model
    from sam3_model.model_card import ModelCardInfo

    card = ModelCardInfo(base_model=model, data=data, recipe=recipe, metrics=read_metrics(metrics) if metrics else {})
    written = export_model(model, out, kind, adapter=adapter, base_video=base_video, card=card)
    print(f"wrote {kind} export to {written}")


def read_metrics(path: Path) -> dict[str, float]:
    """A JSON object of numbers (e.g. eval's metrics.json), or one line naming the file."""
    from sam3_model.formats import read_json

    data = read_json(path, "metrics")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: metrics must be a JSON object of name: number, got {type(data).__name__}")
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
