"""A recipe sweep on a cluster (`train.launcher: slurm`), through submitit's local executor: the same code path as
SLURM. Submitted, detached, a job lost, the waiting `recipe run` killed, then collected: the same results.csv as
a local run, every run once."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipes.config import load_recipe
from recipes.runner import RecipeRun
from proc_helpers import kill_tree
from sam3_model.errors import ConfigError

CLI = Path(sys.executable).with_name("sam3-adapt")
TOY = {"size": 84, "objects": [1, 3], "min_object": 0.2, "max_object": 0.4}
SWEEP = {  # 4 trainings: hq x 2 sizes x 2 seeds
    "hq": {"train": {"toy": {**TOY, "num_images": 8, "seed": 11}}, "test": {"toy": {**TOY, "num_images": 4, "seed": 12}}},
    "general": {"test": None, "held_out": 0},
    "arms": ["hq"], "mixes": ["none"], "sizes": [4, 6], "seeds": [0, 1],
    "train": {"steps": 8, "parallel_jobs": 1, "threads_per_job": 1, "max_minutes": None},
    "tracking": {"wandb": "disabled"},
}
CLUSTER = {"launcher": "slurm", "slurm": {"executor": "local", "poll_seconds": 0.5}}
RUNS = ["hq-n4-s0", "hq-n4-s1", "hq-n6-s0", "hq-n6-s1"]


def _rows(path: Path) -> list[dict[str, str]]:
    """results.csv without the one column that measures the machine (train_seconds)."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "train_seconds"} for row in csv.DictReader(f)]


def _command(out: Path, *extra: str) -> list[str]:
    sets = [f"--{key}={json.dumps(value)}" for key, value in SWEEP.items() if key != "train"]
    train = {**SWEEP["train"], **CLUSTER}
    return [str(CLI), "recipe", "run", "demo", "--out", str(out), "--quiet", *sets, f"--train={json.dumps(train)}",
            *extra]






