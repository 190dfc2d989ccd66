"""`recipe plan`: every run a recipe would execute, what is finished, and the estimated device-hours of the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.config import load_recipe
from recipes.plan import StepTime, architecture_of, estimate, plan_text, read_step_times, STEP_TIMES
from recipes.sweep import all_runs
from sam3_model.errors import ConfigError

CLI = Path(sys.executable).with_name("sam3-adapt")
GPU_ROW = {"architecture": "sam3", "image_size": 1008, "mode": "lora", "batch_size": 8, "seconds_per_step": 2.0,
           "device": "gpu", "device_name": "NVIDIA H100 80GB HBM3", "source": "a test's table"}


def test_food_plan_lists_the_90_trainings_and_an_estimate_with_its_source():
    done = subprocess.run([str(CLI), "recipe", "plan", "food"], capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| run ")]
    assert len(rows) == 91 and "91 runs (90 trainings + zero-shot)" in text
    names = [row.split(" | ")[0].strip("| ") for row in rows]
    assert len(set(names)) == 91 and "syn+hq+general-n1000-s2" in names and names[0] == "zero-shot"
    # no GPU figure ships yet: the CPU figure is used and the plan says so, with the command that measured it
    assert "CPU-hours for the 90 trainings to do" in text and "bench_recipe.py arm-time" in text  # its LoRA step
    assert "no GPU figure has been measured for sam3" in text


def test_the_estimate_is_steps_times_images_times_the_measured_time_per_image():
    recipe = load_recipe("food", {"sizes": [100], "seeds": [0], "mixes": ["none"]})
    runs = all_runs(recipe)  # zero-shot + 5 arms
    result = estimate(recipe, runs, [StepTime(**GPU_ROW), *read_step_times(STEP_TIMES)])
    assert result.basis is not None and result.basis.device == "gpu"  # a GPU figure wins over the CPU one
    assert result.hours == pytest.approx(5 * 2000 * 8 * (2.0 / 8) / 3600)
    # half the resolution: a quarter of the pixels
    small = load_recipe("food", {"sizes": [100], "seeds": [0], "mixes": ["none"], "train": {"image_size": 504}})
    half = estimate(small, runs, [StepTime(**GPU_ROW)])
    assert half.hours == pytest.approx(result.hours / 4)
    assert any("scaled by pixel count to 504 px" in c for c in half.caveats)


def test_plan_marks_finished_and_submitted_runs(tmp_path):
    recipe = load_recipe("demo")
    out = tmp_path / "run"
    (out / "runs" / "hq+general-n50-s0").mkdir(parents=True)
    (out / "runs" / "hq+general-n50-s0" / "result.json").write_text(json.dumps({"run": "hq+general-n50-s0"}))
    (out / "slurm").mkdir()
    (out / "slurm" / "submitted.json").write_text(json.dumps({"syn-n200-s0": {"job_id": "77_3"},
                                                              "syn+general-n200-s0": {"job_id": "77_4"}}))
    text = plan_text(recipe, out, read_step_times(STEP_TIMES))
    assert "| hq+general-n50-s0 | hq | general | 50 | 0 | 1 | 400 | finished |" in text
    assert "| syn+general-n200-s0 | syn | general | 200 | 0 | 1 | 400 | submitted (job 77_4) |" in text
    assert "1 of 9 runs finished" in text
    assert "CPU-hours for the 7 trainings to do" in text  # a CPU recipe: the CPU figure, no caveat about GPUs
    assert "no GPU figure" not in text


def test_architecture_and_bad_tables(tmp_path):
    assert architecture_of("facebook/sam3") == architecture_of("sam3-random") == "sam3"
    assert architecture_of(str(Path(__file__).parents[1] / "recipes" / "demo_base")) == "small"
    assert architecture_of("someone/else") == "unknown"
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(ConfigError, match="not a step-time table"):
        read_step_times(bad)
