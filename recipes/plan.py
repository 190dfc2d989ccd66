"""`sam3-adapt recipe plan`: every run a recipe would execute, what is already done, and what the rest costs.

The cost is training time from a measured step time: the shipped table (`step_times.json`: the figures measured for
this project, each with its machine and command) or a `bench/gpu_suite.py` result the user ran on their own GPU
(`--step_times bench-out/gpu_suite.json`). A GPU figure is used when one matches the base model's architecture;
otherwise the CPU figure is, and the plan says so: it is then hours of that CPU, not of a GPU.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt.training.trainer import num_devices
from sam3_model.errors import ConfigError

from .config import RecipeConfig
from .jobs import read_result
from .sweep import PlannedRun, all_runs

STEP_TIMES = Path(__file__).resolve().parent / "step_times.json"


@dataclass(frozen=True)
class StepTime:
    """A measured training step: architecture, resolution, trainable mode, batch, seconds, and where it came from."""

    architecture: str  # "sam3" (the released 840M model), "small", "tiny"
    image_size: int
    mode: str  # "full", "lora", "heads"
    batch_size: int
    seconds_per_step: float
    device: str  # "gpu" or "cpu"
    device_name: str
    source: str  # the command (and document) that measured it
    shipped: bool = False  # one of sam3-adapt's own figures (a user's measurement ranks before it)

    @property
    def seconds_per_image(self) -> float:
        """Step time per training image (steps scale about linearly in the batch once the device is busy)."""
        return self.seconds_per_step / self.batch_size


@dataclass(frozen=True)
class Estimate:
    """Hours of training for the runs still to do, and how the figure was obtained."""

    hours: float | None
    basis: StepTime | None
    caveats: tuple[str, ...]


def read_step_times(path: str | os.PathLike[str]) -> list[StepTime]:
    """Step times from a step-time table (`{"entries": [...]}`) or a `bench/gpu_suite.py` result."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read step times ({error})") from None
    if isinstance(data, dict) and "sections" in data and "meta" in data:
        return _from_gpu_suite(data, str(path))
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ConfigError(f"{path}: not a step-time table ({{\"entries\": [...]}}) nor a gpu_suite.json")
    try:
        return [StepTime(**entry, shipped=Path(path) == STEP_TIMES) for entry in data["entries"]]
    except TypeError as error:
        raise ConfigError(f"{path}: a step-time entry is malformed ({error})") from None


def _from_gpu_suite(data: dict[str, Any], where: str) -> list[StepTime]:
    """The measured training steps of a gpu_suite.json (full fine-tuning and LoRA rows that did not run out of
    memory; the fastest variant per mode and batch)."""
    meta = data["meta"]
    architecture = architecture_of(str(meta.get("preset", "")))
    device = "gpu" if str(meta.get("device", "")).startswith("cuda") else "cpu"
    best: dict[tuple[str, int], StepTime] = {}
    for name, mode in (("full", "full"), ("lora", "lora")):
        for row in data["sections"].get(name, {}).get("rows", []):
            seconds, batch = row.get("step_s"), row.get("batch")
            if not isinstance(seconds, (int, float)) or not batch:
                continue
            entry = StepTime(architecture, int(meta["image_size"]), mode, int(batch), float(seconds), device,
                             str(meta.get("device_name", "?")), f"bench/gpu_suite.py ({where}, {meta.get('started')})")
            key = (mode, int(batch))
            if key not in best or entry.seconds_per_step < best[key].seconds_per_step:
                best[key] = entry
    if not best:
        raise ConfigError(f"{where}: the gpu_suite result has no finished training step (full or lora)")
    return list(best.values())


def architecture_of(base_model: str) -> str:
    """The architecture a base model has: a preset's name ("tiny", "small"), "sam3" for the released model (Hub id
    or the sam3-random preset), a folder's by its config.json, else "unknown"."""
    from sam3_model.presets import FULL_SIZE_PRESET, PRESET_SPECS, matching_preset

    if base_model == FULL_SIZE_PRESET or base_model.startswith("facebook/sam3"):
        return "sam3"
    if base_model in PRESET_SPECS:
        return base_model
    config = Path(base_model).expanduser() / "config.json"
    if config.is_file():
        preset = matching_preset(json.loads(config.read_text()))
        return "sam3" if preset == FULL_SIZE_PRESET else (preset or "unknown")
    return "unknown"


