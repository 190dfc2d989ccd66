"""The one way to build a Lightning `Trainer` for SAM 3: `fit`, the recipes, `overfit` and the data engine.

It owns what every run shares: the official gradient clipping (0.1), bf16-mixed by default, strategy selection
(DDP with `find_unused_parameters` whenever several devices or nodes are used, since SAM 3 always has unused
parameters; the spawning variant when the caller is not a script DDP could re-run), and quiet logging (no
per-Trainer banner lines when a job builds many trainers). `fit` applies the same defaults and strategy rule
through LightningCLI (`adapt/training/cli.py`), so a run's `fit.yaml` trains what a recipe trained.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

TRAINER_DEFAULTS: dict[str, Any] = {
    "precision": "bf16-mixed",
    "gradient_clip_val": 0.1,  # official: clip_grad_norm_(all params, 0.1)
    "log_every_n_steps": 10,
}


def on_gpu(accelerator: Any) -> bool:
    """Whether `accelerator` ("auto", "gpu", "cuda", "cpu"...) puts work on a CUDA GPU on this machine."""
    import torch

    return str(accelerator or "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def num_devices(devices: Any, accelerator: Any) -> int:
    """How many devices a Trainer would use for `devices` ("auto", -1, an int, a list or "0,1")."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices if devices is not None else "auto").strip()
    if text in ("auto", "-1"):
        import torch

        return torch.cuda.device_count() if on_gpu(accelerator) else 1
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.isdigit() else 1


def processes_started_externally() -> bool:
    """Whether a launcher (torchrun, or srun with several tasks) started this process as one rank of several, so
    Lightning must not start more (and a caller must not spawn its own)."""
    if "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        return True
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def select_strategy(strategy: Any, devices: Any, accelerator: Any, num_nodes: Any, spawn: bool = False) -> Any:
    """The strategy to use: DDP keeping unused parameters when several devices or nodes are used and the strategy
    is left to Lightning ("auto", "ddp"); `spawn` for callers that are not a script DDP could re-run."""
    many = int(num_nodes or 1) > 1 or num_devices(devices, accelerator) > 1
    if many and strategy in (None, "auto", "ddp", "ddp_spawn"):
        spawned = spawn or strategy == "ddp_spawn"  # an explicit ddp_spawn stays spawned
        return "ddp_spawn_find_unused_parameters_true" if spawned else "ddp_find_unused_parameters_true"
    return strategy if strategy is not None else "auto"


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's per-Trainer banner lines ("GPU available", tips): a job may build many trainers."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def quiet_wandb_loggers(logger: Any) -> None:
    """Drop the `anonymous=None` Lightning's WandbLogger passes to `wandb.init`: W&B warns on every run that the
    setting has no effect (a deprecation of theirs, not the user's doing)."""
    for one in logger if isinstance(logger, (list, tuple)) else [logger]:
        init = getattr(one, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous", False) is None:
            del init["anonymous"]


def build_trainer(*, spawn: bool = False, quiet: bool = False, progress: dict[str, Any] | None = None,
                  **kwargs: Any):
    """A `lightning.Trainer` with the project's defaults (`TRAINER_DEFAULTS`, overridden by `kwargs`), strategy
    rule and progress bar (`progress`: its stage name and unit for prediction). `quiet`: no banner lines, no model
    summary."""
    import lightning as L

    settings = {**TRAINER_DEFAULTS, **kwargs}
    if settings.get("enable_progress_bar", True):  # a bar that names its stage and counts steps, not epochs
        from .progress import StageProgressBar

        callbacks = list(settings.get("callbacks") or [])
        if not any(type(c).__name__.endswith("ProgressBar") for c in callbacks):
            settings["callbacks"] = [*callbacks, StageProgressBar(**(progress or {}))]
    quiet_wandb_loggers(settings.get("logger"))
    settings["strategy"] = select_strategy(settings.get("strategy"), settings.get("devices", "auto"),
                                           settings.get("accelerator", "auto"), settings.get("num_nodes", 1), spawn)
    if "spawn" in str(settings["strategy"]) and not processes_started_externally():
        from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

        if SLURMEnvironment.detect():  # one SLURM task spawning its GPUs' ranks (a sweep's task with several GPUs):
            settings.setdefault("plugins", [LightningEnvironment()])  # not SLURM's one-task-per-device layout
    if quiet:
        settings.setdefault("enable_model_summary", False)
        with quiet_lightning():
            return L.Trainer(**settings)
    return L.Trainer(**settings)
