"""The run directory: the plan, one folder of shard files per stage, images, and the fingerprints that guard resumes.

    OUT/plan.json                       every task, the shard size, the config fingerprint
    OUT/images/<key>.<ext>              every image of the dataset
    OUT/stages/<stage>/shard-00012.json one shard's records, written atomically by the rank that made it
    OUT/stages/<stage>/stage.json       the fingerprint of the config the stage ran with

A shard file exists only when complete, so a rerun skips finished shards. A stage refuses to resume under a
different configuration (that would mix two datasets); the message says which folder to delete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sam3_model.atomic import atomic_write_text
from sam3_model.errors import ConfigError

STAGES = ("generate", "label", "verify")


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-ready object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunDir:
    """Paths and shard bookkeeping of one data-engine output directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def images(self) -> Path:
        return self.root / "images"

    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def shard_path(self, stage: str, shard: int) -> Path:
        return self.stage_dir(stage) / f"shard-{shard:05d}.json"

    def done(self, stage: str, num_shards: int) -> list[int]:
        """Shards of `stage` already written."""
        return [s for s in range(num_shards) if self.shard_path(stage, s).is_file()]

    def pending(self, stage: str, num_shards: int) -> list[int]:
        """Shards of `stage` still to do."""
        return [s for s in range(num_shards) if not self.shard_path(stage, s).is_file()]

    def write_shard(self, stage: str, shard: int, records: list[dict[str, Any]]) -> Path:
        """Write one shard's records atomically."""
        body = json.dumps({"stage": stage, "shard": shard, "records": records}, separators=(",", ":"))
        return atomic_write_text(self.shard_path(stage, shard), body + "\n")

    def read_shard(self, stage: str, shard: int) -> list[dict[str, Any]]:
        """The records of one finished shard (`ConfigError` when it is missing: run the stage first)."""
        path = self.shard_path(stage, shard)
        if not path.is_file():
            raise ConfigError(f"{path}: missing; run the '{stage}' stage first (sam3-adapt synth {stage})")
        return json.loads(path.read_text())["records"]

    # ----- plan and fingerprints --------------------------------------------------------------------------
    def write_plan(self, tasks: list[dict[str, Any]], shard_size: int, config_print: str) -> None:
        """Record the plan, or check that an existing one is the same (a resume)."""
        path = self.root / "plan.json"
        plan = {"fingerprint": config_print, "shard_size": shard_size, "tasks": tasks}
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("fingerprint") != config_print or old.get("shard_size") != shard_size or \
                    old.get("tasks") != tasks:
                raise ConfigError(f"{path}: this directory holds a run planned with a different source config; "
                                  "use another --out, or delete it to start over")
            return
        atomic_write_text(path, json.dumps(plan) + "\n")

    def read_plan(self) -> dict[str, Any]:
        """The recorded plan (`ConfigError` when there is none)."""
        path = self.root / "plan.json"
        if not path.is_file():
            raise ConfigError(f"{path}: missing; run 'sam3-adapt synth generate' (or 'run') first")
        return json.loads(path.read_text())

    def stage_fingerprint(self, stage: str) -> str | None:
        """The config fingerprint `stage` was claimed with, or None when it has not run yet."""
        path = self.stage_dir(stage) / "stage.json"
        return json.loads(path.read_text()).get("fingerprint") if path.is_file() else None

    def claim_stage(self, stage: str, config_print: str) -> None:
        """Record the config `stage` runs with, or check it against the one its finished shards used."""
        path = self.stage_dir(stage) / "stage.json"
        if path.is_file():
            if self.stage_fingerprint(stage) != config_print:
                raise ConfigError(f"{self.stage_dir(stage)}: its shards were made with a different configuration; "
                                  f"delete that folder (and the later stages') to redo it, or use another --out")
            return
        atomic_write_text(path, json.dumps({"stage": stage, "fingerprint": config_print}) + "\n")


def shard_slices(num_tasks: int, shard_size: int) -> list[range]:
    """Task index ranges of each shard."""
    return [range(s, min(s + shard_size, num_tasks)) for s in range(0, num_tasks, shard_size)]


class PlannedTasks:
    """A stage input: the planned tasks of one shard (picklable, for spawned ranks)."""

    def __init__(self, tasks: list[dict[str, Any]], shard_size: int) -> None:
        self.tasks, self.shard_size = tasks, shard_size

    def __call__(self, shard: int) -> list[dict[str, Any]]:
        return self.tasks[shard * self.shard_size : (shard + 1) * self.shard_size]


class StageOutput:
    """A stage input: the records an earlier stage wrote for one shard (picklable, for spawned ranks)."""

    def __init__(self, run_dir: RunDir, stage: str) -> None:
        self.run_dir, self.stage = run_dir, stage

    def __call__(self, shard: int) -> list[dict[str, Any]]:
        return self.run_dir.read_shard(self.stage, shard)
