"""The data-engine config: ontology, one image source, the teacher, the verifiers and how the run is spread.

A YAML file maps onto `SynthConfig` (every key documented once, on its field; unknown keys are errors, with a
"did you mean"); the command line overrides any key with the same spelling (`--teacher.threshold=0.4`):

    ontology: food.yaml            # path (relative to this file) or an inline {concepts: [...]}
    source:
      pool: {folder: photos/}      # exactly one of pool, toy, copy_paste, generate
    labels: teacher                # teacher: pseudo-label with SAM 3; exact: the source's exact labels
    teacher: {model: facebook/sam3, threshold: 0.5}
    verify:
      geometric: {}                # cheap mask checks
      teacher_confidence: {}       # cheap exhaustivity check
      vlm: {model: HuggingFaceTB/SmolVLM-256M-Instruct}
    run: {shard_size: 32, devices: 1}

Paths are made absolute at load (against the file's folder): the engine never resolves one again.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sam3_model.configs import MODEL, PATH, deep_merge, parse_dataclass, read_config_file, resolve_mapping_paths
from sam3_model.errors import ConfigError
from verifiers.configs import VerifyConfig

from .ontology import Ontology, load_ontology, ontology_from_mapping
from .sources.copy_paste import CopyPasteConfig
from .sources.generate import GenerateConfig
from .sources.pool import PoolConfig
from .sources.toy import ToyConfig


@dataclass
class SourceConfig:
    """Where the images come from: set exactly one."""

    pool: PoolConfig | None = None  # real unlabelled images: a folder, a glob, a list file or tar shards
    toy: ToyConfig | None = None  # the procedural toy domain (exact masks; the CPU demo and tests)
    copy_paste: CopyPasteConfig | None = None  # instance cut-outs pasted on backgrounds (exact labels)
    generate: GenerateConfig | None = None  # text-to-image with diffusers (beyond what the SAM 3 paper tested)

    def chosen(self) -> str:
        """The name of the one source set."""
        names = [k for k, v in asdict(self).items() if v is not None]
        if len(names) != 1:
            raise ConfigError(f"source: set exactly one of pool, toy, copy_paste, generate (got {names or 'none'})")
        return names[0]

    def build(self, ontology: Ontology) -> Any:
        """The configured image source."""
        kind = self.chosen()
        if kind == "pool":
            from .sources.pool import PoolSource as Source
        elif kind == "toy":
            from .sources.toy import ToySource as Source
        elif kind == "copy_paste":
            from .sources.copy_paste import CopyPasteSource as Source
        else:
            from .sources.generate import GenerateSource as Source
        return Source(getattr(self, kind), ontology)


ParentPrompt = Literal["never", "fallback", "always"]


@dataclass
class TeacherConfig:
    """The teacher SAM 3 and how its detections become pseudo-labels."""

    model: str = field(default="facebook/sam3", metadata=MODEL)  # Hub id, local save_pretrained directory, or
    #                                                                preset (tiny/small: random init)
    image_size: int | None = None  # input resolution (None: the checkpoint's; 1008 for SAM 3)
    threshold: float = 0.5  # keep detections scoring >= this (score = sigmoid(logit) * presence, as in SAM 3)
    candidate_threshold: float = 0.2  # detections in [candidate_threshold, threshold) are kept as candidates
    parent_prompt: ParentPrompt = "fallback"  # when to prompt a concept's parent phrase too
    prompt_synonyms: bool = False  # also prompt each concept's synonyms (united with the concept's detections)
    dedupe_iou: float = 0.7  # detections of one phrase overlapping more than this (mask IoU) are one instance
    max_instances: int = 100  # at most this many instances per (image, phrase), best first
    prompt_batch_size: int = 16  # phrases run together on one image's features
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bfloat16 on GPU, float32 on CPU
    seed: int = 0  # initialisation seed of random-init presets (tiny/small)


@dataclass
class RunConfig:
    """How the stages are cut and spread (Lightning prediction: any accelerator, devices, nodes, strategy)."""

    shard_size: int = 32  # images per shard; a shard is the unit written atomically and resumed
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    progress: bool = True


@dataclass
class SynthConfig:
    """Everything a data-engine run needs."""

    ontology: str | dict[str, Any] = field(metadata=PATH)  # an ontology file or an inline {concepts: [...]}
    source: SourceConfig = field(default_factory=SourceConfig)
    labels: Literal["teacher", "exact"] = "teacher"  # exact: use the source's exact labels (copy-paste, toy)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        self.source.chosen()
        if isinstance(self.ontology, dict):  # an inline ontology is checked on load, naming the file
            ontology_from_mapping(self.ontology, "ontology")
        if self.run.shard_size < 1:
            raise ConfigError(f"run.shard_size must be >= 1, got {self.run.shard_size}")
        if not 0 <= self.teacher.candidate_threshold <= self.teacher.threshold:
            raise ConfigError(f"teacher: need 0 <= candidate_threshold ({self.teacher.candidate_threshold}) <= "
                              f"threshold ({self.teacher.threshold})")

    def load_ontology(self) -> Ontology:
        """The ontology, read from its file or built from the inline mapping."""
        if isinstance(self.ontology, str):
            return load_ontology(self.ontology)
        return ontology_from_mapping(self.ontology, "config: ontology")


def synth_config_from_mapping(data: Any, where: str, base_dir: str | os.PathLike[str] = ".") -> SynthConfig:
    """Build a `SynthConfig` from parsed YAML; relative paths resolve against `base_dir`."""
    return parse_dataclass(SynthConfig, resolve_mapping_paths(SynthConfig, data, base_dir), where.rstrip(":"))


def load_synth_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> SynthConfig:
    """Read a data-engine YAML config (`overrides`: nested keys merged in, relative to the working directory)."""
    data = resolve_mapping_paths(SynthConfig, read_config_file(path, "synth config"), Path(path).parent)
    if overrides:
        data = deep_merge(data, resolve_mapping_paths(SynthConfig, overrides, Path.cwd()))
    return parse_dataclass(SynthConfig, data, str(path))
