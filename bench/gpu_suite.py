"""GPU benchmark suite: training speed, MFU and memory, LoRA batch limit, inference latency, objective and data share.

One command, meant to finish within 8 minutes on one H100/H200 with the full-size architecture (`sam3-random`:
random weights, 1008 px, bf16 autocast). Sections, in the order they run:

  full       full fine-tuning (`Sam3FineTuner`, mode full, official objective with the dense mask loss): images/s,
             FLOPs per step counted with `FlopCounterMode` on one step, MFU, peak memory; at each --batches size,
             without and then with activation checkpointing (ViT and CLIP layers, `sam3_model.adapters`)
  objective  the objective's share of a training step (matching + loss, forward and backward, against the model's
             forward and backward), with bench/bench_objective.py's decomposed step on one image x --phrases phrases
  inference  latency per image (vision backbone + one phrase) and per extra phrase on cached vision features
             (one at a time, and 16 batched as `ConceptSegmenter` batches them); model forward only
  lora       LoRA (--lora-preset, r --lora-r): images/s and peak memory at batch 1, 2, 4, ... doubling until the
             first out-of-memory or --max-lora-batch
  data       the real data path: JPEGs with RLE masks in a COCO file, read by `Sam3DataModule` (--workers
             workers, the training transform); per step the time spent waiting for the next batch vs the LoRA step

A training step is what the trainer runs: bf16 autocast around `Sam3FineTuner.batch_loss`, backward, gradient
clipping at 0.1, an AdamW step with the module's parameter groups. Batches come from a dataset the suite writes
into a temporary folder (--source-size JPEGs, --phrases phrases per image, the last one negative, --instances
instances per positive phrase, RLE masks) through the training transform, so every figure sees real targets.

Timing: CUDA events with the device synchronised on a GPU, perf_counter on a CPU; the first --warmup steps of
every configuration are untimed (the first runs under FlopCounterMode; with --warmup 0 that is one extra untimed
step); figures are medians of --steps timed steps. Nothing is capped by wall-clock time: the work measured does
not depend on how busy the machine is. An out-of-memory error at a configuration is recorded as "OOM" and the
suite goes on. MFU = model FLOPs per step (batch x the counted FLOPs per image of the batch-1 step, so
activation-checkpointing recompute is not credited) / step time / the device's peak dense bf16 FLOP/s
(`PEAK_BF16_DENSE_FLOPS`); HFU uses the FLOPs counted on the configuration itself, recompute included. On a CPU
or an unknown device both are null, with the reason. Peak memory: `torch.cuda.max_memory_allocated` per
configuration on a GPU; on a CPU the process's peak resident set (VmHWM, reset before each configuration).

DIR/gpu_suite.json (machine, versions, device, every figure and step time) and DIR/gpu_suite.md (one table row per
measurement) are rewritten atomically after every row, so a run killed early keeps every finished measurement
(a section cut short is marked "partial" and listed as not finished).
Results: docs/benchmarks.md, section "GPU suite".

    python bench/gpu_suite.py --out bench-out/                                      # a GPU: the default run
    python bench/gpu_suite.py --preset tiny --device cpu --image-size 112 --steps 1 --warmup 1 --out /tmp/suite
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapt.data.batch import PhraseBatch
from adapt.data.datamodule import Sam3DataModule
from adapt.settings import DatasetSpec, TrainableConfig
from adapt.training.memory import is_out_of_memory, peak_resident_bytes, reset_peak_resident
from adapt.training.module import Sam3FineTuner
from adapt.training.optim import build_optimizer
from bench import bench_objective
from bench.bench_data import fabricate
from bench.bench_fit_overhead import CLIP, fixed_batch
from bench.machine import cpu_model
from sam3_model.adapters import base_model, enable_activation_checkpointing
from sam3_model.atomic import atomic_write_text
from sam3_model.formats.writers import coco_json, write_json_dataset
from sam3_model.presets import FULL_SIZE_PRESET, build_config, input_size
from sam3_model.prompting import prompt_tensors
from sam3_model.records import ConceptPrompt, mask_area
from sam3_model.settings import LoraSettings

SECTIONS = ("full", "objective", "inference", "lora", "data")
INFERENCE_PHRASE_BATCH = 16  # ConceptSegmenter's default prompt_batch_size
# Peak dense (no sparsity) bf16 tensor-core FLOP/s, from NVIDIA's datasheets; the first key found in the device
# name wins, so the more specific names come first.
PEAK_BF16_DENSE_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM5 (HBM3), e.g. "NVIDIA H100 80GB HBM3"
    ("H200", 989e12),  # also GH200
    ("B200", 2250e12),
    ("A100", 312e12),
)


# ----- device, timing, memory -----------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """--device cuda|cpu|auto -> a torch device; cuda without a GPU is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_suite: --device cuda, but torch sees no CUDA device here; use --device cpu or auto")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The accelerator's name (torch.cuda.get_device_name), or the CPU model on a CPU."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def peak_bf16_flops(device: torch.device, name: str) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, where it comes from), or (None, why MFU cannot be given)."""
    if device.type != "cuda":
        return None, "CPU: no peak bf16 FLOP/s figure, so no MFU"
    for key, peak in PEAK_BF16_DENSE_FLOPS:
        if key.lower() in name.lower():
            return peak, f"{key}: {peak / 1e12:.0f} TFLOP/s dense bf16 (datasheet)"
    return None, f"unknown device {name!r}: add its peak dense bf16 FLOP/s to PEAK_BF16_DENSE_FLOPS"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Seconds one call takes: CUDA events around it on a GPU (synchronised), perf_counter on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        """(fn(*args), seconds)."""
        if self.device.type != "cuda":
            start = time.perf_counter()
            result = fn(*args)
            return result, time.perf_counter() - start
        sync(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn(*args)
        end.record()
        end.synchronize()
        return result, start.elapsed_time(end) / 1e3


class MemoryMeter:
    """Peak memory of one configuration: CUDA allocator peaks, or on a CPU the process's peak RSS (VmHWM)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = False

    def reset(self) -> None:
        """Start a new peak (on Linux, writing 5 to /proc/self/clear_refs resets VmHWM)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        self.resettable = reset_peak_resident()

    def peak(self) -> dict[str, Any]:
        """{peak_memory_bytes, peak_memory_kind[, peak_reserved_bytes]} since the last reset."""
        if self.device.type == "cuda":
            return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(self.device)),
                    "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(self.device)),
                    "peak_memory_kind": "torch.cuda.max_memory_allocated"}
        peak = peak_resident_bytes() if self.resettable else None
        if peak is not None:
            return {"peak_memory_bytes": peak,
                    "peak_memory_kind": "process peak RSS (VmHWM, reset before this configuration)"}
        import resource

        return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "peak_memory_kind": "process peak RSS since start (ru_maxrss; VmHWM could not be reset)"}


def free_memory(device: torch.device, *modules: torch.nn.Module) -> None:
    """Drop gradients of `modules`, collect garbage and return cached CUDA blocks (after an OOM or a section)."""
    for module in modules:
        module.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def guarded(fn: Callable[[], dict[str, Any]], device: torch.device, *modules: torch.nn.Module) -> dict[str, Any]:
    """fn()'s figures with status "ok", or status "OOM" (and the error's first line) when it ran out of memory."""
    try:
        result = {"status": "ok", **fn()}
    except RuntimeError as err:  # torch.OutOfMemoryError (= torch.cuda.OutOfMemoryError) is a RuntimeError
        if not is_out_of_memory(err):  # cuBLAS/cuDNN workspaces fail as a plain RuntimeError
            raise
        lines = str(err).strip().splitlines()
        result = {"status": "OOM", "error": lines[0] if lines else "out of memory"}
    # the except block is over: the traceback's frames (and the tensors they held) are gone
    free_memory(device, *modules)
    return result


def bf16_autocast(device: torch.device) -> Callable[[], Any]:
    """A factory of bf16 autocast contexts on `device`."""
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def set_activation_checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Checkpoint the ViT and CLIP layers (as `TrainableConfig.activation_checkpointing` does), or stop."""
    if on:
        enable_activation_checkpointing(model)
    elif getattr(base_model(model), "supports_gradient_checkpointing", False):
        base_model(model).activation_checkpointing_disable()


