"""A data-engine run, stage by stage: generate -> label -> verify -> merge, each resumable.

`SynthRun(config, out)` builds the source, the teacher and the verifiers from a `SynthConfig`; each stage method
runs the stage's pending shards (Lightning prediction) and can be called alone (`sam3-adapt synth label ...`),
provided the earlier stages are done. `run()` does all four.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from adapt.training.trainer import on_gpu
from sam3_model.errors import ConfigError
from sam3_model.predict import ConceptSegmenter
from verifiers.compose import VerifierChain

from .config import SynthConfig, TeacherConfig
from .contact import read_decisions, write_contact_sheets
from .labelling import PseudoLabeller
from .merge import MergeSettings, merge_run
from .ontology import Ontology
from .runner import run_stage
from .shards import PlannedTasks, RunDir, StageOutput, fingerprint, shard_slices
from .sources.base import ImageSource
from .stages import GenerateStage, LabelStage, VerifyStage
from .summary import summarize, write_summary

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def teacher_dtype(name: str, accelerator: str) -> torch.dtype | None:
    """The teacher's dtype: "auto" is bfloat16 on a GPU and float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if on_gpu(accelerator) else None
    return _DTYPES[name]


def build_labeller(config: SynthConfig, ontology: Ontology) -> PseudoLabeller | None:
    """The teacher pseudo-labeller (None with `labels: exact`)."""
    if config.labels == "exact":
        return None
    return teacher_labeller(config.teacher, ontology, config.run.accelerator)


def teacher_labeller(teacher: TeacherConfig, ontology: Ontology, accelerator: str = "auto",
                     device: str | None = None) -> PseudoLabeller:
    """A pseudo-labeller around the teacher model (`device`: where to put it; None leaves it to Lightning)."""
    segmenter = ConceptSegmenter.from_pretrained(teacher.model, image_size=teacher.image_size,
                                                 dtype=teacher_dtype(teacher.dtype, accelerator),
                                                 prompt_batch_size=teacher.prompt_batch_size, device=device)
    return PseudoLabeller(segmenter, ontology, teacher)


class SynthRun:
    """One data-engine run into `out`: each stage resumable, the whole reproducible.

    `chain` replaces the configured verifiers (for custom verifiers in Python; recorded by name).
    """

    def __init__(self, config: SynthConfig, out: str | os.PathLike[str], chain: VerifierChain | None = None) -> None:
        self.config = config
        self.ontology = config.load_ontology()
        self.run_dir = RunDir(out)
        self._chain = chain
        self._source: ImageSource | None = None
        c = dataclasses.asdict(config)
        self._prints = {"generate": fingerprint([c["source"], self.ontology.to_json()])}
        self._prints["label"] = fingerprint([self._prints["generate"], c["labels"], c["teacher"]])
        verify_part = c["verify"] if chain is None else [type(x).__name__ + ":" + x.name
                                                         for x in [*chain.mask, *chain.exhaustivity]]
        self._prints["verify"] = fingerprint([self._prints["label"], verify_part])

    # ----- plan -----------------------------------------------------------------------------------------------
    def source(self) -> ImageSource:
        if self._source is None:
            self._source = self.config.source.build(self.ontology)
        return self._source

    def plan(self) -> list[dict[str, Any]]:
        """The source's tasks, recorded in OUT/plan.json (or checked against the recorded plan)."""
        tasks = self.source().plan()
        keys = [t["key"] for t in tasks]
        if len(set(keys)) != len(keys):
            raise ConfigError("the source planned two tasks with the same key; this is a bug in the source")
        self.run_dir.write_plan(tasks, self.config.run.shard_size, self._prints["generate"])
        return tasks

    @property
    def num_shards(self) -> int:
        plan = self.run_dir.read_plan()
        return len(shard_slices(len(plan["tasks"]), plan["shard_size"]))

    def _run(self, stage: Any, read_input: Any) -> int:
        r = self.config.run
        self.run_dir.claim_stage(stage.name, self._prints[stage.name])
        return run_stage(stage, self.run_dir, self.num_shards, read_input, accelerator=r.accelerator,
                         devices=r.devices, num_nodes=r.num_nodes, strategy=r.strategy, progress=r.progress)

    # ----- stages ---------------------------------------------------------------------------------------------
    def generate(self) -> int:
        """Make (or read) every planned image; returns the shards processed."""
        tasks = self.plan()
        return self._run(GenerateStage(self.source(), self.run_dir), PlannedTasks(tasks, self.config.run.shard_size))

    def label(self) -> int:
        """Pseudo-label every image (the teacher, or the source's exact labels)."""
        self._require("generate")
        stage = LabelStage(build_labeller(self.config, self.ontology), self.ontology, self.run_dir)
        return self._run(stage, StageOutput(self.run_dir, "generate"))

    def verify(self) -> int:
        """Run the verifiers on every labelled pair."""
        self._require("label")
        chain, modules = (self._chain, {}) if self._chain is not None else self.config.verify.build_chain()
        stage = VerifyStage(chain, self.ontology, self.run_dir, modules)
        return self._run(stage, StageOutput(self.run_dir, "label"))

    def merge(self) -> dict[str, Path]:
        """Write the PL / SYN (/ EXACT) datasets, decisions, contact sheets and the summary."""
        self._require("verify")
        teacher = "exact" if self.config.labels == "exact" else self.config.teacher.model
        info = {"generator": "sam3-adapt synth", "teacher": teacher, "ontology": self.ontology.to_json(),
                "config_fingerprint": self._prints["verify"]}
        records = [r for s in range(self.num_shards) for r in self.run_dir.read_shard("verify", s)]
        verify = self.config.verify
        settings = MergeSettings(teacher, verify.non_exhaustive,
                                 verify.hard_negatives if self.config.labels == "teacher" else "all",
                                 verify.adversarial_iou)
        written = merge_run(records, self.run_dir, self.ontology, settings, info)
        contact = write_contact_sheets(records, read_decisions(written["decisions"]), self.run_dir.root,
                                       self.ontology.phrases())
        written["contact"] = self.run_dir.root / contact["index"]
        summary = {**summarize(records, self.ontology, settings), "contact": contact}
        written["summary"] = write_summary(summary, self.run_dir.root)
        return written

    def run(self) -> dict[str, Path]:
        """All stages, skipping finished shards."""
        self.run_stages()
        return self.merge()

    def run_stages(self) -> None:
        """The sharded stages (generate, label, verify), skipping finished shards: what every rank of a distributed
        run executes (merge then runs once)."""
        self.generate()
        self.label()
        self.verify()

    def stages_finished(self) -> bool:
        """Whether every shard of every stage is written, with this configuration (merge can run)."""
        if not (self.run_dir.root / "plan.json").is_file():
            return False
        return all(self.run_dir.stage_fingerprint(stage) == self._prints[stage]
                   and not self.run_dir.pending(stage, self.num_shards) for stage in ("generate", "label", "verify"))

    def _require(self, stage: str) -> None:
        missing = self.run_dir.pending(stage, self.num_shards)
        if missing:
            raise ConfigError(f"{self.run_dir.stage_dir(stage)}: {len(missing)} of {self.num_shards} shards "
                              f"missing; run 'sam3-adapt synth {stage}' (or 'run') first")
