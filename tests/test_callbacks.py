"""Training callbacks on a tiny dummy LightningModule trained a few steps on CPU."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adapt.overlay import overlay_scale
from adapt.training.callbacks import (
    DataWaitMonitor,
    GpuMemoryMonitor,
    ValidationPanel,
    images_per_sec_monitor,
)
from sam3_model.errors import ConfigError
from sam3_model.records import ConceptPrompt, ConceptResult, Instance, encode_mask

IMAGES_PER_BATCH = 2
QUERIES_PER_IMAGE = 3
SIZE = 32


@dataclass
class FakeBatch:
    """Stands in for PhraseBatch: a tensor and the image / query counts."""

    x: torch.Tensor  # (N, 4)

    @property
    def num_images(self) -> int:
        return self.x.shape[0]

    @property
    def num_queries(self) -> int:
        return QUERIES_PER_IMAGE * self.x.shape[0]

    def to(self, device) -> FakeBatch:
        return FakeBatch(self.x.to(device))


class SleepyData(Dataset):
    """Items that take `sleep_s` each to load."""

    def __init__(self, n: int, sleep_s: float) -> None:
        self.n, self.sleep_s = n, sleep_s

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        time.sleep(self.sleep_s)
        return torch.full((4,), float(i))


def collate(items: list[torch.Tensor]) -> FakeBatch:
    return FakeBatch(torch.stack(items))


def square(phrase: str, top: int, left: int, side: int, size: int = SIZE, score: float = 1.0,
           image_id: int = 0) -> ConceptResult:
    """One phrase with one square instance (mask and box)."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top:top + side, left:left + side] = 1
    inst = Instance(mask=encode_mask(mask), box_xyxy_px=(left, top, left + side - 1, top + side - 1), score=score)
    return ConceptResult(image_id=image_id, prompt=ConceptPrompt(text=phrase), presence=score, instances=[inst],
                         image_size=(size, size))


def panel_entry(k: int, truth: bool = True) -> tuple:
    """A grey image with one predicted square (shifted by k pixels, so every entry's picture differs) and, with
    `truth`, one annotated square."""
    predicted = square("square", 8 + k, 8, 16, score=0.9, image_id=k)
    image = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    if not truth:
        return image, [predicted]
    return image, [predicted], [square("square", 6, 6, 16, image_id=k)]


