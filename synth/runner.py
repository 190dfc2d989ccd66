"""Run one stage over its pending shards as Lightning prediction: one CPU, one GPU, or many GPUs and nodes.

Each item of the prediction "dataset" is a shard id; Lightning's distributed sampler hands every rank its own
shards, the rank processes a whole shard and writes it atomically. Finished shards are not in the dataset, so
a rerun after a crash does only what is missing. The stage's models are submodules of the LightningModule,
so Lightning puts them on the rank's device; the strategies are those of training (`ddp`, `fsdp`, ...).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import Any

import lightning as L
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adapt.training.trainer import build_trainer, processes_started_externally, quiet_lightning

from sam3_model.atomic import atomic_write_text
from sam3_model.errors import ConfigError

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
        self.made: list[int] = []

    def predict_step(self, shard_id: int, batch_idx: int = 0) -> int:
        shard_id = int(shard_id)
        if self.run_dir.shard_path(self.stage.name, shard_id).is_file():  # made meanwhile (e.g. a padded sampler)
            return 0
        records = self.stage.process(self.read_input(shard_id))
        self.run_dir.write_shard(self.stage.name, shard_id, records)
        self.made.append(shard_id)
        return len(records)

    def on_predict_end(self) -> None:
        """Which shards this rank made (stages/<stage>/ranks/<rank>.json): where to look when one rank misbehaved."""
        t = self.trainer
        note = {"rank": t.global_rank, "world_size": t.world_size, "host": socket.gethostname(), "pid": os.getpid(),
                "device": str(self.device), "shards": self.made}
        atomic_write_text(self.run_dir.stage_dir(self.stage.name) / "ranks" / f"{t.global_rank}.json",
                          json.dumps(note) + "\n")


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
    external = processes_started_externally()
    if int(num_nodes) > 1 and not external:
        raise ConfigError(f"num_nodes {num_nodes}: ranks on several nodes are started by the cluster, e.g. "
                          f"`srun --nodes {num_nodes} --ntasks-per-node <devices> sam3-adapt synth run ...` (in a "
                          "recipe, train.launcher: slurm submits the data engine that way)")
    with quiet_lightning():
        # Several devices: ranks are spawned from this process (never by re-running the command, which inside a
        # recipe would re-run the whole recipe), unless torchrun or srun started the ranks already.
        trainer = build_trainer(spawn=not external, accelerator=accelerator, devices=devices,
                                num_nodes=num_nodes, strategy=strategy,
                                precision="32-true", logger=False, enable_checkpointing=False, quiet=True,
                                enable_progress_bar=progress, use_distributed_sampler=True,
                                progress={"predict_stage": stage.name, "predict_unit": "shards"})
        loader = DataLoader(_Shards(pending), batch_size=None, shuffle=False, num_workers=0)
        trainer.predict(ShardPredictor(stage, run_dir, read_input), loader, return_predictions=False)
        if external:  # ranks started by torchrun or srun go on alone: none starts the next stage before all wrote
            trainer.strategy.barrier(f"{stage.name} written")
    return len(pending)
