"""One recipe run: fine-tune the base model on one arm's data (or not, for zero-shot), evaluate it on the HQ test
set and, when the recipe has one, on the general test set (what the adaptation cost).

A `TrainJob` is plain data, so jobs can run side by side in worker processes. Each job writes into its own folder:
`fit.yaml` (the `sam3-adapt fit` config that trains the same model: `sam3-adapt fit --config runs/.../fit.yaml`
re-runs this arm alone), `model/` (the trained weights: a LoRA adapter, or the merged model in full / heads
mode), a W&B run, and last, atomically, `result.json`: the row of results.csv. A folder with `result.json` is
finished work; a rerun skips it.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adapt.data.datamodule import DatasetSpec
from adapt.training.trainer import build_trainer, quiet_lightning
from sam3_model.atomic import atomic_write_text

from .config import TrackingSettings, TrainSettings

RESULT_NAME = "result.json"
# Columns of results.csv, in order: the documented ones first.
COLUMNS = ("arm", "train_images", "seed", "cgF1", "pmF1", "IL_MCC", "AP", "general_cgF1", "general_pmF1",
           "general_IL_MCC", "general_AP", "mix", "round", "steps", "train_seconds", "run")
METRICS = {"cgF1": "cgF1", "pmF1": "pmF1", "IL_MCC": "IL_MCC", "AP": "AP_mask"}  # column -> validation metric
TEST_SET, GENERAL_TEST_SET = "hq-test", "general-test"  # the evaluation sets' names (val/<name>/cgF1)


@dataclass
class TrainJob:
    """Everything one training-and-evaluation run needs (picklable)."""

    name: str  # run folder name, e.g. "syn+general-n200-s0"
    arm: str
    mix: str
    size: int  # requested domain training images (0 for zero-shot)
    seed: int
    base_model: str
    out_dir: str
    test: DatasetSpec
    general_test: DatasetSpec | None = None  # the retention test set (general concepts), scored beside `test`
    train_data: list[DatasetSpec] = field(default_factory=list)  # empty: zero-shot (evaluate only)
    domain_data: list[str] = field(default_factory=list)  # names of the train_data entries that are domain data
    settings: TrainSettings = field(default_factory=TrainSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    recipe: str = ""
    progress: bool = True
    round: int = 1  # the data-engine round whose pseudo-labels the job trains on

    def eval_sets(self) -> list[DatasetSpec]:
        """The sets every model of the job is scored on: the HQ test set, then the general one (if any)."""
        return [self.test, *([self.general_test] if self.general_test is not None else [])]


def read_result(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The finished result of a run folder, or None when the run has not finished."""
    path = Path(out_dir) / RESULT_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def _logger(job: TrainJob) -> Any:
    if job.tracking.wandb == "disabled":
        return False
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(settings=wandb.Settings(silent=True), project=job.tracking.project,
                       entity=job.tracking.entity, name=f"{job.recipe}/{job.name}",
                       group=job.recipe, job_type="zero-shot" if not job.train_data else "train",
                       save_dir=job.out_dir, offline=job.tracking.wandb == "offline",
                       config={"arm": job.arm, "mix": job.mix, "train_images": job.size, "seed": job.seed,
                               "base_model": job.base_model, "train": asdict(job.settings)})


def model_config(job: TrainJob) -> dict[str, Any]:
    """The `model:` section of `fit` (Sam3FineTuner's arguments) this job trains with."""
    s = job.settings
    return {"model": job.base_model, "trainable": asdict(s.trainable), "objective": asdict(s.objective),
            "optimizer": asdict(s.optimizer), "schedule": asdict(s.schedule), "validation": asdict(s.validation),
            "phrase_chunk_size": s.phrase_chunk_size, "image_size": s.image_size, "seed": job.seed}