# ----- data -----------------------------------------------------------------------------------------------------
def write_dataset(root: Path, images: int, size_wh: tuple[int, int], phrases: int, instances: int,
                  seed: int) -> Path:
    """`images` JPEGs (bench_data.fabricate) and a COCO file with RLE masks: `phrases` categories, the last with no
    instance (a negative phrase in every image), the others with `instances` instances each."""
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    positives = max(1, phrases - 1)
    samples = fabricate(folder, images, size_wh[0], size_wh[1], positives * instances, positives, True, seed)
    entries, annotations = [], []
    for i, sample in enumerate(samples):
        entries.append({"id": i + 1, "file_name": f"images/{sample.image_path.name}", "height": sample.height,
                        "width": sample.width})
        for k, phrase in enumerate(sample.phrases):
            for box_xywh_px, rle in zip(phrase.boxes_xywh_px, phrase.masks):
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": k + 1,
                                    "bbox": [float(v) for v in box_xywh_px], "area": mask_area(rle),
                                    "iscrowd": 0, "segmentation": rle})
    categories = [{"id": k + 1, "name": f"object {k}"} for k in range(positives + 1)]  # the last: never annotated
    return write_json_dataset(root / "annotations.json", coco_json(entries, annotations, categories))


class Inputs:
    """The suite's dataset on disk and fixed training batches drawn from it (the first N images, transformed)."""

    def __init__(self, annotations: Path, image_size: int, tokenizer: Any, device: torch.device) -> None:
        self.annotations, self.image_size, self.tokenizer, self.device = annotations, image_size, tokenizer, device

    def batch(self, images: int) -> PhraseBatch:
        """The first `images` images with all their phrases, on the device."""
        return fixed_batch(self.annotations, self.image_size, images, self.tokenizer).to(self.device)


