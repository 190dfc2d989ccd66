"""Memory you can plan: a per-run memory report, and a recovery ladder when a training step runs out of memory.

`MemoryReport` (a callback of every `fit` and recipe training) writes `<run>/memory.json` when training ends: peak
memory (CUDA: `max_memory_allocated`; CPU: the process's peak resident set), and by component what can be counted
exactly: parameters, gradients, optimizer state; on CUDA the rest of the peak is activations and workspace.

`recover_from_oom` runs a training and, on `torch.OutOfMemoryError`, runs it again one rung lower on the ladder:
  1. halve the batch and double gradient accumulation (the global batch, and the draws of each step, stay),
  2. checkpoint activations (the ViT and text layers recompute them in backward),
  3. halve `phrase_chunk_size` (fewer phrase queries through the detector at once),
each rung said and recorded (`memory.json`'s `ladder`), until a rung trains or none is left.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from sam3_model.atomic import atomic_write_text
from sam3_model.errors import Sam3AdaptError

T = TypeVar("T")
REPORT_NAME = "memory.json"
RUNNING: dict[str, Any] = {}  # the memory settings, ranks and folder of the training running in this process


@dataclass(frozen=True)
class MemorySettings:
    """The knobs the ladder turns: per-device batch, gradient accumulation, activation checkpointing, phrase chunk."""

    batch_size: int
    accumulate_grad_batches: int = 1
    activation_checkpointing: bool = False
    phrase_chunk_size: int = 16

    def describe(self) -> str:
        """"batch 4 x accumulate 2, checkpointing off, phrase chunk 16"."""
        return (f"batch {self.batch_size} x accumulate {self.accumulate_grad_batches}, checkpointing "
                f"{'on' if self.activation_checkpointing else 'off'}, phrase chunk {self.phrase_chunk_size}")


class OutOfMemory(Sam3AdaptError):
    """Training ran out of memory on every rung of the recovery ladder."""


def next_rung(settings: MemorySettings) -> tuple[MemorySettings, str] | None:
    """The settings one rung down the ladder, and what changed; None at the bottom."""
    s = settings
    if s.batch_size > 1:
        half = s.batch_size // 2
        factor = s.batch_size / half
        accumulate = int(round(s.accumulate_grad_batches * factor))
        return (dataclasses.replace(s, batch_size=half, accumulate_grad_batches=accumulate),
                f"batch {s.batch_size} -> {half}, gradient accumulation {s.accumulate_grad_batches} -> {accumulate}")
    if not s.activation_checkpointing:
        return dataclasses.replace(s, activation_checkpointing=True), "activation checkpointing on"
    if s.phrase_chunk_size > 1:
        half = s.phrase_chunk_size // 2
        return dataclasses.replace(s, phrase_chunk_size=half), f"phrase_chunk_size {s.phrase_chunk_size} -> {half}"
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is an out-of-memory error of torch, CUDA or cuBLAS."""
    while error is not None:
        if isinstance(error, torch.OutOfMemoryError):
            return True
        if isinstance(error, RuntimeError) and any(
                text in str(error) for text in ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED")):
            return True
        error = error.__cause__ or error.__context__
    return False


def recover_from_oom(attempt: Callable[[MemorySettings | None], T], say: Callable[[str], None],
                     start: MemorySettings | None = None,
                     off: Callable[[], str | None] = lambda: None) -> tuple[T, list[dict[str, Any]]]:
    """`attempt(start)` (None: as configured), and on out-of-memory `attempt` one rung lower, until one returns; its
    value and the ladder (one record per attempt). The settings that failed are `start`, or those the failing run
    noted (`RUNNING`, by `MemoryReport`). `OutOfMemory` at the bottom, or at once when `off()` gives a reason not
    to recover (asked after the failure, when the failed run's settings are known)."""
    settings, ladder = start, []
    while True:
        try:
            value = attempt(settings)
        except BaseException as error:  # noqa: BLE001 - only out-of-memory is handled; the rest is re-raised
            if not is_out_of_memory(error):
                raise
            failed = settings or RUNNING.get("settings")
            free_memory()
            if failed is None:
                raise OutOfMemory(f"out of memory outside a training step: {_first_line(error)}") from None
            ladder.append({**dataclasses.asdict(failed), "outcome": f"out of memory: {_first_line(error)}"})
            reason = off()
            lower = next_rung(failed) if reason is None else None
            if lower is None:
                where = "on every rung of the recovery ladder" if reason is None else f"(recovery off: {reason})"
                raise OutOfMemory(f"training ran out of memory {where}; last: {failed.describe()}. Lower "
                                  "data.batch_size or model.phrase_chunk_size, use LoRA, or set "
                                  "model.objective.mask_points") from None
            settings, change = lower
            say(f"out of memory ({failed.describe()}); retrying from the start with {change}")
            continue
        ladder.append({**dataclasses.asdict(settings or RUNNING.get("settings") or MemorySettings(1)),
                       "outcome": "trained"})
        return value, ladder


def free_memory() -> None:
    """Release what a failed attempt left: Python garbage and CUDA's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def write_report(root: Path, report: dict[str, Any]) -> Path:
    """Write (or complete) `root/memory.json` atomically: keys of an existing report are kept unless replaced."""
    path = root / REPORT_NAME
    old = json.loads(path.read_text()) if path.is_file() else {}
    return atomic_write_text(path, json.dumps({**old, **report}, indent=2) + "\n")


# ----- the report ---------------------------------------------------------------------------------------------
def tensor_bytes(tensors: Any) -> int:
    """Bytes held by the tensors in `tensors` (nested dicts, lists and tuples), each storage counted once."""
    seen, total, stack = set(), 0, [tensors]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            key = (item.untyped_storage().data_ptr(), item.device)
            if key not in seen:
                seen.add(key)
                total += item.untyped_storage().nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def peak_resident_bytes() -> int | None:
    """The process's peak resident set (VmHWM) in bytes, or None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_resident() -> bool:
    """Start a new peak resident set measurement (Linux: clear_refs 5), where allowed; whether it was reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class MemoryReport(Callback):
    """Write `<run>/memory.json` at the end of training: peak memory and the parts that can be counted exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.gradients_bytes = 0  # the gradients exist between backward and the optimizer's zero_grad

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self.gradients_bytes:
            self.gradients_bytes = tensor_bytes([p.grad for p in pl_module.parameters() if p.grad is not None])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        else:
            reset_peak_resident()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the run's memory settings: what the recovery ladder starts from if this run runs out of memory."""
        data = getattr(trainer, "datamodule", None)
        RUNNING.update(settings=MemorySettings(
            batch_size=int(getattr(data, "batch_size", 1) or 1),
            accumulate_grad_batches=int(trainer.accumulate_grad_batches),
            activation_checkpointing=bool(getattr(getattr(pl_module, "trainable_config", None),
                                                  "activation_checkpointing", False)),
            phrase_chunk_size=int(getattr(pl_module, "phrase_chunk_size", 16) or 16)),
            world_size=trainer.world_size, default_root_dir=str(trainer.default_root_dir))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == 0:
            write_report(Path(trainer.default_root_dir), self.report(trainer, pl_module))

    def report(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The figures of memory.json."""
        params = list(pl_module.parameters())
        trainable = [p for p in params if p.requires_grad]
        optimizer_state = sum(tensor_bytes(list(o.state.values())) for o in trainer.optimizers)
        counted = {
            "parameters_bytes": tensor_bytes(params),
            "trainable_parameters_bytes": tensor_bytes(trainable),
            "gradients_bytes": self.gradients_bytes,
            "optimizer_state_bytes": optimizer_state,
        }
        device = pl_module.device
        if device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(device))
            measured = {"peak_kind": "torch.cuda.max_memory_allocated", "peak_bytes": peak,
                        "activations_and_workspace_bytes": max(0, peak - counted["parameters_bytes"]
                                                               - counted["gradients_bytes"] - optimizer_state),
                        "reserved_bytes": int(torch.cuda.memory_reserved(device))}
        else:
            measured = {"peak_kind": "process peak resident set (VmHWM; the interpreter and libraries included)",
                        "peak_bytes": peak_resident_bytes()}
        data = trainer.datamodule if getattr(trainer, "datamodule", None) is not None else None
        return {"device": str(device), "step": trainer.global_step, "world_size": trainer.world_size,
                "batch_size": getattr(data, "batch_size", None),
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
                "precision": str(trainer.precision), **measured, **counted}
