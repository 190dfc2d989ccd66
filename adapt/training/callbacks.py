"""Training callbacks: data-wait and step time, images/sec, GPU memory, and a panel of validation predictions.

Keys logged (all `on_step`): `perf/data_wait_fraction`, `perf/step_time_s` (DataWaitMonitor);
`train/device/samples_per_sec` = images/s per device, `train/device/items_per_sec` = phrase queries/s per device,
and with several devices `train/samples_per_sec`, `train/items_per_sec` for all of them (ThroughputMonitor, see
`images_per_sec_monitor`); `perf/gpu_mem_max_gib`, `perf/gpu_mem_reserved_gib` (GpuMemoryMonitor, CUDA only).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ThroughputMonitor
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from adapt.overlay import render_overlay
from adapt.training.panel_media import panel_media
from sam3_model.atomic import atomic_write
from sam3_model.errors import ConfigError

GIB = 2**30


class DataWaitMonitor(Callback):
    """Time spent waiting for data per training step, as a running fraction of the step time.

    A step runs from the end of the previous batch (`on_train_batch_end`, or the epoch start for the first) to the
    end of this one; its wait is the part before `on_train_batch_start`: fetching (and, with Lightning's one-batch
    prefetch, fetching the next batch), collating, moving to the device, and whatever other callbacks do at batch
    end. Validation runs are excluded. On CUDA the device is synchronised at batch end (`sync_cuda`), so queued
    kernels count as compute rather than wait. Totals over the run: `wait_s`, `step_s`, `steps`.
    """

    def __init__(self, window: int = 50, sync_cuda: bool = True) -> None:
        super().__init__()
        if window < 1:
            raise ConfigError(f"DataWaitMonitor window={window} must be >= 1")
        self.window = window
        self.sync_cuda = sync_cuda
        self.wait_s = 0.0
        self.step_s = 0.0
        self.steps = 0
        self._recent: deque[tuple[float, float]] = deque(maxlen=window)  # (wait, step) of the last steps
        self._last_end: float | None = None
        self._start: float | None = None

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if self.sync_cuda and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start timing the epoch's first step."""
        self._last_end = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """The data has arrived: the wait is over."""
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Account the step and log the running wait fraction and this step's time."""
        self._sync(pl_module)
        now = time.perf_counter()
        if self._start is None or self._last_end is None:
            self._last_end = now
            return
        wait, step = max(0.0, self._start - self._last_end), now - self._last_end
        self._last_end, self._start = now, None
        self.wait_s += wait
        self.step_s += step
        self.steps += 1
        self._recent.append((wait, step))
        total = sum(s for _, s in self._recent)
        fraction = sum(w for w, _ in self._recent) / total if total > 0 else 0.0
        pl_module.log("perf/data_wait_fraction", fraction, on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("perf/step_time_s", step, on_step=True, on_epoch=False, batch_size=1)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Validation inside the training loop is not waiting for training data."""
        if self._last_end is not None:
            self._last_end = time.perf_counter()


def _num_images(batch: Any) -> int:
    return int(batch.num_images)


def _num_queries(batch: Any) -> int:
    return int(batch.num_queries)


def images_per_sec_monitor(window_size: int = 20) -> ThroughputMonitor:
    """Lightning's ThroughputMonitor counting images (`batch.num_images`) and phrase queries (`batch.num_queries`).

    It logs `train/device/samples_per_sec` (images/s per device) and `train/device/items_per_sec` (queries/s), plus
    global `train/samples_per_sec`, `train/items_per_sec` on several devices, every `log_every_n_steps` once
    `window_size` steps have run (the same under `validate/`). Batches need `num_images` and `num_queries`, with at
    least as many queries as images over the run (ThroughputMonitor checks it). It warns once that the module has
    no `flops_per_batch`; define one to get MFU.
    """
    if window_size < 2:
        raise ConfigError(f"images_per_sec_monitor window_size={window_size} must be >= 2")
    return ThroughputMonitor(batch_size_fn=_num_images, length_fn=_num_queries, window_size=window_size)


class GpuMemoryMonitor(Callback):
    """Every `every_n_steps` training steps on CUDA, log peak allocated and current reserved GPU memory (GiB)."""

    def __init__(self, every_n_steps: int = 50) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ConfigError(f"GpuMemoryMonitor every_n_steps={every_n_steps} must be >= 1")
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Log `perf/gpu_mem_max_gib` and `perf/gpu_mem_reserved_gib`; nothing off CUDA."""
        device = pl_module.device
        if device.type != "cuda" or batch_idx % self.every_n_steps:
            return
        pl_module.log("perf/gpu_mem_max_gib", torch.cuda.max_memory_allocated(device) / GIB, on_step=True,
                      on_epoch=False, batch_size=1)
        pl_module.log("perf/gpu_mem_reserved_gib", torch.cuda.memory_reserved(device) / GIB, on_step=True,
                      on_epoch=False, batch_size=1)


def _save_png_atomic(image: Image.Image, path: Path) -> None:
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


class ValidationPanel(Callback):
    """Show the module's `validation_panel` at each validation end: W&B mask overlays, else PNG files.

    The module fills `pl_module.validation_panel` during validation with `(PIL image, predictions)` or
    `(PIL image, predictions, ground truth)` entries, each a list of `ConceptResult`; the first `max_images` are
    shown. With a `WandbLogger` they are logged as `val/predictions`: W&B images with `predictions` and
    `ground_truth` mask and box layers one can toggle, class labels the phrases, box captions the scores (see
    `adapt.training.panel_media`), small images upscaled to `min_side` px on the short side. Otherwise the
    predictions are drawn with `render_overlay` and written (atomically) to
    `{trainer.log_dir or default_root_dir}/panels/step{global_step:07d}_{k}.png`. Global rank 0 draws; every rank
    then empties the list. Sanity-check validation is skipped.
    """

    def __init__(self, max_images: int = 8, key: str = "val/predictions", min_side: int = 256) -> None:
        super().__init__()
        if max_images < 1:
            raise ConfigError(f"ValidationPanel max_images={max_images} must be >= 1")
        if min_side < 1:
            raise ConfigError(f"ValidationPanel min_side={min_side} must be >= 1")
        self.max_images = max_images
        self.key = key
        self.min_side = min_side
        self.saved: list[Path] = []  # PNG files written so far

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Render and log or save the panel, then empty it."""
        if trainer.sanity_checking:
            return
        wandb = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        # trainer.log_dir broadcasts: every rank must call it, whether or not it has a panel.
        root = None if wandb is not None else Path(trainer.log_dir or trainer.default_root_dir)
        panel = getattr(pl_module, "validation_panel", None) or []
        entries = list(panel[: self.max_images])
        if isinstance(panel, list):
            panel.clear()
        if not trainer.is_global_zero or not entries:
            return
        entries = [(entry[0], entry[1], entry[2] if len(entry) > 2 else None) for entry in entries]
        if wandb is not None:
            media = panel_media(entries, min_side=self.min_side)
            wandb.log_image(key=self.key, images=[m.image for m in media], caption=[m.caption for m in media],
                            masks=[m.masks for m in media], boxes=[m.boxes for m in media], step=trainer.global_step)
            return
        images = [render_overlay(image, predictions) for image, predictions, _ in entries]
        for k, image in enumerate(images):
            path = root / "panels" / f"step{trainer.global_step:07d}_{k}.png"
            _save_png_atomic(image, path)
            self.saved.append(path)
