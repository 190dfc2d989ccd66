"""The objective trains: a tiny model overfits one image-phrase pair (the code path of `sam3-adapt overfit`)."""

from __future__ import annotations

import csv
import json
import math

import lightning as L
import torch

from adapt import overfit
from adapt.overfit import evaluate_pair, fit_pair, overfit_module, run_overfit, toy_pair
from adapt.training.module import Sam3FineTuner
from sam3_model.adapters import LoraSettings


class StepCounter(L.Callback):
    """Counts the training steps Lightning runs and the loss it hands to `on_train_batch_end`."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_tiny_model_overfits_one_pair():
    torch.manual_seed(0)
    module = overfit_module("tiny", lr=1e-3, seed=0)  # full fine-tuning, text encoder frozen (the default)
    model, processor = module.model, module.processor
    pair = toy_pair(module.image_size)
    iou_before, _ = evaluate_pair(model, processor, pair)
    counter = StepCounter()
    losses = fit_pair(module, pair, steps=300, callbacks=[counter])
    assert len(losses) == 300 and losses == counter.losses  # every step ran through Lightning
    assert losses[-1] <= 0.1 * losses[0], f"loss fell only from {losses[0]:.2f} to {losses[-1]:.2f}"
    iou, score = evaluate_pair(model, processor, pair)
    assert iou >= 0.9 > iou_before, f"mask IoU {iou_before:.3f} -> {iou:.3f}"
    assert score > 0.5


def _record_trainers(monkeypatch, counter: StepCounter) -> list[L.Trainer]:
    """Make `run_overfit` build its trainer with `counter` among the callbacks; returns the trainers it builds."""
    trainers, build = [], overfit.build_trainer

    def recording_build_trainer(**kwargs):
        trainer = build(**{**kwargs, "callbacks": [*kwargs.get("callbacks", []), counter]})
        trainers.append(trainer)
        return trainer

    monkeypatch.setattr(overfit, "build_trainer", recording_build_trainer)
    return trainers


def test_run_overfit_trains_sam3_fine_tuner_through_lightning(tmp_path, monkeypatch):
    counter = StepCounter()
    trainers = _record_trainers(monkeypatch, counter)
    report = run_overfit("tiny", tmp_path, steps=4, lr=2e-3, progress=False)
    [trainer] = trainers
    module = trainer.lightning_module
    assert isinstance(module, Sam3FineTuner) and module.trainable_config.mode == "full"
    assert trainer.global_step == 4 and len(counter.losses) == 4
    assert trainer.gradient_clip_val == 0.1 and trainer.precision == "32-true"
    assert not any(m.p for m in module.model.modules() if isinstance(m, torch.nn.Dropout))
    # plain AdamW: one lr everywhere, no weight decay; cosine from 1 to 0 over the steps, no warmup
    [optimizer] = trainer.optimizers
    assert {(g["initial_lr"], g["weight_decay"]) for g in optimizer.param_groups} == {(2e-3, 0.0)}
    [schedule] = trainer.lr_scheduler_configs
    assert schedule.interval == "step"
    assert [round(schedule.scheduler.lr_lambdas[0](s), 6) for s in range(5)] == \
        [round(0.5 * (1 + math.cos(math.pi * s / 4)), 6) for s in range(5)]
    # what Lightning saw is what the job reports
    with open(tmp_path / "losses.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["loss"]) for r in rows] == counter.losses
    assert (report.first_loss, report.last_loss) == (counter.losses[0], counter.losses[-1])
    assert json.loads((tmp_path / "report.json").read_text())["last_loss"] == counter.losses[-1]


def test_run_overfit_with_lora_trains_the_adapters(tmp_path, monkeypatch):
    counter = StepCounter()
    trainers = _record_trainers(monkeypatch, counter)
    report = run_overfit("tiny", tmp_path, steps=2, lora=LoraSettings(preset="all_attn", r=4, alpha=8),
                         progress=False)
    module = trainers[0].lightning_module
    assert module.trainable_config.mode == "lora" and report.lora == "all_attn" and len(counter.losses) == 2
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and any("lora_" in n for n in trainable)
    assert (tmp_path / "model" / "config.json").is_file()
