"""Random-number state in every checkpoint, so a killed and resumed `fit` ends with the uninterrupted run's weights.

Saved with each checkpoint (per rank: every rank's state is gathered): torch's CPU and CUDA generators, numpy's
global generator and Python's `random`. Restored when training starts after a resume, i.e. after Lightning's
sanity check and data-loader set-up, right before the first step, so dropout draws continue exactly where the
checkpoint was taken. Data randomness does not need it: each training draw carries its own seed (see
`adapt.data.mixing.MixtureSampler`), and the loaders have their own generators, so worker processes hold no
state a resume would have to restore.

Everything is stored as tensors and plain containers: checkpoints stay loadable with `weights_only=True`.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback


def capture() -> dict[str, Any]:
    """This process's random-number states, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    """Set this process's random-number states to `state` (from `capture`)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomStateCheckpoint(Callback):
    """Put every rank's random-number state in each checkpoint; restore it when a resumed run starts training."""

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        """Called on every rank while a checkpoint is made: all ranks' states, rank order."""
        mine = capture()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, mine)
            return {"ranks": states}
        return {"ranks": [mine]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = list(state_dict.get("ranks") or []) or None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        states, self._pending = self._pending, None
        if len(states) == trainer.world_size:  # same layout: each rank continues its own stream
            restore(states[trainer.global_rank])
