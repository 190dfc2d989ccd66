"""A recipe, read top to bottom: base model, domain, data, arms, sweep, fine-tuning preset, seeds.

Recipes are plain YAML mapped onto these dataclasses; every key is documented here, once. Built-in recipes
(`demo`, `food`, `medical`, `industrial`) are YAML files next to this module; `load_recipe` takes their name or
the path of any recipe file. Relative paths in a recipe resolve against the recipe file's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adapt.data.transforms import AugmentConfig
from adapt.training.module import TrainableConfig, ValidationConfig
from adapt.training.optim import OptimizerConfig
from adapt.training.schedules import ScheduleConfig
from sam3_model.objective import ObjectiveConfig
from sam3_model.configfile import dataclass_from_mapping, load_yaml_or_json
from sam3_model.errors import ConfigError
from sam3_model.loading import is_explicit_path
from sam3_model.notices import notice
from synth.config import RunConfig, SourceConfig, VerifyConfig, maybe_local
from synth.ontology import ontology_from_mapping
from synth.labelling import TeacherConfig
from verifiers.crop_classifier import CropClassifierConfig

RECIPES_DIR = Path(__file__).resolve().parent
BUILTIN = ("demo", "food", "medical", "industrial")
ARMS = ("zero-shot", "pl", "syn", "hq", "syn+hq", "gen")
MIXES = ("none", "general")


@dataclass
class DataRef:
    """A labelled dataset: a COCO / SA-Co JSON file on disk, or toy images rendered with exact labels."""

    path: str | None = None  # annotation file (relative to the recipe); produce it with `sam3-adapt convert ...`
    images: str | None = None  # image folder (default: the annotation file's folder)
    format: Literal["auto", "coco", "saco"] = "auto"
    toy: dict[str, Any] | None = None  # a synth ToyConfig mapping: rendered with exact labels for the ontology
    max_images: int | None = None  # use at most this many images of it
    get: str = ""  # where to obtain the data and how to convert it (what `recipe check` prints when it is missing)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.toy is None):
            raise ConfigError("a dataset needs exactly one of path (a file) and toy (rendered toy images)")


@dataclass
class ImagesRef:
    """Images for the data engine: a synth `source` mapping (pool, toy, copy_paste or generate)."""

    source: dict[str, Any]
    get: str = ""  # where to obtain the images (what `recipe check` prints when they are missing)

    def __post_init__(self) -> None:  # checked on load, not when the data engine starts
        dataclass_from_mapping(SourceConfig, self.source, "source").chosen()


@dataclass
class HqData:
    """Human-verified domain data: training split (the `hq` arm, the verifier's labels) and the held-out test."""

    train: DataRef
    test: DataRef


@dataclass
class TrainSettings:
    """How every arm fine-tunes, in `fit`'s vocabulary: the model sections `Sam3FineTuner` takes (trainable,
    objective, optimizer, schedule, validation, phrase_chunk_size, image_size), the data keys of `Sam3DataModule`
    (augment, num_workers), the Trainer's (precision, accelerator, devices, num_nodes, strategy), and the
    recipe's own few keys (steps, batch size, negatives per draw, how many trainings run side by side)."""

    steps: int = 2000  # optimizer steps per training (the Trainer's max_steps)
    batch_size: int = 8  # images per step and device
    max_negatives: int | None = None  # annotated negative phrases kept per image draw
    max_minutes: float | None = None  # wall-clock cap per training (stops early; the result records the steps)
    parallel_jobs: int = 1  # trainings run side by side (CPU: 2 one-thread jobs beat one two-thread job)
    threads_per_job: int | None = None  # torch threads per training (None: torch's default)
    trainable: TrainableConfig = field(default_factory=TrainableConfig)  # model.trainable of `fit`
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # model.objective
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # model.optimizer
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # model.schedule
    validation: ValidationConfig = field(default_factory=ValidationConfig)  # model.validation: how runs are scored
    phrase_chunk_size: int = 16  # model.phrase_chunk_size: phrase queries per detector pass (memory bound)
    image_size: int | None = None  # model.image_size (None: the base model's)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # data.augment
    num_workers: int = 4  # data.num_workers: data-loading workers per training
    precision: str = "bf16-mixed"  # trainer.precision
    accelerator: str = "auto"  # trainer.accelerator
    devices: int | str = "auto"  # trainer.devices
    num_nodes: int = 1  # trainer.num_nodes
    strategy: str = "auto"  # trainer.strategy (several devices: DDP, spawned, keeping unused parameters)


@dataclass
class TrackingSettings:
    """Weights & Biases: one run per training (grouped by recipe) and a summary run."""

    wandb: Literal["offline", "online", "disabled"] = "offline"  # offline: `wandb sync DIR/wandb/*` uploads later
    project: str = "sam3-adapt-recipes"
    entity: str | None = None


@dataclass
class RecipeConfig:
    """One domain recipe."""

    name: str
    ontology: str | dict[str, Any]  # the domain's concepts: an ontology file or an inline mapping
    hq: HqData
    description: str = ""
    base_model: str = "facebook/sam3"  # Hub id, local save_pretrained directory (relative to the recipe) or preset
    pool: ImagesRef | None = None  # unlabelled domain images, pseudo-labelled for the pl and syn arms
    generator: ImagesRef | None = None  # generated images, pseudo-labelled and verified for the gen arm
    general: DataRef | None = None  # general-domain HQ data mixed 1:1 into the `general` mix
    teacher: dict[str, Any] = field(default_factory=dict)  # synth TeacherConfig keys; model defaults to base_model
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    verifier_training: CropClassifierConfig | None = None  # train a crop-classifier verifier on hq.train, add it
    synth: RunConfig = field(default_factory=RunConfig)  # how the data engine is sharded and where it runs
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    mixes: list[str] = field(default_factory=lambda: list(MIXES))  # each trained arm without / with 1:1 general
    sizes: list[int] = field(default_factory=lambda: [100, 1000])  # domain training images per run (the sweep)
    seeds: list[int] = field(default_factory=lambda: [0])
    train: TrainSettings = field(default_factory=TrainSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    base_dir: str = "."  # set to the recipe file's folder on load

    def __post_init__(self) -> None:
        bad = [a for a in self.arms if a not in ARMS]
        if bad:
            raise ConfigError(f"arms: unknown arm(s) {', '.join(map(repr, bad))}; choose from {', '.join(ARMS)}")
        bad = [m for m in self.mixes if m not in MIXES]
        if bad:
            raise ConfigError(f"mixes: unknown mix(es) {', '.join(map(repr, bad))}; choose from {', '.join(MIXES)}")
        if not self.mixes:
            raise ConfigError("mixes: give at least one of none, general")
        if any(s < 1 for s in self.sizes) or not self.sizes:
            raise ConfigError(f"sizes: give one or more image counts >= 1, got {self.sizes}")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        needs = {"pl": "pool", "syn": "pool", "syn+hq": "pool", "gen": "generator"}
        for arm in self.arms:
            if arm in needs and getattr(self, needs[arm]) is None:
                raise ConfigError(f"arms: {arm!r} needs a {needs[arm]} section (images to pseudo-label)")
        dataclass_from_mapping(TeacherConfig, self.teacher, "teacher")  # keys and types, checked on load
        if isinstance(self.ontology, dict):  # an inline ontology is checked on load too, naming the file
            ontology_from_mapping(self.ontology, "ontology")
        if "general" in self.mixes and self.general is None:
            raise ConfigError("mixes: 'general' needs a general section (general-domain HQ data to mix 1:1)")
        if self.train.steps < 1:
            raise ConfigError(f"train.steps must be >= 1, got {self.train.steps}")
        if self.train.parallel_jobs < 1:
            raise ConfigError(f"train.parallel_jobs must be >= 1, got {self.train.parallel_jobs}")

    def resolve(self, path: str) -> str:
        """A recipe path made absolute against the recipe's folder (absolute paths are left alone)."""
        return path if os.path.isabs(path) else str(Path(self.base_dir) / path)

    def model_source(self, source: str) -> str:
        """A model reference: a directory relative to the recipe when one exists there, else as given."""
        return maybe_local(source, self.base_dir)

    def teacher_config(self) -> TeacherConfig:
        """The teacher of the data engine: the recipe's base model unless the teacher section names another."""
        data = {"model": self.base_model, **self.teacher}
        teacher = dataclass_from_mapping(TeacherConfig, data, f"recipe {self.name}: teacher:")
        teacher.model = self.model_source(teacher.model)
        return teacher

    @property
    def trained_arms(self) -> list[str]:
        """The arms that fine-tune (every arm but zero-shot)."""
        return [a for a in self.arms if a != "zero-shot"]


def recipe_path(name_or_path: str | os.PathLike[str]) -> Path:
    """The YAML file of a built-in recipe name, or the given path.

    A built-in name wins over a same-named file or folder here (a run's `--out demo` must not hide the demo);
    `./demo` means the path. The notice says so when both exist.
    """
    text = str(name_or_path)
    if text in BUILTIN and not is_explicit_path(text):
        if Path(text).exists():
            notice(f"recipe {text}: using the built-in recipe; {text!r} here is a "
                   f"{'folder' if Path(text).is_dir() else 'file'} too: pass ./{text} to use it instead")
        return RECIPES_DIR / f"{text}.yaml"
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"{text}: no such recipe file; give a recipe YAML or one of {', '.join(BUILTIN)}")
    return path


def recipe_from_mapping(data: Any, where: str, base_dir: str | os.PathLike[str]) -> RecipeConfig:
    """Build a `RecipeConfig` from parsed YAML (relative paths resolve against `base_dir`)."""
    if isinstance(data, dict):
        data = {**data, "base_dir": str(Path(base_dir).resolve())}
    return dataclass_from_mapping(RecipeConfig, data, where)


def load_recipe(name_or_path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> RecipeConfig:
    """Read a recipe by built-in name or path; `overrides` (nested mappings) are merged in, key by key."""
    path = recipe_path(name_or_path)
    data = load_yaml_or_json(path, "recipe")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys (name, ontology, hq, ...)")
    return recipe_from_mapping(deep_merge(data, overrides or {}), f"{path}:", path.parent)


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in: mappings merge recursively, anything else is replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        merged[key] = deep_merge(current, value) if isinstance(value, dict) and isinstance(current, dict) else value
    return merged
