"""Lightning checkpoints of `Sam3FineTuner`: load one back safely, and export it with `sam3_model.export`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from peft import PeftModel

from sam3_model.errors import ModelLoadError
from sam3_model.export import EXPORT_KINDS, export_adapter, export_merged, export_video
from sam3_model.model_card import ModelCardInfo

TMP_PATTERN = ".*.ckpt.tmp-*"  # what an interrupted save leaves behind


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO: written to a temp file in the same folder and renamed into place; read
    with `weights_only=True` (nothing in a checkpoint executes), a bad file named in one line.

    A crash or a full disk during a save leaves the previous `last.ckpt` intact instead of a truncated one.
    """

    def load_checkpoint(self, path: str | os.PathLike[str], map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:  # noqa: ARG002 - always True
        return read_checkpoint(path)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike[str],
                        storage_options: Any | None = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict, loaded with `weights_only=True` (tensors and plain containers only: nothing executes)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - one actionable line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            reason = "it holds Python objects, which are never loaded (only tensors and plain values are)"
        raise ModelLoadError(f"{path}: not a readable Lightning checkpoint ({reason[:200]})") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not isinstance(hparams, dict) \
            or not {"model", "trainable"} <= set(hparams):
        raise ModelLoadError(f"{path}: not a sam3-adapt training checkpoint (no Sam3FineTuner state_dict and "
                             "hyper-parameters)")
    return ckpt


def remove_leftover_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temp files interrupted saves left in a checkpoint folder (their writer is gone); returns them."""
    removed = []
    for path in Path(folder).glob(TMP_PATTERN):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another run is writing it right now
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_fine_tuner(path: str | os.PathLike[str]):
    """The `Sam3FineTuner` saved in a checkpoint, with its trained weights, in eval mode on the CPU."""
    from adapt.training.module import Sam3FineTuner

    ckpt = read_checkpoint(path)
    try:
        module = Sam3FineTuner.from_checkpoint_hparams(ckpt["hyper_parameters"])
    except (KeyError, TypeError) as err:
        raise ModelLoadError(f"{path}: hyper-parameters do not describe a Sam3FineTuner ({err})") from None
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{path}: weights do not fit the model its hyper-parameters describe "
                             f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. "
                             f"{(missing or unexpected)[0]})")
    return module.eval()


def checkpoint_metrics(ckpt: dict[str, Any]) -> dict[str, float]:
    """The best monitored score and the step, from the checkpoint callback's state, for the model card."""
    metrics: dict[str, float] = {"global_step": float(ckpt.get("global_step", 0))}
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, dict):
            score, monitor = state.get("best_model_score"), state.get("monitor")
            if score is not None and monitor:
                metrics[f"best {monitor}"] = float(score)
    return metrics


def export_checkpoint(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], kind: str = "merged",
                      base_video_dir: str | None = None, data: str = "unspecified") -> Path:
    """Export a training checkpoint: merged HF directory, LoRA adapter alone, or a Sam3VideoModel detector."""
    if kind not in EXPORT_KINDS:
        raise ModelLoadError(f"export kind must be one of {', '.join(EXPORT_KINDS)}, got {kind!r}")
    ckpt = read_checkpoint(path)
    module = load_fine_tuner(path)
    h = ckpt["hyper_parameters"]
    trainable = h.get("trainable", {})
    recipe = f"sam3-adapt fit: mode {trainable.get('mode')}"
    if trainable.get("mode") == "lora":
        lora = trainable.get("lora", {})
        recipe += f", LoRA {lora.get('preset')} r={lora.get('r')}"
    card = ModelCardInfo(base_model=str(h["model"]), data=data, recipe=recipe + f"; checkpoint {Path(path).name}",
                         metrics=checkpoint_metrics(ckpt))
    if kind == "adapter":
        if not isinstance(module.model, PeftModel):
            raise ModelLoadError(f"{path}: trained in mode {trainable.get('mode')!r}, which has no LoRA adapter; "
                                 "export it merged instead")
        return export_adapter(module.model, out_dir, card)
    if kind == "video":
        return export_video(module.model, out_dir, card, base_video_dir=base_video_dir)
    return export_merged(module.model, module.processor, out_dir, card)
