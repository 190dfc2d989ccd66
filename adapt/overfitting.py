"""`sam3-adapt overfit`: the sanity check that the objective trains (see `adapt.overfit`)."""

from __future__ import annotations

from pathlib import Path


def overfit(model: str = "tiny", steps: int = 300, lr: float = 1e-3, seed: int = 0, lora: str | None = None,
            lora_rank: int = 16, out: Path = Path("runs/overfit")) -> None:
    """Fit one synthetic image-phrase pair with the official objective through `fit`'s path (Sam3FineTuner and
    Lightning), then export the merged model.

    Args:
        model: a preset (tiny, small), a local folder or a Hub id.
        steps: optimizer steps.
        lr: learning rate of every parameter (cosine decay to 0, no warmup).
        seed: seed of the pair and of the model's random initialisation.
        lora: a LoRA preset (vision_attn, detr_attn, all_attn, all_attn_heads); unset: full fine-tuning.
        lora_rank: the LoRA rank (alpha = 2 x rank).
        out: the folder to write losses.csv, losses.png, report.json and the merged model to.
    """
    from sam3_model.settings import LoraSettings

    from .overfit import run_overfit

    settings = LoraSettings(preset=lora, r=lora_rank, alpha=2 * lora_rank) if lora else None
    report = run_overfit(model, out, steps=steps, lr=lr, seed=seed, lora=settings)
    print(f"loss {report.first_loss:.2f} -> {report.last_loss:.2f} ({100 * report.loss_drop:.1f}% lower); "
          f"mask IoU {report.mask_iou_before:.3f} -> {report.mask_iou_after:.3f}; score {report.score_after:.3f}")
    print(f"wrote {out}/report.json, losses.csv, losses.png and the merged model in {report.export_dir}")
