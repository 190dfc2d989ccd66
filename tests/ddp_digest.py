"""A test-only callback: each rank saves its trainable parameters at the end of training (DDP consistency test)."""

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