# ----- training measurements ------------------------------------------------------------------------------------
def train_step(module: Sam3FineTuner, optimizer: torch.optim.Optimizer, batch: PhraseBatch,
               autocast: Callable[[], Any]) -> torch.Tensor:
    """One training step as the trainer runs it: autocast loss, backward, clip at 0.1, AdamW step, zero_grad."""
    with autocast():
        loss, _ = module.batch_loss(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def measure_training(module: Sam3FineTuner, inputs: Inputs, images: int, args: argparse.Namespace,
                     device: torch.device) -> dict[str, Any]:
    """FLOPs of one step (FlopCounterMode), then the median time of --steps steps after the warm-up, peak memory."""
    meter, timer, autocast = MemoryMeter(device), StepTimer(device), bf16_autocast(device)
    meter.reset()
    batch = inputs.batch(images)
    optimizer = build_optimizer(module.model, module.optimizer_config)
    with FlopCounterMode(display=False) as counter:  # the first warm-up step
        train_step(module, optimizer, batch, autocast)
    flops = int(counter.get_total_flops())
    for _ in range(max(args.warmup - 1, 0)):
        train_step(module, optimizer, batch, autocast)
    times, losses = [], []
    for _ in range(args.steps):
        loss, seconds = timer(train_step, module, optimizer, batch, autocast)
        times.append(seconds)
        losses.append(float(loss))
    step_s = statistics.median(times)
    return {"step_s": step_s, "images_per_s": images / step_s, "flops_per_step": flops,
            "queries": batch.num_queries, "detector_chunks": len(module._chunks(batch.num_queries)),
            "step_times_s": times, "losses": losses, **meter.peak()}


def add_utilisation(row: dict[str, Any], flops_per_image: float | None, peak: float | None, reason: str) -> None:
    """MFU (model FLOPs: batch x FLOPs per image of the batch-1 step) and HFU (this step's counted FLOPs)."""
    if row.get("status") != "ok":
        return
    if flops_per_image is None:  # the batch-1 step did not run: this configuration's own count
        row["model_flops_per_step"] = row["flops_per_step"]
        row["model_flops_note"] = "batch-1 step not measured: this step's counted FLOPs"
    else:
        row["model_flops_per_step"] = int(flops_per_image * row["batch"])
    row["achieved_tflops"] = row["model_flops_per_step"] / row["step_s"] / 1e12
    row["mfu"] = row["model_flops_per_step"] / row["step_s"] / peak if peak else None
    row["hfu"] = row["flops_per_step"] / row["step_s"] / peak if peak else None
    if not peak:
        row["mfu_reason"] = reason


def section_full(module: Sam3FineTuner, inputs: Inputs, args: argparse.Namespace, device: torch.device,
                 peak: float | None, reason: str, report: Report) -> dict[str, Any]:
    """Full fine-tuning at each --batches size, without and with activation checkpointing."""
    rows: list[dict[str, Any]] = []
    per_image: float | None = None
    for checkpointing in (False, True):
        set_activation_checkpointing(module.model, checkpointing)
        for images in args.batches:
            config = f"full FT, batch {images}" + (", act. ckpt" if checkpointing else "")
            report.progress(f"{config} ...")
            row = {"config": config, "mode": "full", "batch": images, "activation_checkpointing": checkpointing,
                   **guarded(lambda n=images: measure_training(module, inputs, n, args, device), device, module)}
            if row["status"] == "ok" and images == 1 and not checkpointing:
                per_image = row["flops_per_step"]
            add_utilisation(row, per_image, peak, reason)
            rows.append(row)
            report.partial("full", rows, row)
    set_activation_checkpointing(module.model, False)
    return {"rows": rows, "flops_per_image": per_image}


def section_lora(module: Sam3FineTuner, inputs: Inputs, args: argparse.Namespace, device: torch.device,
                 peak: float | None, reason: str, report: Report) -> dict[str, Any]:
    """LoRA at batch 1, 2, 4, ... until the first OOM or --max-lora-batch."""
    rows: list[dict[str, Any]] = []
    per_image: float | None = None
    largest, images, stopped = None, 1, f"cap: --max-lora-batch {args.max_lora_batch}"
    while images <= args.max_lora_batch:
        config = f"LoRA {args.lora_preset} r{args.lora_r}, batch {images}"
        report.progress(f"{config} ...")
        row = {"config": config, "mode": "lora", "batch": images, "activation_checkpointing": False,
               **guarded(lambda n=images: measure_training(module, inputs, n, args, device), device, module)}
        if row["status"] == "ok" and images == 1:
            per_image = row["flops_per_step"]
        add_utilisation(row, per_image, peak, reason)
        rows.append(row)
        report.partial("lora", rows, row)
        if row["status"] != "ok":
            stopped = f"out of memory at batch {images}"
            break
        largest, images = images, images * 2
    for row in rows:
        row["largest_that_fits"] = row["batch"] == largest
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    return {"rows": rows, "largest_batch": largest, "tried": [r["batch"] for r in rows], "stopped": stopped,
            "trainable_params": trainable, "flops_per_image": per_image}


# ----- objective share ------------------------------------------------------------------------------------------
def section_objective(module: Sam3FineTuner, args: argparse.Namespace, device: torch.device,
                      report: Report) -> dict[str, Any]:
    """bench_objective's decomposed step (T_model, T_objective) on one image x --phrases phrases, bf16."""
    objective_args = bench_objective.build_parser().parse_args([
        "--preset", args.preset, "--queries-per-image", str(args.phrases), "--instances", str(args.instances),
        "--device", str(device), "--dtype", "bf16", "--warmup", str(args.warmup), "--repeats", str(args.steps),
        "--seed", str(args.seed)])
    meter = MemoryMeter(device)

    def run() -> dict[str, Any]:
        meter.reset()
        clock = bench_objective.Clock(device)
        criteria = bench_objective.build_criteria(["official"], objective_args, clock)
        batch, targets = bench_objective.make_batch(module.processor, module.image_size, args.phrases,
                                                    args.instances, objective_args.vision, args.seed)
        batch, targets = {k: v.to(device) for k, v in batch.items()}, targets.to(device)
        model_rows, objective_rows = [], []
        for i in range(args.warmup + args.steps):
            model_times, per_variant = bench_objective.step(module.model, batch, targets, criteria, objective_args,
                                                            clock, bf16_autocast(device))
            if i >= args.warmup:
                model_rows.append(model_times)
                objective_rows.append(per_variant["official"])
        t_model = bench_objective.median(model_rows, "model")
        t_objective = bench_objective.median(objective_rows, "objective")
        matching = bench_objective.median(objective_rows, "matching")
        return {"t_model_s": t_model, "t_objective_s": t_objective, "matching_s": matching,
                "mask_terms_forward_s": bench_objective.median(objective_rows, "mask_terms_forward"),
                "step_s": t_model + t_objective, "objective_share": t_objective / (t_model + t_objective),
                "matching_share": matching / (t_model + t_objective), "objective_vs_model": t_objective / t_model,
                "model_steps": model_rows, "objective_steps": objective_rows, **meter.peak()}

    module.model.train()
    row = {"config": f"objective share, 1 image x {args.phrases} phrases", "batch": 1,
           **guarded(run, device, module)}
    report.progress(row_line(row))
    return {"rows": [row]}


# ----- inference ------------------------------------------------------------------------------------------------
def section_inference(module: Sam3FineTuner, inputs: Inputs, args: argparse.Namespace, device: torch.device,
                      report: Report) -> dict[str, Any]:
    """Per image (vision + 1 phrase), per extra phrase on cached features, per phrase of 16 batched; bf16."""
    model, timer, autocast = module.model, StepTimer(device), bf16_autocast(device)
    model.eval()
    expand = bench_objective.expand_vision
    rows: list[dict[str, Any]] = []

    def timed(fn: Callable[[], Any]) -> list[float]:
        for _ in range(args.warmup):
            fn()
        return [timer(fn)[1] for _ in range(args.steps)]

    def run(kind: str) -> dict[str, Any]:
        meter = MemoryMeter(device)
        meter.reset()
        pixel_values = inputs.batch(1).pixel_values[:1]  # (1, 3, S, S)
        count = INFERENCE_PHRASE_BATCH if kind == "batched" else 1
        phrases = [ConceptPrompt(text=f"object {k}") for k in range(count)]
        text = prompt_tensors(module.processor, phrases, [(inputs.image_size, inputs.image_size)], device=device)
        with torch.inference_mode(), autocast():
            cached = model.get_vision_features(pixel_values=pixel_values)
            if kind == "image":
                times = timed(lambda: model(vision_embeds=expand(model.get_vision_features(pixel_values=pixel_values),
                                                                1), **text))
            else:
                times = timed(lambda: model(vision_embeds=expand(cached, count), **text))
        latency = statistics.median(times) / count
        return {"latency_s": latency, "images_per_s": 1 / latency if kind == "image" else None,
                "phrases_per_s": 1 / latency, "phrases_per_call": count, "call_times_s": times, **meter.peak()}

    for kind, config in (("image", "inference: image (vision + 1 phrase)"),
                         ("extra", "inference: extra phrase, cached vision features"),
                         ("batched", f"inference: per phrase, {INFERENCE_PHRASE_BATCH} batched on cached features")):
        row = {"config": config, "kind": kind, "batch": 1, **guarded(lambda k=kind: run(k), device, module)}
        rows.append(row)
        report.partial("inference", rows, row)
    model.train()
    return {"rows": rows}


# ----- data wait ------------------------------------------------------------------------------------------------
def section_data(module: Sam3FineTuner, annotations: Path, images: int, args: argparse.Namespace,
                 device: torch.device, report: Report) -> dict[str, Any]:
    """The LoRA step fed by `Sam3DataModule` (JPEG + RLE decoding, transform, collation): wait per step vs step."""
    timer, autocast = StepTimer(device), bf16_autocast(device)
    steps = args.warmup + args.steps

    def run() -> dict[str, Any]:
        meter = MemoryMeter(device)
        meter.reset()
        datamodule = Sam3DataModule(train=[DatasetSpec(path=str(annotations))], batch_size=images,
                                    num_workers=args.workers, samples_per_epoch=steps * images,
                                    image_size=module.image_size, seed=args.seed)
        datamodule.setup("fit")
        iterator = iter(datamodule.train_dataloader())
        optimizer = build_optimizer(module.model, module.optimizer_config)
        waits, times = [], []
        try:
            for i in range(steps):
                sync(device)
                start = time.perf_counter()
                batch = next(iterator).to(device)  # fetch, collate and copy: what the step waits for
                sync(device)
                wait = time.perf_counter() - start
                _, seconds = timer(train_step, module, optimizer, batch, autocast)
                if i >= args.warmup:  # the first fetch also starts the workers
                    waits.append(wait)
                    times.append(seconds)
        finally:
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        wait_s, step_s = statistics.fmean(waits), statistics.fmean(times)
        return {"wait_s_mean": wait_s, "step_s_mean": step_s, "step_s": statistics.median(times),
                "wait_share": wait_s / (wait_s + step_s), "images_per_s": images / (wait_s + step_s),
                "wait_times_s": waits, "step_times_s": times, **meter.peak()}

    module.model.train()
    row = {"config": f"data wait: Sam3DataModule, {args.workers} workers, LoRA batch {images}", "batch": images,
           "workers": args.workers, **guarded(run, device, module)}
    report.progress(row_line(row))
    return {"rows": [row]}


# ----- report ---------------------------------------------------------------------------------------------------
def gib(n: int | None) -> str:
    """Bytes as GiB with two decimals ('' for None)."""
    return "" if n is None else f"{n / 2**30:.2f} GiB"


def row_cells(row: dict[str, Any]) -> tuple[str, str, str, str]:
    """(images/s, MFU, peak memory, notes) of one row, as the markdown table shows them."""
    if row.get("status") != "ok":
        return "OOM" if row.get("status") == "OOM" else "", "", "", row.get("error", "")
    images_per_s = f"{row['images_per_s']:.2f}" if row.get("images_per_s") else ""
    mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else ("null" if "mfu" in row else "")
    memory = gib(row.get("peak_memory_bytes"))
    if row.get("peak_memory_kind", "").startswith("process"):
        memory += " (RSS)"
    notes = []
    if "flops_per_step" in row:
        notes.append(f"{row['step_s']:.3f} s/step; {row['flops_per_step'] / 1e12:.3g} TFLOP counted/step")
        if row.get("hfu") is not None:
            notes.append(f"HFU {100 * row['hfu']:.1f}%")
        if row.get("detector_chunks", 1) > 1:
            notes.append(f"{row['detector_chunks']} phrase chunks (checkpointed)")
        if row.get("largest_that_fits"):
            notes.append("largest batch that fits")
    if "latency_s" in row:
        notes.append(f"{1e3 * row['latency_s']:.2f} ms per {'image' if row['kind'] == 'image' else 'phrase'}")
    if "objective_share" in row:
        notes.append(f"matching + loss {row['t_objective_s']:.3f} s of step {row['step_s']:.3f} s = "
                     f"{100 * row['objective_share']:.2f}% (matching {100 * row['matching_share']:.2f}%)")
    if "wait_share" in row:
        notes.append(f"waits {1e3 * row['wait_s_mean']:.1f} ms for data per {1e3 * row['step_s_mean']:.1f} ms "
                     f"step = {100 * row['wait_share']:.1f}% of the iteration")
    return images_per_s, mfu, memory, "; ".join(notes)


def row_line(row: dict[str, Any]) -> str:
    """One markdown table row."""
    return "| " + " | ".join((row["config"], *row_cells(row))) + " |"


class Report:
    """The suite's figures, rewritten atomically as JSON and markdown after every section."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out, self.meta = out, meta
        self.sections: dict[str, dict[str, Any]] = {}
        self.start = time.perf_counter()

    def progress(self, line: str) -> None:
        """Print a line now (a killed run's log shows how far it got)."""
        print(f"[{time.perf_counter() - self.start:6.1f} s] {line}", flush=True)

    def partial(self, name: str, rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
        """Print a section's newest row and rewrite both files with the rows it has so far."""
        self.progress(row_line(row))
        self.sections[name] = {"rows": list(rows), "partial": True}
        self.write()

    def add(self, name: str, section: dict[str, Any], seconds: float) -> None:
        """Record a finished section and rewrite both files."""
        section["seconds"] = seconds
        section["loadavg"] = os.getloadavg()
        self.sections[name] = section
        self.write()
        self.progress(f"section {name} done in {seconds:.1f} s; wrote {self.out / 'gpu_suite.json'}")

    def as_dict(self) -> dict[str, Any]:
        """{meta, sections}: what gpu_suite.json holds."""
        done = [name for name, section in self.sections.items() if not section.get("partial")]
        meta = {**self.meta, "sections_done": done, "wall_s": time.perf_counter() - self.start}
        return {"meta": meta, "sections": self.sections}

    def markdown(self) -> str:
        """A header and one table row per measurement."""
        m = self.meta
        lines = [
            f"# GPU suite: {m['device_name']}", "",
            (f"{m['preset']} at {m['image_size']} px, bf16 autocast, median of {m['steps']} timed step(s) after "
             f"{m['warmup']} warm-up; {m['phrases']} phrases per image (last negative), {m['instances']} instances "
             f"per positive phrase; torch {m['torch']}, transformers {m['transformers']}; {m['machine']['cpu']} "
             f"({m['machine']['cpu_count']} cores); peak: {m['peak_source']}; {m['started']}."), "",
            "| config | images/s | MFU | peak memory | notes |", "|---|---:|---:|---:|---|",
        ]
        lines += [row_line(row) for section in self.sections.values() for row in section["rows"]]
        missing = [s for s in m["sections_requested"] if self.sections.get(s, {"partial": True}).get("partial")]
        if missing:
            lines += ["", f"Not finished: {', '.join(missing)}."]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """Both files, atomically."""
        atomic_write_text(self.out / "gpu_suite.json", json.dumps(self.as_dict(), indent=2, default=str) + "\n")
        atomic_write_text(self.out / "gpu_suite.md", self.markdown())


# ----- command line ---------------------------------------------------------------------------------------------
def size_wh(text: str) -> tuple[int, int] | None:
    """'1600x1200' -> (1600, 1200); 'auto' -> None."""
    if text == "auto":
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 1600x1200") from None
    if min(width, height) <= 200:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be over 200 px (the fabricated ellipses)")
    return width, height


def int_list(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give batch sizes >= 1, e.g. 1,2,4")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The suite's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=FULL_SIZE_PRESET, help="sam3-random (full size), small, tiny")
    parser.add_argument("--image-size", type=int, default=None, help="input px; default the preset's (1008)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu", "auto"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first counts FLOPs)")
    parser.add_argument("--batches", type=int_list, default=[1, 2, 4], help="full fine-tuning batch sizes (images)")
    parser.add_argument("--max-lora-batch", type=int, default=16, help="LoRA batch search stops here")
    parser.add_argument("--lora-preset", default="all_attn")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--phrases", type=int, default=4, help="phrases per image, the last one negative")
    parser.add_argument("--instances", type=int, default=5, help="instances per positive phrase")
    parser.add_argument("--phrase-chunk-size", type=int, default=16, help="Sam3FineTuner.phrase_chunk_size")
    parser.add_argument("--data-batch", type=int, default=2, help="images per batch of the data section")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the data section")
    parser.add_argument("--source-size", type=size_wh, default=None,
                        help="fabricated JPEGs, WxH; default auto: 1600x1200 at 1008 px (bench_data's), scaled "
                             "with the canvas, at least 320x240")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for gpu_suite.json and .md")
    return parser


def source_size(canvas: int) -> tuple[int, int]:
    """Fabricated image size for a canvas: 1600x1200 at 1008 px, scaled with the canvas, at least 320x240."""
    return max(320, round(1600 * canvas / 1008)), max(240, round(1200 * canvas / 1008))


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory and platform of this machine."""
    import psutil

    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "memory_gib": psutil.virtual_memory().total / 2**30,
            "python": platform.python_version(), "platform": platform.platform()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the requested sections, rewriting DIR/gpu_suite.json and .md after each; return the report."""
    args = build_parser().parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or args.steps < 1 or args.warmup < 0:
        raise SystemExit(f"gpu_suite: unknown sections {unknown} (choose from {', '.join(SECTIONS)}), or --steps < 1"
                         if unknown else "gpu_suite: --steps must be >= 1 and --warmup >= 0")
    device = resolve_device(args.device)
    warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*deprecated.*", FutureWarning)  # peft's call
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    name = device_name(device)
    peak, peak_source = peak_bf16_flops(device, name)
    import lightning
    import transformers

    meta = {"preset": args.preset, "image_size": args.image_size, "device": str(device), "device_name": name,
            "peak_bf16_flops": peak, "peak_source": peak_source, "steps": args.steps, "warmup": args.warmup,
            "phrases": args.phrases, "instances": args.instances, "sections_requested": sections,
            "args": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                     for k, v in vars(args).items()},
            "machine": machine_info(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "lightning": lightning.__version__,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "loadavg_start": os.getloadavg()}
    report = Report(args.out, meta)
    report.progress(f"gpu_suite on {name} ({device}); sections {', '.join(sections)}; out {args.out}")

    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        images = max(max(args.batches), args.max_lora_batch, args.data_batch)
        canvas = args.image_size or input_size(build_config(args.preset))
        size = args.source_size or source_size(canvas)
        meta["source_size"] = list(size)
        t = time.perf_counter()
        annotations = write_dataset(Path(tmp), images, size, args.phrases, args.instances, args.seed)
        report.progress(f"wrote {images} JPEGs ({size[0]}x{size[1]}) and a COCO file with RLE masks in "
                        f"{time.perf_counter() - t:.1f} s")

        def build(trainable: TrainableConfig) -> Sam3FineTuner:
            t = time.perf_counter()
            module = Sam3FineTuner(model=args.preset, trainable=trainable, image_size=args.image_size,
                                   phrase_chunk_size=args.phrase_chunk_size, seed=args.seed).to(device).train()
            report.progress(f"built {args.preset} ({trainable.mode}) in {time.perf_counter() - t:.1f} s")
            return module

        if {"full", "objective", "inference"} & set(sections):
            module = build(TrainableConfig(mode="full"))
            meta["image_size"] = module.image_size
            meta["params"] = sum(p.numel() for p in module.model.parameters())
            meta["full_trainable_params"] = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
            inputs = Inputs(annotations, module.image_size, module.processor.tokenizer, device)
            for name_, run in (("full", lambda: section_full(module, inputs, args, device, peak, peak_source, report)),
                               ("objective", lambda: section_objective(module, args, device, report)),
                               ("inference", lambda: section_inference(module, inputs, args, device, report))):
                if name_ in sections:
                    t = time.perf_counter()
                    report.add(name_, run(), time.perf_counter() - t)
            del module, inputs
            free_memory(device)

        if {"lora", "data"} & set(sections):
            lora = LoraSettings(preset=args.lora_preset, r=args.lora_r, alpha=2 * args.lora_r)
            module = build(TrainableConfig(mode="lora", lora=lora))
            meta["image_size"] = module.image_size
            inputs = Inputs(annotations, module.image_size, module.processor.tokenizer, device)
            largest = None
            if "lora" in sections:
                t = time.perf_counter()
                section = section_lora(module, inputs, args, device, peak, peak_source, report)
                largest = section["largest_batch"]
                report.add("lora", section, time.perf_counter() - t)
            if "data" in sections:
                t = time.perf_counter()
                batch = args.data_batch if largest is None else max(1, min(args.data_batch, largest))
                report.add("data", section_data(module, annotations, batch, args, device, report),
                           time.perf_counter() - t)
            del module, inputs
            free_memory(device)

    meta["loadavg_end"] = os.getloadavg()
    report.write()
    report.progress(f"done; {args.out / 'gpu_suite.md'}:\n\n{report.markdown()}")
    return report.as_dict()


if __name__ == "__main__":
    main()
