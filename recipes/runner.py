"""`sam3-adapt recipe run`: the steps of a recipe, in the order the YAML reads.

    data      HQ train / test and general train / test datasets: files, or toy images rendered with exact labels
    verifier  a crop classifier trained on HQ train (when the recipe asks for one)
    calibrate the verifiers' thresholds set on human-verified labels (when the recipe asks for it)
    synth     the pool (pl, syn arms) and the generator (gen arm) pseudo-labelled and verified
    train     every arm x mix x size x seed fine-tuned, and zero-shot, all evaluated on HQ test and general test
    rounds    with `rounds: N`, synth and train again with the previous round's best model as the teacher
    report    results.csv, results.md (with 95% bootstrap intervals), scaling.png, tradeoff.png, a W&B summary
    export    the best arm's model, loadable by transformers

Every step skips finished work, so a rerun after a crash (or with more arms or seeds) only does what is new.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sam3_model.atomic import atomic_write_text
from sam3_model.errors import ConfigError
from synth.ontology import load_ontology, ontology_from_mapping

from .calibration import calibrated
from .check import check_message, check_recipe
from .config import RecipeConfig
from .data import Dataset, general_datasets, materialise, run_synth, train_verifier, verifier_report, verify_config
from .jobs import GENERAL_TEST_SET, TEST_SET, TrainJob, read_result, run_job
from .evidence import Evidence
from .sweep import planned_runs
from .results import (add_report_columns, best_group, group_rows, results_markdown, scaling_plot, tradeoff_plot,
                      write_csv)

SEMANTIC_VERIFIERS = {"crop_classifier", "clip", "vlm", "agreement"}  # judge what a mask shows, not its shape


@dataclass
class RecipeOutputs:
    """What a recipe run wrote."""

    out: Path
    rows: list[dict[str, Any]]
    export: Path | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    notes: list[str] = field(default_factory=list)
    detached: bool = False  # the sweep was submitted to the cluster and is still running (no report yet)


def _versions() -> dict[str, str]:
    import lightning
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "lightning": lightning.__version__}


class RecipeRun:
    """Run one recipe into `out` (see the module docstring for the steps)."""

    def __init__(self, recipe: RecipeConfig, out: str | os.PathLike[str], where: str = "",
                 progress: bool = True, say: Callable[[str], None] = print, detach: bool = False) -> None:
        self.recipe, self.out, self.where = recipe, Path(out), where or recipe.name
        self.progress, self.say, self.detach = progress, say, detach  # detach: submit a cluster sweep, not wait
        self.timings: dict[str, float] = {}
        self.verify = recipe.verify  # the verifiers that judge the pseudo-labels (trained and calibrated ones added)
        self.calibration_note = ""
        self.teachers: dict[int, str] = {}  # round -> the teacher model that labelled its pool

    # ----- steps --------------------------------------------------------------------------------------------
    def ontology(self):
        """The domain ontology."""
        r = self.recipe
        if isinstance(r.ontology, str):
            return load_ontology(r.ontology)
        return ontology_from_mapping(r.ontology, f"recipe {r.name}: ontology")

    def data(self) -> dict[str, Dataset]:
        """HQ train, HQ test, and general train (the mix) and test (retention) data, on disk."""
        r, work = self.recipe, self.out / "data"
        found = {"hq": materialise(r.hq.train, r, work / "hq-train", self.progress),
                 "test": materialise(r.hq.test, r, work / "hq-test", self.progress)}
        found.update(general_datasets(r.general, r, work, self.progress))
        return found

    def verifier(self, hq: Dataset) -> Path | None:
        """Train the recipe's crop-classifier verifier on HQ train (once), when asked and when anything is verified."""
        r = self.recipe
        if r.verifier_training is None or not any(a in r.arms for a in ("syn", "syn+hq", "gen")):
            return None
        calibration = r.calibration
        skip = calibration.hq_images if calibration is not None and not calibration.human else 0
        return train_verifier(r, hq, self.out / "verifier", list(self.ontology().phrases()), skip)

    def calibrate(self, verifier: Path | None, hq: Dataset) -> None:
        """The verifiers that will judge the pool: the recipe's, the trained one, thresholds calibrated if asked."""
        verify = verify_config(self.recipe, verifier)
        self.verify, self.calibration_note = calibrated(self.recipe, verify, hq, self.ontology(),
                                                        self.out / "calibration")

    def synth(self, round_: int = 1, teacher: str | None = None) -> dict[str, Dataset] | None:
        """The pool's pl and syn datasets and the generator's (verified) gen dataset, labelled by the recipe's
        teacher (round 1) or by `teacher`, the previous round's best model. With train.launcher: slurm the
        engine's stages run as cluster jobs; None when detached from one still running."""
        r, found, suffix = self.recipe, {}, "" if round_ == 1 else f"-r{round_}"
        self.teachers[round_] = teacher or r.teacher_config().model
        cluster = self._cluster() if r.train.launcher == "slurm" else None
        sources = []
        if r.pool is not None and any(a in r.arms for a in ("pl", "syn", "syn+hq")):
            sources.append(("pool", r.pool))
        if r.generator is not None and "gen" in r.arms:
            sources.append(("gen", r.generator))
        detached = False
        for name, images in sources:
            files = run_synth(r, images, self.out / "synth" / f"{name}{suffix}", self.verify, self.progress, teacher,
                              cluster=cluster, detach=self.detach)
            if files is None:
                detached = True
            elif name == "pool":
                found["pl"] = Dataset(str(files["pl"]), None, "saco")
                found["syn"] = Dataset(str(files["syn"]), None, "saco")
            else:
                found["gen"] = Dataset(str(files["syn"]), None, "saco")
        if detached:
            self.say("synth: detached; the data engine runs on the cluster. Run the same `recipe run` again to "
                     "continue when it has finished")
            return None
        return found

    def _cluster(self) -> Any:
        from .cluster import ClusterSweep

        return ClusterSweep(self.recipe.train.slurm, self.out / "slurm", self.recipe.name, self.say)

    def jobs(self, datasets: dict[str, Dataset], round_: int = 1) -> list[TrainJob]:
        """Zero-shot, then every trained arm x mix x size x seed (in rounds after the first: the arms trained on
        pseudo-labels only)."""
        r = self.recipe
        base = r.base_model
        neg = r.train.max_negatives
        phrases = list(self.ontology().phrases())  # domain data is scored on the ontology's phrases only
        general_test = datasets["general-test"].spec(name=GENERAL_TEST_SET) if "general-test" in datasets else None
        common = dict(base_model=base, test=datasets["test"].spec(name=TEST_SET, phrases=phrases),
                      general_test=general_test, settings=r.train, tracking=r.tracking, recipe=r.name,
                      progress=self.progress, round=round_)
        jobs = []
        for run in planned_runs(r, round_):
            if not run.trains:
                jobs.append(TrainJob(name=run.name, arm=run.arm, mix=run.mix, size=0, seed=run.seed,
                                     out_dir=str(self.out / "runs" / run.name), **common))
                continue
            size = run.size
            if run.arm == "syn+hq":
                half = size // 2
                domain = [datasets["syn"].spec(name="syn", max_images=size - half, weight=0.5, max_negatives=neg),
                          datasets["hq"].spec(name="hq", max_images=max(1, half), weight=0.5, max_negatives=neg,
                                              phrases=phrases)]
            else:
                domain = [datasets[run.arm].spec(name=run.arm, max_images=size, max_negatives=neg, phrases=phrases)]
            train = list(domain)
            if run.mix == "general":  # 1:1: general data gets as many draws as the domain data together
                train.append(datasets["general"].spec(name="general", weight=1.0, max_negatives=neg))
            jobs.append(TrainJob(name=run.name, arm=run.arm, mix=run.mix, size=size, seed=run.seed,
                                 out_dir=str(self.out / "runs" / run.name), train_data=train,
                                 domain_data=[d.name for d in domain], **common))
        return jobs

    def train(self, jobs: list[TrainJob]) -> list[dict[str, Any]] | None:
        """Run every unfinished job (side by side when train.parallel_jobs > 1, or as a SLURM job array with
        train.launcher: slurm); the results in job order, or None when detached from a sweep still running."""
        done = {j.name: read_result(j.out_dir) for j in jobs}
        todo = [j for j in jobs if done[j.name] is None]
        if len(todo) < len(jobs):
            self.say(f"train: {len(jobs) - len(todo)} of {len(jobs)} runs already finished, skipped")
        if self.recipe.train.launcher == "slurm" and todo:
            results = self._train_on_cluster(todo)
            if results is None:
                return None
            done.update(results)
            return [done[j.name] for j in jobs]
        parallel = min(self.recipe.train.parallel_jobs, len(todo))
        bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not self.progress or not todo)
        if parallel <= 1:
            for job in todo:
                bar.set_postfix_str(job.name)
                done[job.name] = run_job(job)
                bar.update()
        else:
            todo = [dataclasses.replace(j, progress=False) for j in todo]
            devices = _worker_devices(self.recipe.train.accelerator, parallel)
            context = multiprocessing.get_context("spawn")
            queue = context.Queue()
            for device in devices:
                queue.put(device)
            with ProcessPoolExecutor(parallel, mp_context=context, initializer=_init_worker,
                                     initargs=(queue, self.recipe.train.threads_per_job)) as pool:
                futures = {pool.submit(run_job, job): job for job in todo}
                for future in as_completed(futures):
                    result = future.result()
                    done[futures[future].name] = result
                    bar.set_postfix_str(f"{result['run']} cgF1 {result['cgF1']:.3f}")
                    bar.update()
        bar.close()
        return [done[j.name] for j in jobs]

    def _train_on_cluster(self, todo: list[TrainJob]) -> dict[str, dict[str, Any]] | None:
        """The unfinished jobs as tasks of a SLURM job array (submitit); None when detached before they finish."""
        t = self.recipe.train
        sweep = self._cluster()
        gpus = 0 if t.accelerator == "cpu" else t.slurm.gpus_per_task
        todo = [dataclasses.replace(j, progress=False) for j in todo]  # a task's log is no terminal
        bar = tqdm(total=len(todo), desc="runs (cluster)", unit="run", disable=not self.progress)

        def finished(result: dict[str, Any]) -> None:
            bar.set_postfix_str(f"{result['run']} cgF1 {result['cgF1']:.3f}")
            bar.update()

        try:
            results = sweep.run(todo, gpus, detach=self.detach, on_result=finished)
        finally:
            bar.close()
        if results is None:
            self.say(f"train: detached; {len(todo)} run(s) are queued or running on the cluster. Run the same "
                     "`recipe run` again to wait for them and report (finished runs are collected, not rerun)")
        return results

    def report(self, rows: list[dict[str, Any]], notes: list[str]) -> None:
        """results.csv, results.md, scaling.png and the W&B summary run."""
        r = self.recipe
        evidence = Evidence(self.out / "runs", self.ontology())  # one set of resamples for the csv and the md
        add_report_columns(rows, evidence)
        changed = write_csv(rows, self.out / "results.csv")
        if not changed and (self.out / "results.md").is_file() and (self.out / "scaling.png").is_file():
            self.say("report: results unchanged since the last run, kept")
            return
        title = f"Recipe {r.name}: {r.description}" if r.description else f"Recipe {r.name}"
        scaling_plot(rows, self.out / "scaling.png", f"{r.name}: cgF1 against domain training images")
        if any(row.get("general_cgF1") not in (None, "") for row in rows):
            tradeoff_plot(rows, self.out / "tradeoff.png", f"{r.name}: domain gain against general cost")
        atomic_write_text(self.out / "results.md", results_markdown(rows, title, notes, evidence))
        if r.tracking.wandb != "disabled":
            self._wandb_summary(rows)

    def _wandb_summary(self, rows: list[dict[str, Any]]) -> None:
        import wandb

        t = self.recipe.tracking
        run = wandb.init(project=t.project, entity=t.entity, name=f"{self.recipe.name}/summary",
                         group=self.recipe.name, job_type="summary", dir=str(self.out), mode=t.wandb,
                         config={"recipe": dataclasses.asdict(self.recipe)}, reinit="create_new",
                         settings=wandb.Settings(silent=True))
        columns = ["arm", "mix", "round", "train_images", "seed", "cgF1", "pmF1", "IL_MCC", "AP", "general_cgF1"]
        images = {name: wandb.Image(str(self.out / f"{name}.png")) for name in ("scaling", "tradeoff")
                  if (self.out / f"{name}.png").is_file()}
        run.log({"results": wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows]),
                 **images})
        best = best_group(group_rows(rows))
        if best is not None:
            run.summary.update({"best_arm": best.label, "best_train_images": best.train_images,
                                "best_cgF1": best.mean("cgF1")})
        run.finish()
        if t.wandb == "offline":
            self.say(f"W&B (offline): upload with `wandb sync {self.out}/wandb/offline-run-* "
                     f"{self.out}/runs/*/wandb/offline-run-*`")

    def export(self, rows: list[dict[str, Any]]) -> Path | None:
        """The best arm's best seed, merged and saved to DIR/export with a model card."""
        best = best_group(group_rows(rows))
        if best is None:
            return None
        row = max(best.rows, key=lambda r: float(r["cgF1"]))
        target = self.out / "export"
        marker = self.out / "export.json"
        if marker.is_file() and json.loads(marker.read_text()).get("run") == row["run"] and target.is_dir():
            return target
        from sam3_model.export import export_merged
        from sam3_model.loading import load_model
        from sam3_model.model_card import ModelCardInfo

        model_dir = Path(row["model"])
        if (model_dir / "adapter_config.json").is_file():
            from peft import PeftModel

            base, processor = load_model(self.recipe.base_model)
            model = PeftModel.from_pretrained(base, str(model_dir))
        else:
            model, processor = load_model(str(model_dir))
        card = ModelCardInfo(base_model=self.recipe.base_model, recipe=self.recipe.name,
                             data=f"{best.label}, {best.train_images} domain images (run {row['run']})",
                             metrics={k: float(row[k]) for k in ("cgF1", "pmF1", "IL_MCC", "AP")},
                             notes=f"Best of {len(rows)} runs of recipe {self.recipe.name}; see results.md.")
        export_merged(model, processor, target, card)
        atomic_write_text(marker, json.dumps({"run": row["run"], "arm": best.label, "cgF1": row["cgF1"]}) + "\n")
        return target

    # ----- the whole recipe ---------------------------------------------------------------------------------
    def run(self) -> RecipeOutputs:
        """Every step, skipping finished work."""
        r = self.recipe
        if not self.progress:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        findings = check_recipe(r)
        if any(f.fatal for f in findings):
            raise ConfigError(check_message(r, findings, self.where).replace("\n", " |"))
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "recipe.json", json.dumps(
            {"recipe": dataclasses.asdict(r), "source": self.where, "versions": _versions()}, indent=2) + "\n")
        datasets = self._timed("data", self.data)
        verifier = self._timed("verifier", lambda: self.verifier(datasets["hq"]))
        self._timed("calibrate", lambda: self.calibrate(verifier, datasets["hq"]))
        engine = self._timed("synth", lambda: self.synth())
        if engine is None:
            return RecipeOutputs(self.out, [], None, dict(self.timings), detached=True)
        datasets.update(engine)
        rows = self._timed("train", lambda: self.train(self.jobs(datasets)))
        if rows is None:
            return RecipeOutputs(self.out, [], None, dict(self.timings), detached=True)
        for round_ in range(2, r.rounds + 1):
            teacher = self._round_teacher(rows, round_ - 1)
            if teacher is None:
                break
            engine = self._timed(f"synth-r{round_}", lambda: self.synth(round_, teacher))
            if engine is None:
                return RecipeOutputs(self.out, rows, None, dict(self.timings), detached=True)
            datasets.update(engine)
            more = self._timed(f"train-r{round_}", lambda: self.train(self.jobs(datasets, round_)))
            if more is None:
                return RecipeOutputs(self.out, rows, None, dict(self.timings), detached=True)
            rows += more
        notes = self._notes(rows, verifier)
        self._timed("report", lambda: self.report(rows, notes))
        export = self._timed("export", lambda: self.export(rows))
        atomic_write_text(self.out / "timings.json", json.dumps(self.timings, indent=2) + "\n")
        return RecipeOutputs(self.out, rows, export, dict(self.timings), notes)

    def _round_teacher(self, rows: list[dict[str, Any]], round_: int) -> str | None:
        """The model of round `round_`'s best trained group (its best seed): the next round's teacher."""
        best = best_group(group_rows([row for row in rows if int(row.get("round", 1)) == round_]))
        if best is None:
            self.say(f"rounds: round {round_} trained no model; no further round")
            return None
        row = max(best.rows, key=lambda x: float(x["cgF1"]))
        self.say(f"round {round_ + 1}: the teacher is round {round_}'s best, {row['run']} (cgF1 {row['cgF1']})")
        return str(row["model"])

    def _timed(self, step: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        self.say(f"[{step}] ...")
        value = fn()
        self.timings[step] = round(time.perf_counter() - start, 1)
        return value

    def _notes(self, rows: list[dict[str, Any]], verifier: Path | None) -> list[str]:
        """What a reader of results.md should know: short datasets, the verifier, the data engine's yield."""
        notes = []
        for row in rows:
            if row["arm"] != "zero-shot" and int(row["train_images"]) < int(row.get("requested_images", 0)):
                notes.append(f"{row['run']}: only {row['train_images']} of the {row['requested_images']} requested "
                             "domain images exist (the source is smaller).")
        judged = [name for name, _ in self.verify.configured()]
        notes.append("syn was judged by: " + (", ".join(judged) if judged else "no verifier (syn equals pl)")
                     + ("; none of them judges whether a mask shows its concept" if judged and not
                        set(judged) & SEMANTIC_VERIFIERS else "") + ".")
        if self.calibration_note:
            notes.append(self.calibration_note + ".")
        if verifier is not None:
            rep = verifier_report(verifier)
            notes.append(f"verifier: a crop classifier trained on {rep.get('images', '?')} HQ training images "
                         f"({rep.get('examples', '?')} crops; train accuracy {rep.get('train_accuracy', '?')}).")
        for round_, teacher in sorted(self.teachers.items()):
            if round_ > 1:
                notes.append(f"round {round_}: pool labelled by {teacher}.")
        for name in ("pool", "gen"):
            summary = self.out / "synth" / name / "summary.json"
            if summary.is_file():
                notes.append(f"data engine ({name}): see synth/{name}/summary.md for what the verifiers kept.")
        return notes


def _worker_devices(accelerator: str, workers: int) -> list[int | None]:
    """The GPU each worker process gets (round robin), or None for CPU workers."""
    import torch

    gpus = torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0
    return [i % gpus if gpus else None for i in range(workers)]


def _init_worker(queue: Any, threads: int | None) -> None:
    """Pin a worker process to its GPU (or thread count) before torch is used; it ends if the recipe run dies."""
    import warnings

    from sam3_model.processes import die_with_parent

    die_with_parent()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ["TQDM_DISABLE"] = "1"  # side-by-side jobs would interleave their bars with the runs bar
    device = queue.get()
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    if threads:
        import torch

        torch.set_num_threads(threads)
