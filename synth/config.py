"""The data-engine config: ontology, one image source, the teacher, the verifiers and how the run is spread.

A YAML file maps onto `SynthConfig` (every key documented once, on its field; unknown keys are errors):

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
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sam3_model.configfile import dataclass_from_mapping, load_yaml_or_json
from sam3_model.errors import ConfigError

from .labelling import TeacherConfig
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


@dataclass
class GeometricCheck:
    """Mask verification by geometry: area, fragments, mask-box agreement, teacher score."""

    min_area: float = 0.0005  # smallest mask, as a fraction of the image
    max_area: float = 0.95  # largest mask, as a fraction of the image
    max_fragments: int = 3  # most connected components (fragments under min_fragment of the mask ignored)
    min_fragment: float = 0.02
    min_box_iou: float = 0.5  # IoU between the mask's tight box and the predicted box
    min_score: float = 0.0  # teacher score


@dataclass
class TeacherConfidenceCheck:
    """Exhaustivity by the teacher's own doubts: unmatched low-score candidates, presence without instances."""

    presence_accept: float = 0.5  # a pair with no instance but presence >= this is not a trusted negative
    candidate_iou: float = 0.5  # a candidate overlapping an accepted instance by this much is that instance


@dataclass
class ClipCheck:
    """Mask verification by CLIP/SigLIP similarity of the masked crop with the phrase against its negatives."""

    model: str  # Hub id or local directory of a CLIP or SigLIP model
    threshold: float = 0.5  # on the phrase's probability
    prompt_template: str = "a photo of a {phrase}"
    contrast_phrases: list[str] = field(default_factory=lambda: ["an object", "background"])
    batch_size: int = 32


@dataclass
class AgreementCheck:
    """Agreement with a second teacher SAM 3 (mask IoU per instance; matched counts per pair)."""

    model: str  # Hub id, local directory or preset of the second teacher
    iou_threshold: float = 0.5
    min_score: float = 0.5  # second-teacher detections that count
    image_size: int | None = None
    mask: bool = True  # judge instances
    exhaustivity: bool = True  # judge pairs


@dataclass
class VlmCheck:
    """A vision-language model answering the paper's multiple-choice MV / EV questions."""

    model: str  # any transformers image-text-to-text chat model (Qwen2.5-VL, SmolVLM, ...)
    threshold: float = 0.5  # on the probability of "accept"
    mode: Literal["logits", "generate"] = "logits"  # option-letter probabilities, or parse a generated answer
    batch_size: int = 8
    max_new_tokens: int = 8
    mask: bool = True
    exhaustivity: bool = True


@dataclass
class CropClassifierCheck:
    """Mask verification by a small classifier trained on human-verified labels (verifiers.crop_classifier)."""

    model: str  # directory written by CropClassifierVerifier.save
    threshold: float = 0.5  # on the phrase's probability


@dataclass
class VerifyConfig:
    """The verifiers, cheap first: geometric, crop_classifier, clip, agreement, vlm for masks; teacher_confidence,
    agreement, vlm for exhaustivity. Unset ones are off; with none at all, the verified dataset equals the
    pseudo-labels."""

    geometric: GeometricCheck | None = None
    teacher_confidence: TeacherConfidenceCheck | None = None
    crop_classifier: CropClassifierCheck | None = None
    clip: ClipCheck | None = None
    agreement: AgreementCheck | None = None
    vlm: VlmCheck | None = None
    cascade: bool = True  # a later verifier does not see what an earlier one rejected
    non_exhaustive: Literal["drop", "keep_flagged"] = "drop"  # an EV-rejected pair: dropped, or kept with its
    #                                                            accepted instances and is_instance_exhaustive false


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

    ontology: str | dict[str, Any]  # an ontology file (relative to the config file) or an inline mapping
    source: SourceConfig
    labels: Literal["teacher", "exact"] = "teacher"  # exact: use the source's exact labels (copy-paste, toy)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    run: RunConfig = field(default_factory=RunConfig)
    base_dir: str = "."  # folder relative paths are resolved against (set to the config file's folder on load)

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
            return load_ontology(self.resolve(self.ontology))
        return ontology_from_mapping(self.ontology, "config: ontology")

    def resolve(self, path: str) -> str:
        """A config path made absolute against `base_dir` (absolute paths are left alone)."""
        return path if os.path.isabs(path) else str(Path(self.base_dir) / path)


def maybe_local(source: str, base: str | os.PathLike[str]) -> str:
    """`source` as a path under `base` when such a directory exists there, else unchanged (a Hub id, a preset)."""
    candidate = Path(base) / source
    return str(candidate) if not os.path.isabs(source) and candidate.is_dir() else source


def synth_config_from_mapping(data: Any, where: str, base_dir: str | os.PathLike[str] = ".") -> SynthConfig:
    """Build a `SynthConfig` from parsed YAML; relative paths resolve against `base_dir`."""
    if isinstance(data, dict):
        data = {**data, "base_dir": str(Path(base_dir).resolve())}
    return dataclass_from_mapping(SynthConfig, data, where)


def load_synth_config(path: str | os.PathLike[str]) -> SynthConfig:
    """Read a data-engine YAML config."""
    return synth_config_from_mapping(load_yaml_or_json(path, "synth config"), f"{path}:", Path(path).parent)