def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_cluster_sweep_killed_and_resubmitted_reports_what_a_local_run_reports(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    local = tmp_path / "local"
    RecipeRun(load_recipe("demo", SWEEP), local, progress=False, say=lambda _: None).run()

    out = tmp_path / "cluster"
    record = out / "slurm" / "submitted.json"
    log = tmp_path / "detach.log"  # a file, not a pipe: the local executor's tasks inherit it and outlive us
    with open(log, "w") as handle:
        code = subprocess.run(_command(out, "--detach"), env=env, stdout=handle, stderr=subprocess.STDOUT,
                              timeout=300, cwd=tmp_path).returncode
    said = log.read_text()
    assert code == 0, said[-3000:]
    assert "submitted 4 run(s) as job array" in said and "detached" in said
    assert not (out / "results.csv").exists()
    submitted = json.loads(record.read_text())
    assert sorted(submitted) == RUNS and all(e["submissions"] == 1 for e in submitted.values())
    waiter = None
    try:
        # one job is lost (a node died): kill its whole process tree before it writes a result
        _wait_for(lambda: any((out / "runs" / r / "result.json").exists() for r in RUNS), 240, "a first result")
        lost = next((r for r in RUNS if not (out / "runs" / r / "result.json").exists()), None)
        assert lost is not None, "every run finished before one could be lost; slow the sweep down"
        kill_tree(int(submitted[lost]["job_id"]))

        # a waiting `recipe run` resubmits the lost run only, then is killed itself
        with open(tmp_path / "waiter.log", "w") as handle:
            waiter = subprocess.Popen(_command(out), env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=tmp_path)
        _wait_for(lambda: json.loads(record.read_text())[lost]["submissions"] == 2 or waiter.poll() is not None,
                  240, "the lost run's resubmission")
        assert waiter.poll() is None, (tmp_path / "waiter.log").read_text()[-3000:]
        os.kill(waiter.pid, signal.SIGKILL)
        waiter.wait(timeout=30)

        # the next `recipe run` re-attaches to whatever still runs, and reports
        with open(tmp_path / "final.log", "w") as handle:
            code = subprocess.run(_command(out), env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=400,
                                  cwd=tmp_path).returncode
        said = (tmp_path / "final.log").read_text()
        assert code == 0, said[-3000:]
        assert "still queued or running" in said or "already finished" in said
    finally:
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
        for entry in json.loads(record.read_text()).values():
            kill_tree(int(entry["job_id"]))

    resubmissions = {name: entry["submissions"] for name, entry in json.loads(record.read_text()).items()}
    assert resubmissions == {r: 2 if r == lost else 1 for r in RUNS}  # nothing in flight was submitted twice
    rows = _rows(out / "results.csv")
    assert sorted(row["run"] for row in rows) == RUNS  # every run once: none missing, none duplicated
    assert rows == _rows(local / "results.csv")


def test_detach_needs_the_cluster_launcher_and_task_gpus_match_the_training():
    from recipes.verbs import run

    with pytest.raises(ConfigError, match="--detach needs train.launcher: slurm"):
        run(load_recipe("demo", SWEEP), Path("unused"), detach=True)
    with pytest.raises(ConfigError, match="must equal train.slurm.gpus_per_task"):
        load_recipe("demo", {**SWEEP, "train": {"launcher": "slurm", "accelerator": "gpu", "devices": 2,
                                                "slurm": {"gpus_per_task": 1}}})


def test_slurm_parameters_reach_submitit(tmp_path, monkeypatch):
    """partition, account, GPUs, time and extra sbatch options end up in the sbatch script submitit writes; without
    SLURM on PATH the sweep stops with one line saying so."""
    from recipes.cluster import ClusterSweep

    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    recipe = load_recipe("demo", {**SWEEP, "train": {"launcher": "slurm"}})
    with pytest.raises(ConfigError, match="needs SLURM's srun and sbatch on PATH"):
        ClusterSweep(recipe.train.slurm, tmp_path, "demo").executor(1)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")  # what submitit looks for
    (tmp_path / "bin" / "srun").chmod(0o755)

    recipe = load_recipe("demo", {**SWEEP, "train": {
        "launcher": "slurm", "accelerator": "gpu", "devices": 2,
        "slurm": {"partition": "h100", "account": "vision", "gpus_per_task": 2, "time_minutes": 90,
                  "sbatch": {"constraint": "h100"}, "setup": ["module load cuda"]}}})
    executor = ClusterSweep(recipe.train.slurm, tmp_path, "demo").executor(2)
    script = executor._executor._make_submission_file_text("python -c pass", "uid")
    for line in ("#SBATCH --partition=h100", "#SBATCH --account=vision", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --time=90", "#SBATCH --constraint=h100", "module load cuda"):
        assert line in script, script


@pytest.mark.parametrize("job,state,alive", [("71", "RUNNING", True), ("72", "PENDING", True),
                                             ("73", "COMPLETED", False), ("74", "TIMEOUT", False),
                                             ("75", "OUT_OF_MEMORY", False), ("76", None, True)])
def test_a_recorded_slurm_job_is_waited_for_until_sacct_says_it_ended(tmp_path, monkeypatch, job, state, alive):
    """Re-attaching asks sacct (through submitit); a job sacct does not know long after submission is waited for,
    and said once."""
    from recipes.cluster import ClusterSweep

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    line = f"{job}|{state}|node1" if state else ""  # submitit caches states by job id: one id per case
    (bin_dir / "sacct").write_text(f"#!/bin/sh\necho 'JobID|State|NodeList'\necho '{line}'\n")
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    said: list[str] = []
    recipe = load_recipe("demo", {**SWEEP, "train": {"launcher": "slurm"}})
    sweep = ClusterSweep(recipe.train.slurm, tmp_path, "demo", said.append)
    entry = {"job_id": job, "executor": "slurm", "submitted": "2026-01-01T00:00:00"}
    assert sweep.alive(entry) is alive
    assert sweep.alive(entry) is alive and len(said) == (0 if state else 1)
