"""Test-only callbacks: what each rank ends with (DDP test), and which images each step trained on (resume test)."""

from __future__ import annotations

import os

import lightning as L
import torch


class SaveTrainableParameters(L.Callback):
    """Write `{out_dir}/rank{global_rank}.pt`: the trainable parameters this rank ends with."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        params = {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        torch.save({"params": params, "world_size": trainer.world_size, "step": trainer.global_step},
                   os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


class RecordTrainingBatches(L.Callback):
    """Append the (dataset index) of every training batch's images to `{out_dir}/batches.jsonl` (resume test)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import json

        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, "batches.jsonl"), "a") as handle:
            handle.write(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                     "images": [m.index for m in batch.meta]}) + "\n")


class SignalAtStep(L.Callback):
    """Send this process `signal` (by name: SIGKILL, SIGTERM) when a training step starts at `step` (kill tests)."""

    def __init__(self, step: int, signal: str = "SIGKILL") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import signal

        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


class OutOfMemoryAbove(L.Callback):
    """Raise CUDA's out-of-memory error at a training step of more than `images` images (or, with
    `unless_checkpointing`, at any step while activation checkpointing is off): the recovery ladder's test."""

    def __init__(self, images: int, unless_checkpointing: bool = False) -> None:
        self.images, self.unless_checkpointing = images, unless_checkpointing

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        checkpointing = pl_module.trainable_config.activation_checkpointing
        if batch.num_images > self.images or (self.unless_checkpointing and not checkpointing):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
