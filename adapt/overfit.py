"""Sanity job: fit one synthetic image-phrase pair with SAM 3's official objective, then export the result.

It exercises the whole model layer (loading, DAC, the objective, LoRA, export) in about a minute on a CPU
with the `tiny` preset, and shows the objective trains: loss curve, final mask IoU and score.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from sam3_model.adapters import LoraSettings, disable_dropout, prepare_for_training
from sam3_model.dac import enable_dac
from sam3_model.detector import run_detector
from sam3_model.export import export_merged
from sam3_model.loading import load_model
from sam3_model.atomic import atomic_write_text
from sam3_model.model_card import ModelCardInfo
from sam3_model.objective import ObjectiveConfig, Sam3Criterion
from sam3_model.presets import input_size
from sam3_model.targets import ConceptTargets


@dataclass
class ToyPair:
    """One image with one instance of `phrase`: the model inputs and the ground truth."""

    image: Image.Image  # RGB, size x size
    phrase: str
    mask: torch.Tensor  # (S, S) {0, 1}
    targets: ConceptTargets


def toy_pair(size: int, seed: int = 0) -> ToyPair:
    """A red square on dim noise, described as "red square"."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size, size, 3)) * 0.3 * 255).astype(np.uint8)
    y0, x0, side = int(0.27 * size), int(0.18 * size), int(0.45 * size)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[y0 : y0 + side, x0 : x0 + side] = 1
    pixels[mask.astype(bool), 0] = 230
    box_cxcywh = torch.tensor([[(x0 + side / 2) / size, (y0 + side / 2) / size, side / size, side / size]])
    mask_t = torch.from_numpy(mask).float()
    return ToyPair(Image.fromarray(pixels), "red square", mask_t, ConceptTargets([box_cxcywh], [mask_t[None]]))


def pair_inputs(processor, pair: ToyPair) -> dict[str, torch.Tensor]:
    """Model inputs for the pair (the processor's resize, normalisation and tokenisation)."""
    encoded = processor(images=pair.image, text=pair.phrase, return_tensors="pt")
    return {k: encoded[k] for k in ("pixel_values", "input_ids", "attention_mask")}


def fit_pair(model: torch.nn.Module, processor, pair: ToyPair, steps: int, lr: float,
             objective: ObjectiveConfig | None = None, progress: bool = False) -> list[float]:
    """Train `model` on the pair for `steps` AdamW steps with cosine decay; returns the loss of every step."""
    disable_dropout(model)  # overfitting one pair measures the objective, not regularisation
    enable_dac(model)
    model.train()
    inputs = pair_inputs(processor, pair)
    criterion = Sam3Criterion(objective)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = []
    for _ in tqdm(range(steps), desc="fit", disable=not progress):
        loss, _ = criterion(run_detector(model, **inputs), pair.targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def evaluate_pair(model: torch.nn.Module, processor, pair: ToyPair) -> tuple[float, float]:
    """(mask IoU, score) of the best-scoring instance against the pair's mask."""
    model.eval()
    out = model(**pair_inputs(processor, pair))
    scores = out.pred_logits.sigmoid() * out.presence_logits.sigmoid()  # (1, Q)
    best = int(scores[0].argmax())
    size = tuple(pair.mask.shape)
    pred = F.interpolate(out.pred_masks[:, best : best + 1].float(), size=size, mode="bilinear",
                         align_corners=False)[0, 0].sigmoid() > 0.5
    gt = pair.mask.bool()
    iou = float((pred & gt).sum() / (pred | gt).sum().clamp(min=1))
    return iou, float(scores[0, best])


@dataclass
class OverfitReport:
    """What the overfit job measured."""

    model: str
    steps: int
    lr: float
    lora: str | None
    first_loss: float
    last_loss: float
    loss_drop: float
    mask_iou_before: float
    mask_iou_after: float
    score_after: float
    export_dir: str


def _plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("SAM 3 objective (log)")
    ax.set_title("Overfitting one image-phrase pair")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_overfit(model_source: str, out_dir: str | Path, steps: int = 300, lr: float = 1e-3, seed: int = 0,
                lora: LoraSettings | None = None, progress: bool = True) -> OverfitReport:
    """Fit one toy pair, write losses (csv, png), a report (json) and the merged model export to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, processor = load_model(model_source, seed=seed)
    pair = toy_pair(input_size(model.config), seed)
    iou_before, _ = evaluate_pair(model, processor, pair)
    model = prepare_for_training(model, lora=lora)
    losses = fit_pair(model, processor, pair, steps, lr, progress=progress)
    iou_after, score_after = evaluate_pair(model, processor, pair)

    with open(out / "losses.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss"])
        writer.writerows(enumerate(losses))
    _plot_losses(losses, out / "losses.png")
    export_dir = out / "model"
    card = ModelCardInfo(
        base_model=model_source, data=f"one synthetic image with the phrase {pair.phrase!r}",
        recipe=f"sam3-adapt overfit: {steps} AdamW steps, lr {lr}, cosine, official objective"
               + (f", LoRA {lora.preset} r={lora.r}" if lora else ", full fine-tuning"),
        metrics={"mask_iou": iou_after, "score": score_after, "loss_drop": 1 - losses[-1] / losses[0]},
        notes="A sanity check that the objective trains, not a useful model.",
    )
    export_merged(model, processor, export_dir, card)
    report = OverfitReport(
        model=model_source, steps=steps, lr=lr, lora=lora.preset if lora else None, first_loss=losses[0],
        last_loss=losses[-1], loss_drop=1 - losses[-1] / losses[0], mask_iou_before=iou_before,
        mask_iou_after=iou_after, score_after=score_after, export_dir=str(export_dir),
    )
    atomic_write_text(out / "report.json", json.dumps(asdict(report), indent=2))
    return report