def data_config(job: TrainJob) -> dict[str, Any]:
    """The `data:` section of `fit` (Sam3DataModule's arguments): the arm's datasets, validated on the test set."""
    s = job.settings
    return {"train": [asdict(d) for d in job.train_data] or None, "val": [asdict(d) for d in job.eval_sets()],
            "batch_size": s.batch_size, "num_workers": s.num_workers, "augment": asdict(s.augment), "seed": job.seed}


def trainer_config(job: TrainJob) -> dict[str, Any]:
    """The Trainer keys every training of the job uses (also the `trainer:` section of its fit.yaml)."""
    s = job.settings
    return {"accelerator": s.accelerator, "devices": s.devices, "num_nodes": s.num_nodes, "strategy": s.strategy,
            "precision": s.precision, "max_steps": s.steps, "enable_progress_bar": job.progress,
            "max_time": {"minutes": s.max_minutes} if s.max_minutes else None,
            "log_every_n_steps": min(50, s.steps)}


def fit_config(job: TrainJob) -> dict[str, Any]:
    """A `sam3-adapt fit` config that trains this job's model again (validated once, at the end, on the test set)."""
    trainer = {**trainer_config(job), "default_root_dir": str(Path(job.out_dir) / "fit"),
               "val_check_interval": job.settings.steps, "check_val_every_n_epoch": None}
    if job.tracking.wandb == "disabled":
        trainer["logger"] = False
    return {"seed_everything": job.seed, "model": model_config(job), "data": data_config(job), "trainer": trainer}


def _memory(job: TrainJob) -> Any:
    """The job's memory settings as the recipe gives them: the first rung of the out-of-memory ladder."""
    from adapt.training.memory import MemorySettings

    s = job.settings
    return MemorySettings(s.batch_size, 1, s.trainable.activation_checkpointing, s.phrase_chunk_size)


def _module(job: TrainJob, memory: Any) -> Any:
    """The job's Sam3FineTuner, with the activation checkpointing and phrase chunk of `memory` (a ladder rung)."""
    from dataclasses import replace

    from adapt.training.module import Sam3FineTuner

    s = job.settings
    return Sam3FineTuner(model=job.base_model,
                         trainable=replace(s.trainable, activation_checkpointing=memory.activation_checkpointing),
                         objective=s.objective, optimizer=s.optimizer, schedule=s.schedule, validation=s.validation,
                         phrase_chunk_size=memory.phrase_chunk_size, image_size=s.image_size, seed=job.seed)


def _data(job: TrainJob, memory: Any) -> Any:
    """The job's Sam3DataModule, with the batch of `memory` (a ladder rung)."""
    from adapt.data.datamodule import Sam3DataModule

    s = job.settings
    return Sam3DataModule(train=job.train_data or None, val=job.eval_sets(), batch_size=memory.batch_size,
                          num_workers=s.num_workers, augment=s.augment, seed=job.seed)


def run_job(job: TrainJob) -> dict[str, Any]:
    """Train (unless zero-shot), evaluate on the test set, save the model and result.json; returns the result."""
    import torch

    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # short runs say so
    warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")  # PhraseBatch moves itself
    s = job.settings
    if s.threads_per_job:
        torch.set_num_threads(s.threads_per_job)
    if not job.progress:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    with quiet_lightning():
        return _run_job(job)