def choose_step_time(recipe: RecipeConfig, table: list[StepTime]) -> tuple[StepTime | None, list[str], int]:
    """The best figure for the recipe's training: its architecture, the recipe's device (GPU unless it trains on a
    CPU), the user's own measurement before a shipped one, its mode and resolution, the nearest batch; with what
    differs from the recipe, as caveats; and the resolution the recipe trains at."""
    t = recipe.train
    architecture = architecture_of(recipe.base_model)
    candidates = [e for e in table if e.architecture == architecture]
    if not candidates:
        return None, [f"no step time was measured for the base model's architecture ({architecture})"], 0
    size = t.image_size or _native_size(architecture, candidates)
    wanted = "cpu" if t.accelerator == "cpu" else "gpu"

    def rank(e: StepTime) -> tuple:
        return (e.device != wanted, e.shipped, e.mode != t.trainable.mode, e.image_size != size,
                abs(e.batch_size - t.batch_size))

    chosen = min(candidates, key=rank)
    caveats = []
    if chosen.device != wanted and wanted == "cpu":
        caveats.append(f"the recipe trains on a CPU, but only a GPU figure ({chosen.device_name}) was measured")
    elif chosen.device != wanted:
        caveats.append(f"no GPU figure has been measured for {architecture}; this is the CPU figure "
                       f"({chosen.device_name}), so the estimate is hours of that CPU, far more than on a GPU: run "
                       "`python bench/gpu_suite.py` on your GPU and pass --step_times bench-out/gpu_suite.json")
    if chosen.mode != t.trainable.mode:
        caveats.append(f"measured with {chosen.mode} fine-tuning, the recipe trains {t.trainable.mode}")
    if chosen.image_size != size:
        caveats.append(f"measured at {chosen.image_size} px, scaled by pixel count to {size} px")
    if chosen.batch_size != t.batch_size:
        caveats.append(f"measured at batch {chosen.batch_size}, scaled linearly to batch {t.batch_size}")
    return chosen, caveats, size


def _native_size(architecture: str, candidates: list[StepTime]) -> int:
    from sam3_model.presets import PRESET_SPECS

    if architecture == "sam3":
        return 1008
    if architecture in PRESET_SPECS:
        return PRESET_SPECS[architecture].image_size
    return candidates[0].image_size


def estimate(recipe: RecipeConfig, runs: list[PlannedRun], table: list[StepTime]) -> Estimate:
    """Device-hours to train `runs` (each `train.steps` steps of `train.batch_size` images on every device)."""
    chosen, caveats, size = choose_step_time(recipe, table)
    if chosen is None:
        return Estimate(None, None, tuple(caveats))
    t = recipe.train
    per_image = chosen.seconds_per_image * (size / chosen.image_size) ** 2
    devices = num_devices(t.devices, t.accelerator)
    trained = sum(1 for run in runs if run.trains)
    seconds = trained * t.steps * t.batch_size * per_image * devices * max(1, t.num_nodes)
    caveats.append("training only: the data engine, evaluation and model loading are not included")
    return Estimate(seconds / 3600, chosen, tuple(caveats))


def run_status(run: PlannedRun, out: Path | None, submitted: dict[str, Any]) -> str:
    """"finished", "submitted" (a cluster job was recorded for it) or "to do"."""
    if out is not None and read_result(out / "runs" / run.name) is not None:
        return "finished"
    if run.name in submitted:
        return f"submitted (job {submitted[run.name]['job_id']})"
    return "to do"


def plan_text(recipe: RecipeConfig, out: Path | None, table: list[StepTime]) -> str:
    """The plan as a person reads it: a table of runs, the counts, the estimate and its basis."""
    runs = all_runs(recipe)
    record = (out / "slurm" / "submitted.json") if out is not None else None
    submitted = json.loads(record.read_text()) if record is not None and record.is_file() else {}
    statuses = {run.name: run_status(run, out, submitted) for run in runs}
    t = recipe.train
    lines = [f"Recipe {recipe.name}: {len(runs)} runs ({sum(r.trains for r in runs)} trainings"
             + (" + zero-shot" if any(not r.trains for r in runs) else "") + f"), {t.steps} steps of batch "
             f"{t.batch_size} each, {t.trainable.mode} fine-tuning of {recipe.base_model}"
             + (f", {recipe.rounds} data-engine rounds" if recipe.rounds > 1 else "")
             + f"; launcher: {t.launcher}", "",
             "| run | arm | mix | images | seed | round | steps | status |", "|---|---|---|---:|---:|---:|---:|---|"]
    for run in runs:
        lines.append(f"| {run.name} | {run.arm} | {run.mix} | {run.size} | {run.seed} | {run.round} | "
                     f"{t.steps if run.trains else 0} | {statuses[run.name]} |")
    todo = [run for run in runs if statuses[run.name] != "finished"]
    finished = len(runs) - len(todo)
    lines += ["", f"{finished} of {len(runs)} runs finished" + (f" (in {out})" if out is not None else "")
              + f"; {len(todo)} to do."]
    result = estimate(recipe, todo, table)
    if result.hours is not None and result.basis is not None:
        b = result.basis
        unit = "GPU-hours" if b.device == "gpu" else "CPU-hours"
        lines.append(f"Estimate: {result.hours:,.1f} {unit} for the {sum(r.trains for r in todo)} trainings to do "
                     f"(from {b.seconds_per_step:g} s per step at batch {b.batch_size}, {b.mode}, {b.image_size} px "
                     f"on {b.device_name}; measured by {b.source}).")
    else:
        lines.append("Estimate: none.")
    lines += [f"- {caveat}" for caveat in result.caveats]
    return "\n".join(lines)
