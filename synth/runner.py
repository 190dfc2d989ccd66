"""Run one stage over its pending shards as Lightning prediction: one CPU, one GPU, or many GPUs and nodes.

Each item of the prediction "dataset" is a shard id; Lightning's distributed sampler hands every rank its own
shards, the rank processes a whole shard and writes it atomically. Finished shards are not in the dataset, so
a rerun after a crash does only what is missing. The stage's models are submodules of the LightningModule,
so Lightning puts them on the rank's device; the strategies are those of training (`ddp`, `fsdp`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adapt.training.trainer import build_trainer, quiet_lightning

from .shards import RunDir
from .stages import Stage


class _Shards(Dataset):
    """The shard ids still to do."""

    def __init__(self, shard_ids: list[int]) -> None:
        self.shard_ids = shard_ids

    def __len__(self) -> int:
        return len(self.shard_ids)

    def __getitem__(self, index: int) -> int:
        return self.shard_ids[index]


class ShardPredictor(L.LightningModule):
    """Processes one shard per prediction step: read its input, run the stage, write its output atomically."""

    def __init__(self, stage: Stage, run_dir: RunDir, read_input: Callable[[int], list[dict[str, Any]]]) -> None:
        super().__init__()
        self.stage, self.run_dir, self.read_input = stage, run_dir, read_input
        self.stage_modules = nn.ModuleDict(stage.modules())

    def on_predict_start(self) -> None:
        self.stage.setup(str(self.device))

    def predict_step(self, shard_id: int, batch_idx: int = 0) -> int:
        shard_id = int(shard_id)
        if self.run_dir.shard_path(self.stage.name, shard_id).is_file():  # made meanwhile (e.g. a padded sampler)
            return 0
        records = self.stage.process(self.read_input(shard_id))
        self.run_dir.write_shard(self.stage.name, shard_id, records)
        return len(records)



def run_stage(
    stage: Stage,
    run_dir: RunDir,
    num_shards: int,
    read_input: Callable[[int], list[dict[str, Any]]],
    *,
    accelerator: str = "auto",
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    progress: bool = True,
) -> int:
    """Process every pending shard of `stage`; returns how many shards this call processed (all ranks)."""
    pending = run_dir.pending(stage.name, num_shards)
    if not pending:
        return 0
    with quiet_lightning():
        trainer = build_trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                                precision="32-true", logger=False, enable_checkpointing=False, quiet=True,
                                enable_progress_bar=progress, use_distributed_sampler=True,
                                progress={"predict_stage": stage.name, "predict_unit": "shards"})
        loader = DataLoader(_Shards(pending), batch_size=None, shuffle=False, num_workers=0)
        trainer.predict(ShardPredictor(stage, run_dir, read_input), loader, return_predictions=False)
    return len(pending)
