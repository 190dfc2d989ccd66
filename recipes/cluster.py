"""A recipe's trainings as a SLURM job array, through submitit (`train.launcher: slurm`).

Every unfinished training of the sweep becomes one task of a job array (`submitit` pickles the `TrainJob`; the
task calls `recipes.jobs.run_job`, which writes the run folder and, last and atomically, its `result.json`, exactly
as a local run does). What was submitted is recorded in `OUT/slurm/submitted.json` (run -> job id), so a later
`recipe run` (after `--detach`, a lost login session or a kill) re-attaches to the jobs still queued or running
instead of submitting them twice, resubmits only runs whose job ended without a result, and skips finished runs.
`executor: local` runs the tasks as processes of this machine through submitit's local executor: the same path,
used by the tests and for a dry run of a sweep.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam3_model.atomic import atomic_write_text
from sam3_model.errors import ConfigError, Sam3AdaptError

from .config import SlurmSettings
from .jobs import TrainJob, read_result

RECORD_NAME = "submitted.json"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"  # the record's submission times
# sacct states after which a job no longer runs (a run without result.json is then resubmitted)
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE", "FINISHED", "INTERRUPTED", "NO PROCESS AND NO RESULT"}


class LaunchError(Sam3AdaptError):
    """Trainings of a sweep failed on the cluster (each named with its job and log)."""


@dataclass
class Sweep:
    """Where the sweep stands: results of finished runs, and the runs still queued or running."""

    results: dict[str, dict[str, Any]]
    waiting: list[str]


class ClusterSweep:
    """Submit a recipe's unfinished trainings as a job array, re-attach to earlier submissions, collect results."""

    def __init__(self, settings: SlurmSettings, folder: Path, recipe: str,
                 say: Callable[[str], None] = print) -> None:
        self.settings, self.folder, self.recipe, self.say = settings, Path(folder), recipe, say
        self.record_path = self.folder / RECORD_NAME
        self._unknown: set[str] = set()  # jobs sacct did not know long after their submission (said once)

    # ----- the record of what was submitted ---------------------------------------------------------------------
    def read_record(self) -> dict[str, dict[str, Any]]:
        """run name -> {job_id, executor, submitted, submissions} of the latest submission of each run."""
        if not self.record_path.is_file():
            return {}
        return json.loads(self.record_path.read_text())

    def _write_record(self, record: dict[str, dict[str, Any]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.record_path, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def _entry(self, handle: Any, earlier: dict[str, Any] | None) -> dict[str, Any]:
        """The record of one submission (a submitit job handle), counting the submissions before it."""
        return {"job_id": str(handle.job_id), "executor": self.settings.executor,
                "submitted": time.strftime(TIME_FORMAT), "submissions": int((earlier or {}).get("submissions", 0)) + 1,
                "log": str(handle.paths.stderr)}

    # ----- submitting -------------------------------------------------------------------------------------------
    def executor(self, gpus: int, nodes: int = 1, tasks_per_node: int = 1, name: str = "train") -> Any:
        """A submitit executor: one training per task (SLURM, or the local one with `executor: local`), or with
        `nodes` x `tasks_per_node`, one job whose tasks are the ranks of one distributed run."""
        import shutil

        import submitit

        s = self.settings
        if s.executor == "slurm" and shutil.which("srun") is None:
            raise ConfigError("train.launcher: slurm needs SLURM's srun and sbatch on PATH: run `recipe run` on the "
                              "cluster's login node (train.slurm.executor: local runs the same sweep here)")
        executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=s.executor)
        parameters: dict[str, Any] = dict(name=f"{self.recipe}-{name}", timeout_min=s.time_minutes, nodes=nodes,
                                          tasks_per_node=tasks_per_node, gpus_per_node=gpus,
                                          cpus_per_task=s.cpus_per_task)
        if s.mem_gb is not None:
            parameters["mem_gb"] = s.mem_gb
        if s.executor == "slurm":
            parameters.update(slurm_array_parallelism=s.array_parallelism,
                              slurm_additional_parameters=dict(s.sbatch), slurm_setup=list(s.setup),
                              **{f"slurm_{k}": v for k in ("partition", "account", "qos")
                                 if (v := getattr(s, k)) is not None})
        else:
            parameters["local_setup"] = list(s.setup)
        executor.update_parameters(**parameters)
        return executor

    def submit(self, jobs: list[TrainJob], gpus: int) -> None:
        """Submit `jobs` as one job array and record their job ids (before anything else can go wrong)."""
        from .jobs import run_job

        executor = self.executor(gpus)
        submitted = executor.map_array(run_job, jobs)
        record = self.read_record()
        for job, handle in zip(jobs, submitted):
            record[job.name] = self._entry(handle, record.get(job.name))
        self._write_record(record)
        first = submitted[0].job_id.split("_")[0] if submitted else "?"
        self.say(f"train: submitted {len(jobs)} run(s) as job array {first} "
                 f"({self.settings.executor}; logs under {self.folder})")

    # ----- watching ---------------------------------------------------------------------------------------------
    def alive(self, entry: dict[str, Any]) -> bool:
        """Whether the recorded job of a run is still queued or running."""
        if entry.get("executor") == "local":  # the job id is the pid of submitit's local controller process
            return _process_alive(int(str(entry["job_id"]).split("_")[0]))
        import submitit

        state = submitit.SlurmJob(folder=str(self.folder / "%j"), job_id=str(entry["job_id"])).state
        state = (state.split() or ["UNKNOWN"])[0].upper()
        if state == "UNKNOWN" and entry["job_id"] not in self._unknown:  # sacct has not (yet) heard of it
            submitted = time.mktime(time.strptime(entry["submitted"], TIME_FORMAT))
            if time.time() - submitted > 600:
                self._unknown.add(entry["job_id"])
                self.say(f"train: sacct does not know job {entry['job_id']} 10 minutes after its submission; "
                         f"waiting for it as if it ran (check `sacct -j {entry['job_id']}`; scancel it and run "
                         "again to resubmit)")
        return state not in ENDED

    def status(self, jobs: list[TrainJob]) -> Sweep:
        """Results of finished runs and the runs whose job still runs; runs with neither are not in `waiting`."""
        record = self.read_record()
        results, waiting = {}, []
        for job in jobs:
            result = read_result(job.out_dir)
            if result is not None:
                results[job.name] = result
            elif job.name in record and self.alive(record[job.name]):
                waiting.append(job.name)
        return Sweep(results, waiting)

    def run(self, jobs: list[TrainJob], gpus: int, detach: bool = False,
            on_result: Callable[[dict[str, Any]], None] = lambda _: None) -> dict[str, dict[str, Any]] | None:
        """Finish every job on the cluster: re-attach to running ones, submit the rest, wait (unless `detach`) and
        return run name -> result; None when detached with runs unfinished."""
        sweep = self.status(jobs)
        if sweep.waiting:
            self.say(f"train: {len(sweep.waiting)} run(s) submitted earlier are still queued or running; "
                     "waiting for them, not submitting them again")
        missing = [j for j in jobs if j.name not in sweep.results and j.name not in sweep.waiting]
        if missing:
            self.submit(missing, gpus)
        if detach:
            if len(sweep.results) < len(jobs):
                return None
            return sweep.results
        return self.wait(jobs, on_result, set(sweep.results))

    def wait(self, jobs: list[TrainJob], on_result: Callable[[dict[str, Any]], None],
             reported: set[str]) -> dict[str, dict[str, Any]]:
        """Poll until every job has a result or its job ended without one; failures raise one `LaunchError`."""
        record = self.read_record()
        results: dict[str, dict[str, Any]] = {}
        failed: list[str] = []
        pending = list(jobs)
        while pending:
            still = []
            for job in pending:
                result = read_result(job.out_dir)
                if result is not None:
                    results[job.name] = result
                    if job.name not in reported:
                        on_result(result)
                elif self.alive(record[job.name]):
                    still.append(job)
                elif (result := read_result(job.out_dir)) is not None:  # finished between the two looks
                    results[job.name] = result
                    on_result(result)
                else:
                    failed.append(job.name)
            pending = still
            if pending:
                time.sleep(self.settings.poll_seconds)
        if failed:
            logs = "; ".join(f"{name} (job {record[name]['job_id']}, log {record[name].get('log', '?')})"
                             for name in failed)
            raise LaunchError(f"train: {len(failed)} run(s) ended on the cluster without a result: {logs}; "
                              "`recipe run` again resubmits them (finished runs are kept)")
        return results

    # ----- the data engine as one distributed job ------------------------------------------------------------------
    def run_engine(self, key: str, task: Callable[[], None], done: Callable[[], bool], nodes: int,
                   tasks_per_node: int, gpus_per_node: int, detach: bool = False) -> bool:
        """Run `task` on every rank of one job of `nodes` x `tasks_per_node` tasks (each task one rank, its
        torch.distributed variables set), unless `done()`; re-attach to a recorded job still running. Returns
        whether the work is done (False: detached while it runs)."""
        if done():
            return True
        record = self.read_record()
        if key in record and self.alive(record[key]):
            self.say(f"{key}: the job submitted earlier ({record[key]['job_id']}) still runs; waiting for it")
        else:
            executor = self.executor(gpus_per_node, nodes, tasks_per_node, name=key.replace(":", "-"))
            handle = executor.submit(engine_rank, task)
            record[key] = self._entry(handle, record.get(key))
            self._write_record(record)
            self.say(f"{key}: submitted as job {handle.job_id} ({nodes} node(s) x {tasks_per_node} rank(s), "
                     f"{self.settings.executor})")
        if detach:
            return False
        while self.alive(record[key]):
            time.sleep(self.settings.poll_seconds)
        if not done():
            raise LaunchError(f"{key}: job {record[key]['job_id']} ended before the data engine finished; its log: "
                              f"{record[key].get('log', '?')}; `recipe run` again resubmits it (finished shards "
                              "are kept)")
        return True


def engine_rank(task: Callable[[], None]) -> None:
    """One rank of a distributed data-engine job: the torch.distributed variables from the job's tasks (SLURM's
    own are read by Lightning first where they exist), then `task`."""
    import submitit

    environment = submitit.JobEnvironment()
    if environment.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        os.environ["NODE_RANK"] = str(environment.node)
    task()


def _process_alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) submitit process on this machine."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    if state == "Z":
        try:  # our own child: reap it
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return b"submitit" in command
