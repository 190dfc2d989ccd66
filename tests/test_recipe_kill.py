"""Killing `recipe run` with SIGKILL takes its training workers with it (they would keep writing run folders)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from proc_helpers import children

CLI = Path(sys.executable).with_name("sam3-adapt")
TOY = {"size": 84, "objects": [1, 3], "min_object": 0.2, "max_object": 0.4}
OVERRIDES = {
    "hq": {"train": {"toy": {**TOY, "num_images": 8, "seed": 11}}, "test": {"toy": {**TOY, "num_images": 4, "seed": 12}}},
    "pool": {"source": {"toy": {**TOY, "num_images": 4, "seed": 13}}},
    "arms": ["hq", "syn"], "mixes": ["none"], "sizes": [4],
    "train": {"steps": 100000, "parallel_jobs": 2, "threads_per_job": 1, "max_minutes": None},
    "tracking": {"wandb": "disabled"}, "verifier_training": {"epochs": 1}, "synth": {"shard_size": 8},
}




def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_sigkill_of_recipe_run_ends_its_training_workers(tmp_path):
    sets = [f"--{key}={json.dumps(value)}" for key, value in OVERRIDES.items()]
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    process = subprocess.Popen([str(CLI), "recipe", "run", "demo", "--out", str(tmp_path / "out"), "--quiet", *sets],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline, workers = time.monotonic() + 240, []
        while time.monotonic() < deadline and process.poll() is None:
            workers = [p for p in children(process.pid) if "spawn_main" in _cmdline(p)
                       and "resource_tracker" not in _cmdline(p)]
            if len(workers) == 2 and any((tmp_path / "out" / "runs").glob("*/")):
                break
            time.sleep(0.5)
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert len(workers) == 2, "the training workers never started"
        time.sleep(2)  # let them get into training
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers), [(p, _cmdline(p)) for p in workers if _alive(p)]
    finally:
        if process.poll() is None:
            process.kill()
        for pid in children(process.pid):
            os.kill(pid, signal.SIGKILL)
