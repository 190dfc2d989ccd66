"""Benchmark: Lightning's overhead per training step against a bare loop, and the share of step time spent on data.

Goals (issue): framework overhead per training step at most 10% of a bare loop doing the same work on the same
batch; the DataWaitMonitor's data-wait share of step time below 5%.

Three arms, on one `Sam3FineTuner` configuration (`--preset`, `--image-size`, `--mode`):

  bare       a hand loop on ONE pre-built `PhraseBatch`: `torch.autocast(bf16)` around `module.batch_loss`,
             `loss.backward()`, `clip_grad_norm_(params, 0.1)`, AdamW step (the module's `build_optimizer` groups),
             scheduler step, `zero_grad()`. Per step: one loop iteration (CUDA synchronised every step unless
             --bare-no-sync).
  lightning  `build_trainer(precision="bf16-mixed", gradient_clip_val=0.1, log_every_n_steps=10, logger=--logger,
             callbacks of configure_callbacks, no checkpointing, no validation)` fitting a second, identically
             seeded module on a DataLoader that yields the same pre-built batch every step (no data work).
             Per step: the time between consecutive `on_train_batch_end` calls (one full loop iteration,
             including the fetch, hooks, logging and the scheduler), CUDA synchronised.
  data       the same Trainer on the real `Sam3DataModule` (`--workers` workers, the training transform at the
             model's input size) over the fabricated dataset the batch came from: step time, and the
             DataWaitMonitor's data-wait fraction.

Data loading is thus excluded from the overhead comparison (bare vs lightning) and measured on its own (data).
The first --warmup steps of every arm are dropped; figures are medians, lower quartiles (robust to other jobs
stalling a few steps) and means (logging every 10 steps shows in the mean, not the median) over the rest. With --rounds > 1 the bare and lightning arms
alternate (bare first in odd rounds, lightning first in even ones) and their steps are pooled, so a slow spell
of a shared machine hits both. Both arms start from the same weights and see the same batch; the training
forward is stochastic (dropout), so their mean losses are printed as a check that they do comparable work.

The batch: --images images (640 x 480 PNGs with ellipse instances, RLE masks) in a COCO file, with --phrases
categories; every image has --instances instances of each category but the last (a negative phrase), so a
batch has images x phrases queries. The fixed batch is the first --images items of a PhraseDataset with the
training transform, collated by PhraseCollator with the module's tokenizer. Results: docs/benchmarks.md,
section "Training-step overhead (Lightning vs a bare loop)".

    python bench/bench_fit_overhead.py --preset tiny --threads 1                               # ~0.1 s a step
    python bench/bench_fit_overhead.py --preset small --image-size 336 --threads 1 --steps 15  # ~0.7 s a step
    python bench/bench_fit_overhead.py --preset sam3 --device cuda --images 2 --phrases 4 --steps 30  # on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from adapt.data.batch import PhraseBatch, PhraseCollator
from bench.machine import cpu_model
from adapt.data.datamodule import DatasetSpec, Sam3DataModule
from adapt.data.dataset import PhraseDataset
from adapt.data.readers import read_dataset
from adapt.data.transforms import TrainTransform
from adapt.training.callbacks import DataWaitMonitor
from adapt.training.module import Sam3FineTuner, TrainableConfig
from adapt.training.optim import build_optimizer
from adapt.training.trainer import build_trainer
from adapt.training.schedules import build_scheduler
from sam3_model.adapters import LoraSettings
from sam3_model.records import encode_mask

CLIP = 0.1  # TRAINER_DEFAULTS gradient_clip_val
LOG_EVERY = 10  # TRAINER_DEFAULTS log_every_n_steps


# ----- data -----------------------------------------------------------------------------------------------
def fabricate_coco(root: Path, images: int, phrases: int, instances: int, seed: int = 0,
                   size: tuple[int, int] = (480, 640)) -> Path:
    """COCO instance JSON + PNGs: `instances` ellipses of each category but the last (a negative phrase)."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    entries, annotations = [], []
    positives = phrases - 1 if phrases > 1 else phrases
    for i in range(images):
        base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], -1)
        pixels = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        for cat in range(positives):
            for _ in range(instances):
                mask = np.zeros((h, w), np.uint8)
                centre = (int(rng.integers(60, w - 60)), int(rng.integers(60, h - 60)))
                axes = (int(rng.integers(15, 60)), int(rng.integers(15, 60)))
                cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
                pixels[mask.astype(bool)] = rng.integers(0, 256, 3)
                ys, xs = np.nonzero(mask)
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat + 1,
                                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                                    "area": float(mask.sum()), "iscrowd": 0, "segmentation": encode_mask(mask)})
        name = f"images/img{i:04d}.png"
        Image.fromarray(pixels).save(root / name)
        entries.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    names = ["red square", "blue disc", "green bar", "yellow star", "white car", "black dog", "brown horse",
             "grey cat", "orange bus", "purple flower", "pink balloon", "silver bike"]
    categories = [{"id": c + 1, "name": names[c] if c < len(names) else f"object {c}"} for c in range(phrases)]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return path


