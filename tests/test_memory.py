"""Memory you can plan: the per-run memory report, the out-of-memory recovery ladder, Lightning's batch-size finder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adapt.training.memory import MemorySettings, next_rung
from fabricate import make_coco_dataset

TESTS = Path(__file__).parent
CLI = Path(sys.executable).with_name("sam3-adapt")


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("memory")
    train, val = make_coco_dataset(root / "train", 8, seed=0), make_coco_dataset(root / "val", 2, seed=1)
    path = root / "fit.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"model": "tiny", "phrase_chunk_size": 4,
                  "trainable": {"mode": "lora", "lora": {"preset": "all_attn", "r": 4, "alpha": 8}}},
        "data": {"train": [{"path": str(train)}], "val": [{"path": str(val)}], "batch_size": 4, "num_workers": 0},
        "trainer": {"accelerator": "cpu", "precision": "32-true", "max_steps": 2, "limit_val_batches": 1,
                    "enable_progress_bar": False, "enable_model_summary": False, "logger": False},
    }))
    return path


def _fit(config: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run([str(CLI), "fit", "--config", str(config), f"--trainer.default_root_dir={root}", *extra],
                          env=env, capture_output=True, text=True, timeout=300, cwd=root.parent)


def test_the_ladder_halves_the_batch_keeping_the_global_batch_then_checkpoints_then_chunks():
    rungs, settings = [], MemorySettings(batch_size=4, accumulate_grad_batches=2, phrase_chunk_size=4)
    while (step := next_rung(settings)) is not None:
        settings, change = step
        rungs.append((settings.batch_size, settings.accumulate_grad_batches, settings.activation_checkpointing,
                      settings.phrase_chunk_size))
    assert rungs == [(2, 4, False, 4), (1, 8, False, 4), (1, 8, True, 4), (1, 8, True, 2), (1, 8, True, 1)]
    assert all(b * a == 8 for b, a, _, _ in rungs)  # 8 images per optimizer step on every rung


def test_out_of_memory_walks_down_the_ladder_until_a_rung_trains_and_the_run_reports_its_memory(config, tmp_path):
    done = _fit(config, tmp_path / "run", "--trainer.callbacks+=recording_callbacks.OutOfMemoryAbove",
                "--trainer.callbacks.images=1", "--trainer.callbacks.unless_checkpointing=true")
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if "out of memory" in line]
    assert len(said) == 3 and "batch 4 -> 2, gradient accumulation 1 -> 2" in said[0]
    assert "activation checkpointing on" in said[2]
    report = json.loads((tmp_path / "run" / "memory.json").read_text())
    assert [(r["batch_size"], r["accumulate_grad_batches"], r["activation_checkpointing"], r["outcome"][:7])
            for r in report["ladder"]] == [(4, 1, False, "out of "), (2, 2, False, "out of "),
                                           (1, 4, False, "out of "), (1, 4, True, "trained")]
    assert report["step"] == 2 and report["batch_size"] == 1 and report["accumulate_grad_batches"] == 4
    # the report of the run that trained
    assert report["device"] == "cpu" and "resident" in report["peak_kind"]
    trainable = report["trainable_parameters_bytes"]
    assert 0 < trainable < report["parameters_bytes"]  # LoRA: a small part of the model trains
    assert 0 < report["gradients_bytes"] <= trainable  # unused parameters (the geometry encoder) get none
    assert report["optimizer_state_bytes"] >= 2 * report["gradients_bytes"]  # AdamW: two moments per weight it steps
    assert report["peak_bytes"] > report["parameters_bytes"]


def test_on_oom_stop_fails_with_one_line(config, tmp_path):
    done = _fit(config, tmp_path / "run", "--on_oom=stop", "--trainer.callbacks+=recording_callbacks.OutOfMemoryAbove",
                "--trainer.callbacks.images=1")
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "ran out of memory (recovery off: --on_oom=stop)" in last and "batch 4" in last
    assert "Traceback" not in done.stderr


def test_lightnings_batch_size_finder_picks_the_largest_batch_that_fits(config, tmp_path, monkeypatch):
    """`--trainer.callbacks+=BatchSizeFinder` works with Sam3FineTuner and Sam3DataModule (it scales the data
    module's batch_size); out of memory is injected in the training step, above 2 images (its trials run without
    the run's callbacks, so it cannot be injected by one)."""
    import torch
    from lightning.pytorch.callbacks import BatchSizeFinder

    from adapt.data.datamodule import DatasetSpec, Sam3DataModule
    from adapt.training.memory import MemoryReport
    from adapt.training.module import Sam3FineTuner
    from adapt.training.trainer import build_trainer
    from sam3_model.settings import LoraSettings
    from adapt.settings import TrainableConfig

    real_step = Sam3FineTuner.training_step

    def step(self, batch, batch_idx):
        if batch.num_images > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(Sam3FineTuner, "training_step", step)
    fit = yaml.safe_load(config.read_text())
    module = Sam3FineTuner(model="tiny", phrase_chunk_size=4,
                           trainable=TrainableConfig(mode="lora", lora=LoraSettings(preset="all_attn", r=4, alpha=8)))
    data = Sam3DataModule(train=[DatasetSpec(**fit["data"]["train"][0])], batch_size=1, num_workers=0)
    trainer = build_trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=2, limit_val_batches=0,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False, quiet=True,
                            default_root_dir=str(tmp_path),
                            callbacks=[BatchSizeFinder(mode="power", steps_per_trial=1, init_val=1), MemoryReport()])
    trainer.fit(module, datamodule=data)
    assert data.batch_size == 2 and trainer.global_step == 2
    report = json.loads((tmp_path / "memory.json").read_text())
    assert report["batch_size"] == 2


def test_a_recipe_training_recovers_from_out_of_memory_with_the_same_global_batch(tmp_path, monkeypatch):
    """A recipe's run walks the same ladder: 4 images per step become 2 x 2 accumulated, recorded in memory.json."""
    import torch

    from adapt.training.module import Sam3FineTuner
    from recipes.config import load_recipe
    from recipes.jobs import run_job
    from recipes.runner import RecipeRun

    toy = {"size": 84, "objects": [1, 3], "min_object": 0.2, "max_object": 0.4}
    recipe = load_recipe("demo", {
        "hq": {"train": {"toy": {**toy, "num_images": 8, "seed": 11}}, "test": {"toy": {**toy, "num_images": 2,
                                                                                         "seed": 12}}},
        "general": {"test": None, "held_out": 0}, "arms": ["hq"], "mixes": ["none"], "sizes": [8],
        "train": {"steps": 2, "batch_size": 4, "threads_per_job": None}, "tracking": {"wandb": "disabled"}})
    run = RecipeRun(recipe, tmp_path, progress=False, say=lambda _: None)
    (job,) = [j for j in run.jobs(run.data()) if j.train_data]
    real_step, sizes = Sam3FineTuner.training_step, []

    def step(self, batch, batch_idx):
        sizes.append(batch.num_images)
        if batch.num_images > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(Sam3FineTuner, "training_step", step)
    result = run_job(job)
    assert result["steps"] == 2 and sizes == [4, 2, 2, 2, 2]  # 2 optimizer steps of 2 accumulated batches of 2
    report = json.loads((Path(job.out_dir) / "memory.json").read_text())
    assert [(r["batch_size"], r["accumulate_grad_batches"], r["outcome"][:7]) for r in report["ladder"]] == [
        (4, 1, "out of "), (2, 2, "trained")]
    assert report["accumulate_grad_batches"] == 2 and report["batch_size"] == 2
