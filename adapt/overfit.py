"""Sanity job: fit one synthetic image-phrase pair with SAM 3's official objective, then export the result.

It exercises the whole model layer (loading, DAC, the objective, LoRA, export) and the training path of
`sam3-adapt fit` (`Sam3FineTuner` run by a Lightning `Trainer` from `build_trainer`) in about a minute on a CPU
with the `tiny` preset, and shows the objective trains: loss curve, final mask IoU and score.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from adapt.data.batch import PhraseCollator, PhraseItem, SampleMeta
from adapt.settings import OptimizerConfig, ScheduleConfig, TrainableConfig
from adapt.training.module import Sam3FineTuner
from adapt.training.trainer import TRAINER_DEFAULTS, build_trainer, quiet_lightning
from sam3_model.adapters import LoraSettings, disable_dropout
from sam3_model.atomic import atomic_write_text
from sam3_model.export import export_merged
from sam3_model.model_card import ModelCardInfo
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


def pair_item(processor: Any, pair: ToyPair) -> PhraseItem:
    """The pair as a training item: the processor's resized, normalised image with its one phrase and instance."""
    pixel_values = pair_inputs(processor, pair)["pixel_values"][0]  # (3, S, S)
    size = int(pixel_values.shape[-1])
    return PhraseItem(
        pixel_values=pixel_values,
        phrases=[pair.phrase],
        boxes_cxcywh=[pair.targets.boxes_cxcywh[0]],  # (1, 4), normalised by S
        masks=[pair.mask[None].bool()],  # (1, S, S)
        meta=SampleMeta(image_id=0, dataset="overfit", height=size, width=size, index=0, size_h=size, size_w=size),
    )


class RepeatedItem(Dataset):
    """`length` copies of one item: one epoch of `length` steps on the same pair."""

    def __init__(self, item: PhraseItem, length: int) -> None:
        self.item, self.length = item, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> PhraseItem:
        """The item, whatever the index."""
        return self.item


def pair_loader(processor: Any, pair: ToyPair, steps: int) -> DataLoader:
    """A DataLoader serving the pair as a one-image, one-phrase `PhraseBatch` at each of `steps` steps."""
    return DataLoader(RepeatedItem(pair_item(processor, pair), steps), batch_size=1, shuffle=False, num_workers=0,
                      collate_fn=PhraseCollator(processor.tokenizer))


def overfit_module(model_source: str, lr: float = 1e-3, seed: int = 0,
                   lora: LoraSettings | None = None) -> Sam3FineTuner:
    """A `Sam3FineTuner` that overfits: full (or `lora`), text frozen, no dropout, plain AdamW at `lr`, cosine to 0."""
    # plain AdamW: one lr for every component, no layer decay, no weight decay; cosine from lr to 0, no warmup
    trainable = TrainableConfig(mode="lora" if lora else "full", lora=lora or LoraSettings())
    optimizer = OptimizerConfig(lr=lr, vision_lr=lr, text_lr=lr, layer_decay=1.0, weight_decay=0.0)
    schedule = ScheduleConfig(name="cosine", warmup_steps=0, min_lr_ratio=0.0)
    module = Sam3FineTuner(model=model_source, trainable=trainable, optimizer=optimizer, schedule=schedule, seed=seed)
    disable_dropout(module.model)  # overfitting one pair measures the objective, not regularisation
    return module


class LossHistory(L.Callback):
    """The training loss of every step, read from `on_train_batch_end`'s outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Record this step's loss."""
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        self.losses.append(float(loss))


def fit_pair(module: Sam3FineTuner, pair: ToyPair, steps: int, progress: bool = False,
             callbacks: Sequence[L.Callback] = ()) -> list[float]:
    """Train `module` on the pair for `steps` steps with Lightning (`build_trainer`); returns the loss of every step."""
    history = LossHistory()
    # one epoch of `steps` batches; gradient clipping: build_trainer's default (the official 0.1)
    trainer = build_trainer(accelerator="auto", devices=1, max_steps=steps, max_epochs=1, precision="32-true",
                            logger=False, enable_checkpointing=False, enable_progress_bar=progress,
                            num_sanity_val_steps=0, callbacks=[history, *callbacks], quiet=True)
    loader = pair_loader(module.processor, pair, steps)
    module.train()  # evaluation may have left it in eval mode
    with warnings.catch_warnings(), quiet_lightning():
        for message in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                        ".*overridden `transfer_batch_to_device`.*", ".*flops_per_batch.*",
                        ".*no `val_dataloader`.*", ".*LeafSpec.*"):
            warnings.filterwarnings("ignore", message=message)  # expected of a one-pair run without validation
        trainer.fit(module, train_dataloaders=loader)
    module.eval()
    return history.losses


@torch.no_grad()
def evaluate_pair(model: torch.nn.Module, processor, pair: ToyPair) -> tuple[float, float]:
    """(mask IoU, score) of the best-scoring instance against the pair's mask."""
    model.eval()
    device = next(model.parameters()).device
    out = model(**{k: v.to(device) for k, v in pair_inputs(processor, pair).items()})
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
    module = overfit_module(model_source, lr=lr, seed=seed, lora=lora)
    model, processor = module.model, module.processor
    pair = toy_pair(module.image_size, seed)
    iou_before, _ = evaluate_pair(model, processor, pair)  # LoRA starts as the identity: the base model's IoU
    losses = fit_pair(module, pair, steps, progress=progress)
    iou_after, score_after = evaluate_pair(model, processor, pair)

    with open(out / "losses.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss"])
        writer.writerows(enumerate(losses))
    _plot_losses(losses, out / "losses.png")
    export_dir = out / "model"
    card = ModelCardInfo(
        base_model=model_source, data=f"one synthetic image with the phrase {pair.phrase!r}",
        recipe=f"sam3-adapt overfit: {steps} AdamW steps, lr {lr}, cosine, gradient clipping "
               f"{TRAINER_DEFAULTS['gradient_clip_val']}, official objective"
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
