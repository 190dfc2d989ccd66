"""`Sam3WandbLogger`: Lightning's WandbLogger, with checkpoints recorded as artifacts in offline runs too.

Lightning refuses `offline=True` with `log_model` ("checkpoints cannot be uploaded in offline mode"), yet W&B keeps
an offline run's artifacts and `wandb sync` uploads them with the run; `fit` runs offline by default. Only the
checkpoints of a callback that monitors a metric are recorded (in `fit`, the best by `val/cgF1`, aliased `best`):
`last.ckpt`, which a monitor-less callback rewrites at every validation, is for resuming, and would otherwise take
the `best` alias.
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger


class Sam3WandbLogger(WandbLogger):
    """WandbLogger whose offline runs can record checkpoints (`log_model`); `wandb sync` uploads them later."""

    def __init__(self, *args: Any, offline: bool = False, log_model: Literal["all"] | bool = False,
                 **kwargs: Any) -> None:
        if offline and log_model:  # offline through wandb.init(mode=...), which Lightning does not check
            if kwargs.get("mode") is None:  # LightningCLI passes every wandb.init argument, None when unset
                kwargs["mode"] = "offline"
            offline = False
        super().__init__(*args, offline=offline, log_model=log_model, **kwargs)

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        """Record the checkpoints of monitoring callbacks only (the best, not `last.ckpt`)."""
        if getattr(checkpoint_callback, "monitor", None) is not None:
            super().after_save_checkpoint(checkpoint_callback)