def fixed_batch(annotations: Path, image_size: int, images: int, tokenizer) -> PhraseBatch:
    """The first `images` items of the dataset, with the training transform, collated."""
    samples = read_dataset(annotations).samples
    dataset = PhraseDataset(samples, TrainTransform(image_size, seed=0))
    return PhraseCollator(tokenizer)([dataset[i] for i in range(images)])


class SameBatch(torch.utils.data.Dataset):
    """`length` times the same batch (a DataLoader with `first` as collate_fn yields it unchanged)."""

    def __init__(self, batch: PhraseBatch, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> PhraseBatch:
        return self.batch


def first(items: list) -> Any:
    return items[0]


# ----- module ---------------------------------------------------------------------------------------------
def build_module(args) -> Sam3FineTuner:
    L.seed_everything(args.seed, verbose=False)
    trainable = TrainableConfig(mode=args.mode, lora=LoraSettings(r=args.lora_r, alpha=2 * args.lora_r))
    return Sam3FineTuner(model=args.preset, trainable=trainable, phrase_chunk_size=args.phrase_chunk_size,
                         image_size=args.image_size, seed=args.seed)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----- bare arm -------------------------------------------------------------------------------------------
def bare_loop(module: Sam3FineTuner, batch: PhraseBatch, steps: int, device: torch.device, bf16: bool,
              sync_each_step: bool = True, warmup: int = 0) -> dict:
    """The hand loop: autocast forward + loss, backward, clip, AdamW, schedule, zero_grad. Seconds per step.

    Without `sync_each_step` (CUDA only matters) the device is synchronised only after the last step, as a bare
    loop would run (and after the `warmup` steps): per-step times are then host-side intervals whose mean is the
    throughput. The objective's host-side matching synchronises every step anyway."""
    module.train()
    optimizer = build_optimizer(module.model, module.optimizer_config)
    scheduler = build_scheduler(optimizer, module.schedule_config, steps)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    times, losses = [], []
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        with autocast():
            loss, _ = module.batch_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if sync_each_step or i in (warmup - 1, steps - 1):
            sync(device)
        now = time.perf_counter()
        times.append(now - start)
        start = now
    losses = [float(x) for x in losses]
    return {"times": times, "losses": losses}


# ----- Lightning arms -------------------------------------------------------------------------------------
class StepClock(Callback):
    """Loop-iteration time (between consecutive `on_train_batch_end`), the loss, and the DataWaitMonitor's
    per-step wait and step (deltas of its totals, read at the next batch start and at train end)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.losses: list[float] = []
        self.monitor: DataWaitMonitor | None = None
        self.monitor_totals: list[tuple[float, float, int]] = []
        self._last: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.monitor = next((c for c in trainer.callbacks if isinstance(c, DataWaitMonitor)), None)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self._last = time.perf_counter()

    def _read_monitor(self) -> None:
        if self.monitor is not None:
            m = self.monitor
            if not self.monitor_totals or self.monitor_totals[-1][2] != m.steps:
                self.monitor_totals.append((m.wait_s, m.step_s, m.steps))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._read_monitor()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(pl_module.device)
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))

    def on_train_end(self, trainer, pl_module) -> None:
        self._read_monitor()

    def monitor_steps(self) -> list[tuple[float, float]]:
        """(wait, step) of each step the DataWaitMonitor accounted, in order."""
        totals = [(0.0, 0.0, 0)] + self.monitor_totals
        return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(totals) if b[2] == a[2] + 1]


def make_logger(kind: str, root: Path):
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(root), name="csv")
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        return WandbLogger(project="bench-fit-overhead", offline=True, save_dir=str(root))
    return False


def lightning_fit(module: Sam3FineTuner, steps: int, args, device: torch.device, root: Path,
                  batch: PhraseBatch | None = None, datamodule: Sam3DataModule | None = None) -> dict:
    """Fit `steps` steps on the fixed batch or on `datamodule`; per-step times from StepClock."""
    clock = StepClock()
    logger = make_logger(args.logger, root)
    trainer = build_trainer(  # the project's trainer (fit, recipes), with this benchmark's settings
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=steps,
        precision="bf16-mixed" if args.precision == "bf16" else "32-true", gradient_clip_val=CLIP,
        log_every_n_steps=LOG_EVERY, logger=logger, enable_checkpointing=False, callbacks=[clock],
        num_sanity_val_steps=0, limit_val_batches=0, enable_model_summary=False,
        enable_progress_bar=not args.no_progress_bar, default_root_dir=str(root),
    )
    start = time.perf_counter()
    if datamodule is None:
        loader = DataLoader(SameBatch(batch, steps + 1), batch_size=1, collate_fn=first, num_workers=0)
        trainer.fit(module, train_dataloaders=loader)
    else:
        trainer.fit(module, datamodule=datamodule)
    wall = time.perf_counter() - start
    if args.logger == "wandb":
        import wandb

        wandb.finish()
    waits = clock.monitor_steps()
    return {"times": clock.times, "losses": clock.losses, "monitor": waits, "fit_wall_s": wall,
            "steps_run": trainer.global_step}


# ----- summary --------------------------------------------------------------------------------------------
def stats(times: list[float]) -> dict:
    q25 = statistics.quantiles(times, n=4)[0] if len(times) > 1 else times[0]
    return {"median": statistics.median(times), "q25": q25, "mean": statistics.fmean(times), "min": min(times),
            "max": max(times), "n": len(times)}


def wait_fraction(pairs: list[tuple[float, float]]) -> float | None:
    total = sum(s for _, s in pairs)
    return sum(w for w, _ in pairs) / total if total > 0 else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small", "sam3-random"))
    parser.add_argument("--image-size", type=int, default=None, help="multiple of 14; default: the preset's")
    parser.add_argument("--images", type=int, default=2, help="images per batch")
    parser.add_argument("--phrases", type=int, default=4, help="phrases per image (the last one negative)")
    parser.add_argument("--instances", type=int, default=3, help="instances per positive phrase")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per arm and round")
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of every arm")
    parser.add_argument("--rounds", type=int, default=2, help="alternating bare/lightning rounds")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="bf16", choices=("bf16", "32"))
    parser.add_argument("--logger", default="wandb", choices=("csv", "wandb", "none"))
    parser.add_argument("--mode", default="lora", choices=("lora", "full"))
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--phrase-chunk-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the data arm")
    parser.add_argument("--data-steps", type=int, default=None, help="timed steps of the data arm (default --steps)")
    parser.add_argument("--no-data", action="store_true", help="skip the data arm")
    parser.add_argument("--no-progress-bar", action="store_true", help="Lightning arms without the progress bar")
    parser.add_argument("--bare-no-sync", action="store_true",
                        help="CUDA: synchronise the bare loop only at its end (compare means, not medians); the "
                             "Lightning arms synchronise every step anyway (DataWaitMonitor)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*flops_per_batch.*")
    warnings.filterwarnings("ignore", ".*You defined a `validation_step` but have no `val_dataloader`.*")
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    load_start = os.getloadavg()
    n = args.warmup + args.steps

    with tempfile.TemporaryDirectory(prefix="bench_fit_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        bare_module = build_module(args).to(device)
        fit_module = build_module(args)
        build_s = time.perf_counter() - t0
        image_size = bare_module.image_size
        annotations = fabricate_coco(tmp / "data", max(16, args.images * 4), args.phrases, args.instances,
                                     seed=args.seed)
        batch = fixed_batch(annotations, image_size, args.images, bare_module.processor.tokenizer).to(device)
        trainable = sum(p.numel() for p in bare_module.model.parameters() if p.requires_grad)
        total_params = sum(p.numel() for p in bare_module.model.parameters())
        instances = sum(len(b) for b in batch.targets.boxes_cxcywh)
        print(f"{args.preset} at {image_size} px, {args.mode} ({trainable / 1e6:.2f}M of {total_params / 1e6:.1f}M "
              f"params trainable), batch {batch.num_images} images x {batch.num_queries // batch.num_images} "
              f"phrases = {batch.num_queries} queries, {instances} instances; {args.precision} on {device} "
              f"({args.threads} threads); built in {build_s:.1f} s", file=sys.stderr, flush=True)

        bare, light, rounds = [], [], []
        for r in range(args.rounds):
            order = ("bare", "lightning") if r % 2 == 0 else ("lightning", "bare")
            for arm in order:
                gc.collect()
                t = time.perf_counter()
                if arm == "bare":
                    out = bare_loop(bare_module, batch, n, device, args.precision == "bf16",
                                    not args.bare_no_sync, args.warmup)
                    bare += out["times"][args.warmup:]
                else:
                    out = lightning_fit(fit_module, n, args, device, tmp / f"fit{r}", batch=batch)
                    light += out["times"][args.warmup:]
                kept = out["times"][args.warmup:]
                rounds.append({"round": r, "arm": arm, "median": statistics.median(kept),
                               "mean": statistics.fmean(kept), "losses": out["losses"], "wall_s":
                               time.perf_counter() - t, **({"monitor": out["monitor"]} if arm != "bare" else {})})
                print(f"[round {r + 1} {arm}] median {statistics.median(kept):.4f} s, mean "
                      f"{statistics.fmean(kept):.4f} s over {len(kept)} steps; load {os.getloadavg()[0]:.2f}",
                      file=sys.stderr, flush=True)

        data = None
        if not args.no_data:
            steps = args.warmup + (args.data_steps or args.steps)
            datamodule = Sam3DataModule(train=[DatasetSpec(path=str(annotations))], batch_size=args.images,
                                        num_workers=args.workers, samples_per_epoch=steps * args.images,
                                        seed=args.seed)
            gc.collect()
            out = lightning_fit(fit_module, steps, args, device, tmp / "fit_data", datamodule=datamodule)
            kept, monitor = out["times"][args.warmup:], out["monitor"]
            data = {"times": kept, "step": stats(kept), "monitor": monitor,
                    "wait_fraction": wait_fraction(monitor[args.warmup:]),
                    "wait_fraction_all_steps": wait_fraction(monitor),
                    "first_step_wait_s": monitor[0][0] if monitor else None, "fit_wall_s": out["fit_wall_s"]}
            print(f"[data, {args.workers} workers] median {data['step']['median']:.4f} s; data wait "
                  f"{100 * (data['wait_fraction'] or 0):.2f}% of step time after warm-up; load "
                  f"{os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)

    load_end = os.getloadavg()
    b, lt = stats(bare), stats(light)
    fixed_monitor = [pair for row in rounds if row["arm"] == "lightning" for pair in row["monitor"][args.warmup:]]
    overhead = {k: (lt[k] - b[k]) / b[k] for k in ("median", "q25", "mean")}
    bare_losses = [row["losses"] for row in rounds if row["arm"] == "bare"]
    light_losses = [row["losses"] for row in rounds if row["arm"] == "lightning"]
    meta = {
        "preset": args.preset, "image_size": image_size, "mode": args.mode, "trainable_params": trainable,
        "params": total_params, "images": batch.num_images, "queries": batch.num_queries, "instances": instances,
        "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "precision": args.precision, "logger": args.logger, "progress_bar": not args.no_progress_bar,
        "bare_sync_each_step": not args.bare_no_sync,
        "threads": args.threads, "workers": args.workers, "cpu_count": os.cpu_count(), "loadavg_start": load_start,
        "loadavg_end": load_end, "torch": torch.__version__, "lightning": L.__version__,
        "transformers": __import__("transformers").__version__, "python": platform.python_version(),
    }
    report = {"meta": meta, "bare": b, "lightning": lt, "overhead": overhead,
              "lightning_between_steps_fraction": wait_fraction(fixed_monitor), "data": data, "rounds": rounds,
              "bare_steps": bare, "lightning_steps": light,
              "mean_loss": {"bare": statistics.fmean(bare_losses[0]), "lightning": statistics.fmean(light_losses[0])}}

    print(f"\n{args.preset} ({total_params / 1e6:.1f}M params, {args.mode}: {trainable / 1e6:.2f}M trainable), "
          f"{image_size} px, {batch.num_images} images x {batch.num_queries // batch.num_images} phrases, "
          f"{instances} instances, {args.precision} on {meta['device_name']} ({args.threads} threads); "
          f"logger {args.logger}; {args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up; "
          f"load average {load_start[0]:.2f} -> {load_end[0]:.2f}\n")
    def row(name: str, x: dict, vs_bare: bool = True) -> str:
        cells = f"| {name} | {x['median']:.4f} | {x['q25']:.4f} | {x['mean']:.4f} | {x['min']:.4f} | {x['max']:.4f} |"
        if not vs_bare:
            return cells + " | | |"
        return cells + "".join(f" {100 * (x[k] - b[k]) / b[k]:+.1f}% |" for k in ("median", "q25", "mean"))

    print("| arm | median s/step | lower quartile | mean | min | max | vs bare (median) | (lower quartile) | (mean) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(row("bare loop", b, vs_bare=False))
    print(row("Lightning, same batch", lt))
    if data is not None:
        print(row(f"Lightning, Sam3DataModule ({args.workers} workers)", data["step"]))
    print(f"\nDataWaitMonitor wait share after warm-up: same batch {100 * (report['lightning_between_steps_fraction'] or 0):.2f}%"
          + (f", Sam3DataModule {100 * (data['wait_fraction'] or 0):.2f}% (all steps, first fetch included: "
             f"{100 * (data['wait_fraction_all_steps'] or 0):.2f}%)" if data else ""))
    print(f"mean loss of the first round (same work: the model is stochastic, so close, not equal): bare "
          f"{report['mean_loss']['bare']:.2f}, Lightning {report['mean_loss']['lightning']:.2f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