def _run_job(job: TrainJob) -> dict[str, Any]:
    import lightning as L

    from sam3_model.export import export_adapter, export_merged
    from sam3_model.model_card import ModelCardInfo

    s = job.settings
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if job.train_data:
        atomic_write_text(out / "fit.yaml", yaml.safe_dump(fit_config(job), sort_keys=False))
    logger = _logger(job)
    settings = trainer_config(job)
    seconds, steps = 0.0, 0
    if job.train_data:
        from adapt.training.memory import MemoryReport, MemorySettings, recover_from_oom, write_report
        from sam3_model.notices import notice

        def attempt(memory: MemorySettings) -> tuple[Any, Any, Any]:
            """A fresh training at one rung of the out-of-memory ladder (the first: the recipe's settings)."""
            L.seed_everything(job.seed, workers=True, verbose=False)
            module, data = _module(job, memory), _data(job, memory)
            trainer = build_trainer(spawn=True, quiet=True, default_root_dir=str(out), logger=logger, **settings,
                                    accumulate_grad_batches=memory.accumulate_grad_batches,
                                    enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
                                    callbacks=[MemoryReport()])
            trainer.fit(module, datamodule=data)
            return module, data, trainer

        start = time.perf_counter()
        (module, data, trainer), ladder = recover_from_oom(attempt, lambda line: notice(f"{job.name}: {line}"),
                                                           start=_memory(job))
        seconds, steps = time.perf_counter() - start, int(trainer.global_step)
        if len(ladder) > 1:
            write_report(out, {"ladder": ladder})
    else:
        L.seed_everything(job.seed, workers=True, verbose=False)
        module, data = _module(job, _memory(job)), _data(job, _memory(job))
    evaluation = {k: v for k, v in settings.items() if k not in ("max_steps", "max_time", "log_every_n_steps")}
    evaluator = build_trainer(spawn=True, quiet=True, default_root_dir=str(out), logger=logger,
                              **{**evaluation, "devices": 1 if s.accelerator == "cpu" else s.devices})
    metrics = evaluator.validate(module, datamodule=data, verbose=False)[0]
    scores = test_scores(metrics, job)
    save_tables(module, out)
    domain_images = _domain_images(data, job)
    card = ModelCardInfo(base_model=job.base_model, data=f"{job.arm} ({job.mix} mix), {domain_images} images",
                         recipe=job.recipe, metrics={k: scores[k] for k in METRICS})
    if job.train_data:
        if s.trainable.mode == "lora":
            export_adapter(module.model, out / "model", card)
        else:
            export_merged(module.model, module.processor, out / "model", card)
    result = {"arm": job.arm, "train_images": domain_images, "seed": job.seed,
              **{k: round(v, 4) for k, v in scores.items()},
              "mix": job.mix, "round": job.round, "steps": steps, "train_seconds": round(seconds, 1), "run": job.name,
              "requested_images": job.size, "all_metrics": {k: round(float(v), 4) for k, v in metrics.items()},
              "model": str(out / "model") if job.train_data else job.base_model, "mode": s.trainable.mode}
    if logger:
        import wandb

        logger.log_metrics({f"test/{k}": v for k, v in scores.items()})
        wandb.finish()
    atomic_write_text(out / RESULT_NAME, json.dumps(result, indent=2) + "\n")
    return result


def test_scores(metrics: dict[str, Any], job: TrainJob) -> dict[str, float]:
    """The result's scores from the validation metrics: the HQ test set's (cgF1, ...) and, with a general test set,
    its own (general_cgF1, ...); with one set Lightning's keys carry no set name."""
    if job.general_test is None:
        return {k: float(metrics[f"val/{v}"]) for k, v in METRICS.items()}
    scores = {k: float(metrics[f"val/{TEST_SET}/{v}"]) for k, v in METRICS.items()}
    scores.update({f"general_{k}": float(metrics[f"val/{GENERAL_TEST_SET}/{v}"]) for k, v in METRICS.items()})
    return scores


def save_tables(module: Any, out: Path) -> None:
    """Each evaluation set's per-pair table (`pairs-<set>.npz`), for bootstrap intervals over the test images."""
    for name, table in (getattr(module, "evaluation_tables", None) or {}).items():
        table.save(out / f"pairs-{name}.npz")


def _domain_images(data: Any, job: TrainJob) -> int:
    """Domain training images the run actually had (caps and skips applied; general data not counted)."""
    if not job.train_data:
        return 0
    counts = data.train_counts()
    return sum(counts.get(name, 0) for name in job.domain_data)