class Dummy(pl.LightningModule):
    """A linear layer; `step_sleep_s` makes each training step slow; validation fills `validation_panel`."""

    def __init__(self, step_sleep_s: float = 0.0, panel_size: int = 3, val_sleep_s: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.step_sleep_s = step_sleep_s
        self.val_sleep_s = val_sleep_s
        self.panel_size = panel_size
        self.validation_panel: list = []

    def training_step(self, batch: FakeBatch, batch_idx: int) -> torch.Tensor:
        time.sleep(self.step_sleep_s)
        return self.layer(batch.x).pow(2).mean()

    def on_validation_epoch_start(self) -> None:
        self.validation_panel = []

    def validation_step(self, batch: FakeBatch, batch_idx: int) -> None:
        time.sleep(self.val_sleep_s)
        while len(self.validation_panel) < self.panel_size:
            self.validation_panel.append(panel_entry(len(self.validation_panel)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(n: int, sleep_s: float = 0.0) -> DataLoader:
    return DataLoader(SleepyData(n, sleep_s), batch_size=IMAGES_PER_BATCH, collate_fn=collate)


def trainer_for(tmp_path: Path, callbacks: list, max_steps: int, logger=None) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=logger or CSVLogger(tmp_path, name="run"),
        callbacks=callbacks, log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=1, limit_val_batches=1, default_root_dir=tmp_path,
    )


def read_metrics(trainer: pl.Trainer) -> list[dict[str, str]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


@pytest.mark.parametrize("data_sleep, step_sleep", [(0.06, 0.0), (0.0, 0.06)])
def test_data_wait_images_per_sec_and_no_gpu_keys(tmp_path, data_sleep, step_sleep):
    steps = 6
    wait = DataWaitMonitor(window=3)
    trainer = trainer_for(tmp_path, [wait, images_per_sec_monitor(window_size=3), GpuMemoryMonitor(every_n_steps=1)],
                          max_steps=steps)
    trainer.fit(Dummy(step_sleep_s=step_sleep), train_dataloaders=loader(2 * steps + 4, data_sleep))
    rows = read_metrics(trainer)

    fractions = column(rows, "perf/data_wait_fraction")
    step_times = column(rows, "perf/step_time_s")
    assert len(fractions) == steps and len(step_times) == steps
    assert all(0.0 <= f <= 1.0 for f in fractions)
    per_batch_sleep = IMAGES_PER_BATCH * data_sleep + step_sleep
    assert all(t >= per_batch_sleep * 0.95 for t in step_times)
    if data_sleep:  # waiting for the sleeping loader dominates
        assert min(fractions) > 0.6
        assert wait.wait_s >= (steps - 1) * IMAGES_PER_BATCH * data_sleep
    else:  # the slow training step dominates
        assert max(fractions) < 0.4
    assert wait.steps == steps
    assert 0.0 <= wait.wait_s <= wait.step_s
    assert wait.step_s == pytest.approx(sum(step_times))

    images_per_sec = column(rows, "train/device/samples_per_sec")
    queries_per_sec = column(rows, "train/device/items_per_sec")
    assert images_per_sec and len(images_per_sec) == len(queries_per_sec)
    assert all(0 < v <= IMAGES_PER_BATCH / per_batch_sleep * 1.05 for v in images_per_sec)
    assert queries_per_sec == pytest.approx([QUERIES_PER_IMAGE * v for v in images_per_sec])
    assert not [k for k in rows[0] if "gpu" in k]  # CPU: no GPU memory keys


def test_validation_is_not_data_wait(tmp_path):
    wait = DataWaitMonitor(window=2)
    trainer = trainer_for(tmp_path, [wait], max_steps=4)
    trainer.val_check_interval = 2  # validate after steps 2 and 4
    trainer.fit(Dummy(val_sleep_s=0.3), train_dataloaders=loader(8), val_dataloaders=loader(2))
    step_times = column(read_metrics(trainer), "perf/step_time_s")
    assert len(step_times) == 4 and max(step_times) < 0.2
    assert wait.steps == 4 and wait.step_s < 0.6


def test_lr_monitor_logs_each_named_group(tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor

    from adapt.training.optim import OptimizerConfig, build_optimizer
    from adapt.training.schedules import ScheduleConfig, build_scheduler, lr_factor

    schedule, total = ScheduleConfig(warmup_steps=2, cooldown_steps=2, timescale=2), 5

    class Scheduled(Dummy):
        def configure_optimizers(self):
            opt = build_optimizer(self, OptimizerConfig())
            return {"optimizer": opt, "lr_scheduler": {"scheduler": build_scheduler(opt, schedule, total),
                                                       "interval": "step"}}

    trainer = trainer_for(tmp_path, [LearningRateMonitor(logging_interval="step")], max_steps=total)
    trainer.fit(Scheduled(), train_dataloaders=loader(2 * total))
    rows = read_metrics(trainer)
    expected = [8e-5 * lr_factor(schedule, s, total) for s in range(total)]
    assert column(rows, "lr-AdamW/rest") == pytest.approx(expected)  # the linear weight
    assert column(rows, "lr-AdamW/rest.no_decay") == pytest.approx(expected)  # its bias


def test_gpu_memory_monitor_logs_on_cuda_only(monkeypatch):
    logged: dict[str, float] = {}
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda key, value, **kw: logged.__setitem__(key, value))
    monitor = GpuMemoryMonitor(every_n_steps=2)
    monitor.on_train_batch_end(None, module, None, None, 0)
    assert logged == {}
    module.device = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2**29)
    monitor.on_train_batch_end(None, module, None, None, 1)  # not a logging step
    assert logged == {}
    monitor.on_train_batch_end(None, module, None, None, 2)
    assert logged == {"perf/gpu_mem_max_gib": 3.0, "perf/gpu_mem_reserved_gib": 0.5}


def test_validation_panel_writes_pngs_with_csv_logger(tmp_path):
    panel = ValidationPanel(max_images=2)
    trainer = trainer_for(tmp_path, [panel], max_steps=2)
    trainer.fit(Dummy(panel_size=3), train_dataloaders=loader(4), val_dataloaders=loader(2))
    files = sorted((Path(trainer.log_dir) / "panels").iterdir())
    assert [f.name for f in files] == ["step0000002_0.png", "step0000002_1.png"]  # no sanity-check panel
    assert panel.saved == files
    with Image.open(files[0]) as image:
        pixels = np.asarray(image.convert("RGB"))
    k = overlay_scale(SIZE, SIZE)  # a small image is enlarged, its legend in a strip below it
    assert k > 1 and pixels.shape[0] > SIZE * k and pixels.shape[1] == SIZE * k
    assert not np.array_equal(pixels[16 * k, 16 * k], [128, 128, 128])  # the mask is drawn over the grey image
    assert np.array_equal(pixels[30 * k, 2 * k], [128, 128, 128])  # outside the mask, box, score and legend


def test_validation_panel_wandb_offline(tmp_path, monkeypatch):
    """The panel is W&B images with toggleable prediction and ground-truth layers, phrases as class labels."""
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger
    from wandb_records import read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="test")
    panel = ValidationPanel(max_images=2)
    trainer = trainer_for(tmp_path, [panel], max_steps=2, logger=logger)
    try:
        trainer.fit(Dummy(panel_size=3), train_dataloaders=loader(4), val_dataloaders=loader(2))
    finally:
        wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert panel.saved == [] and not list(tmp_path.rglob("panels"))
    run = read_run(runs[0])
    (row,) = [r for r in run.history if "val/predictions._type" in r]
    assert row["val/predictions.count"] == 2 and row["trainer/global_step"] == 2
    assert row["val/predictions.width"] >= 256 and row["val/predictions.height"] >= 256  # 32 px upscaled x8
    masks = row["val/predictions.all_masks"]
    assert len(masks) == 2 and all(set(m) == {"predictions", "ground_truth"} for m in masks)
    boxes = row["val/predictions.all_boxes"]
    assert all(set(b) == {"predictions", "ground_truth"} for b in boxes)
    assert row["val/predictions.captions"][0] == "image 0 (predicted/annotated): square 1/1"
    labels = run.config["_wandb"]["mask/class_labels"]  # W&B keeps class labels in the run's config
    for layer in ("predictions", "ground_truth"):
        assert labels[f"val/predictions_wandb_delimeter_{layer}"]["value"] == {"1": "square"}
    files = runs[0] / "files"
    (image_file,) = {files / f for f in row["val/predictions.filenames"][:1]}
    with Image.open(image_file) as image:
        assert min(image.size) >= 256
    with Image.open(files / masks[0]["predictions"]["path"]) as mask:
        class_map = np.asarray(mask)
    assert class_map.shape == (256, 256) and set(np.unique(class_map)) == {0, 1}
    assert class_map[8 * 8, 8 * 8] == 1 and class_map[8 * 8 - 1, 8 * 8] == 0  # the square, upscaled x8 (nearest)
    predicted_boxes = json.loads((files / boxes[0]["predictions"]["path"]).read_text())
    (box,) = predicted_boxes["box_data"]
    assert box["scores"] == {"score": pytest.approx(0.9)} and box["box_caption"] == "square 0.90"
    assert box["position"] == {"minX": 64.0, "minY": 64.0, "maxX": 184.0, "maxY": 184.0}


def test_panel_media_overlaps_upscaling_padding_and_no_truth():
    from adapt.training.panel_media import panel_media

    low = square("cat", 0, 0, 20, score=0.4)
    high = square("dog", 10, 10, 20, score=0.8)
    big_truth, small_truth = square("cat", 0, 0, 30), square("dog", 5, 5, 4)
    wide = Image.new("RGB", (64, 16), (9, 9, 9))  # short side 16: x16 -> 1024 x 256
    first, second = panel_media([(Image.new("RGB", (SIZE, SIZE)), [low, high], [small_truth, big_truth]),
                                 (wide, [], None)], min_side=256)
    assert first.image.size == second.image.size == (1024, 256)  # one size for the whole panel: padded
    assert first.masks["predictions"]["class_labels"] == {1: "cat", 2: "dog"}
    assert first.masks["ground_truth"]["class_labels"] == {1: "cat", 2: "dog"}  # one id per phrase in both layers
    pred = first.masks["predictions"]["mask_data"]  # (256, 1024); the 32 px image upscaled x8
    assert pred.shape == (256, 1024) and pred.dtype == np.uint8
    assert pred[15 * 8, 15 * 8] == 2  # overlap of cat (0.4) and dog (0.8): the highest score wins
    assert pred[5 * 8, 5 * 8] == 1 and pred[31 * 8, 31 * 8] == 0 and not pred[:, 256:].any()
    truth = first.masks["ground_truth"]["mask_data"]
    assert truth[6 * 8, 6 * 8] == 2 and truth[20 * 8, 20 * 8] == 1  # the small instance inside the big one shows
    assert [b["class_id"] for b in first.boxes["predictions"]["box_data"]] == [1, 2]
    assert "scores" not in first.boxes["ground_truth"]["box_data"][0]
    assert set(second.masks) == {"predictions"} and not second.masks["predictions"]["class_labels"]
    assert second.caption == "image ?: no instances"
    assert np.asarray(second.image)[255, 1023].tolist() == [9, 9, 9]  # 64 x 16 upscaled x16 fills the canvas


def test_validation_panel_rank_and_missing_panel(tmp_path):
    panel = ValidationPanel(max_images=4)
    trainer = SimpleNamespace(sanity_checking=False, loggers=[], log_dir=str(tmp_path), default_root_dir=tmp_path,
                              is_global_zero=False, global_step=5)
    module = SimpleNamespace(validation_panel=[panel_entry(0, truth=False)])
    panel.on_validation_epoch_end(trainer, module)  # rank 1: nothing drawn, the panel is emptied
    assert module.validation_panel == [] and not (tmp_path / "panels").exists()
    trainer.is_global_zero = True
    panel.on_validation_epoch_end(trainer, SimpleNamespace())  # no panel attribute: a no-op
    panel.on_validation_epoch_end(trainer, SimpleNamespace(validation_panel=[]))
    assert not (tmp_path / "panels").exists()
    panel.on_validation_epoch_end(trainer, SimpleNamespace(validation_panel=[panel_entry(0, truth=False)]))
    assert [p.name for p in (tmp_path / "panels").iterdir()] == ["step0000005_0.png"]


def test_invalid_arguments():
    with pytest.raises(ConfigError):
        DataWaitMonitor(window=0)
    with pytest.raises(ConfigError):
        GpuMemoryMonitor(every_n_steps=0)
    with pytest.raises(ConfigError):
        ValidationPanel(max_images=0)
    with pytest.raises(ConfigError):
        ValidationPanel(min_side=0)
    with pytest.raises(ConfigError):
        images_per_sec_monitor(window_size=1)
