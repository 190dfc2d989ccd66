"""A recipe, read top to bottom: base model, domain, data, arms, sweep, fine-tuning preset, seeds.

Recipes are plain YAML mapped onto these dataclasses by jsonargparse (`sam3_model.configs`); every key is
documented here, once, and the data engine's sections are synth's own typed classes (parsed once, never turned
back into mappings). Built-in recipes (`demo`, `food`, `medical`, `industrial`) are YAML files next to this module;
`load_recipe` takes their name or the path of any recipe file. Relative paths in a recipe are made absolute at
load, against the recipe file's folder.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from adapt.settings import AugmentConfig, OptimizerConfig, ScheduleConfig, TrainableConfig, ValidationConfig
from sam3_model.configs import MODEL, PATH, deep_merge, parse_dataclass, read_config_file, resolve_mapping_paths
from sam3_model.errors import ConfigError
from sam3_model.presets import is_explicit_path
from sam3_model.notices import notice
from sam3_model.settings import ObjectiveConfig
from synth.config import RunConfig, SourceConfig, TeacherConfig
from synth.ontology import ontology_from_mapping
from synth.sources.toy import ToyConfig
from verifiers.configs import VerifyConfig
from verifiers.crop_settings import CropClassifierConfig

RECIPES_DIR = Path(__file__).resolve().parent
BUILTIN = ("demo", "food", "medical", "industrial")
ARMS = ("zero-shot", "pl", "syn", "hq", "syn+hq", "gen")
MIXES = ("none", "general")


@dataclass
class DataRef:
    """A labelled dataset: a COCO / SA-Co JSON file on disk, or toy images rendered with exact labels."""

    path: str | None = field(default=None, metadata=PATH)  # annotation file; produce it with `sam3-adapt convert`
    images: str | None = field(default=None, metadata=PATH)  # image folder (default: the annotation file's folder)
    format: Literal["auto", "coco", "saco"] = "auto"
    toy: ToyConfig | None = None  # toy images rendered with exact labels for the ontology (the demo's data)
    ontology: str | dict[str, Any] | None = field(default=None, metadata=PATH)  # toy: another ontology to label
    max_images: int | None = None  # use at most this many images of it
    get: str = ""  # where to obtain the data and how to convert it (what `recipe check` prints when it is missing)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.toy is None):
            raise ConfigError("a dataset needs exactly one of path (a file) and toy (rendered toy images)")


@dataclass
class ImagesRef:
    """Images for the data engine: a synth source (pool, toy, copy_paste or generate)."""

    source: SourceConfig
    get: str = ""  # where to obtain the images (what `recipe check` prints when they are missing)

    def __post_init__(self) -> None:  # checked on load, not when the data engine starts
        self.source.chosen()


@dataclass
class RecipeTeacher(TeacherConfig):
    """The data engine's teacher (synth's `teacher:` keys); its model is the recipe's base model unless named."""

    model: str | None = field(default=None, metadata=MODEL)


@dataclass
class HqData:
    """Human-verified domain data: training split (the `hq` arm, the verifier's labels) and the held-out test."""

    train: DataRef
    test: DataRef


@dataclass
class GeneralData:
    """General-domain HQ data (what the base model already knows): mixed 1:1 into the `general` mix, and held out
    as the retention test every run is scored on, so a recipe shows what the adaptation cost."""

    train: DataRef | None = None  # mixed into training in the `general` mix
    test: DataRef | None = None  # the retention test set (None: `held_out` images of `train`)
    held_out: int = 0  # with no `test`: this many images of `train` (a fixed choice by file name) become the
    #                    test set, and training never sees them

    def __post_init__(self) -> None:
        if self.held_out < 0:
            raise ConfigError(f"general.held_out must be >= 0, got {self.held_out}")
        if self.test is not None and self.held_out:
            raise ConfigError("general: give either test (a test set) or held_out (images of train kept out), "
                              "not both")
        if self.held_out and self.train is None:
            raise ConfigError("general.held_out needs general.train (the data to hold images out of)")

    @property
    def has_test(self) -> bool:
        """Whether the recipe measures retention (a general test set, given or held out)."""
        return self.test is not None or self.held_out > 0


@dataclass
class CalibrationSettings:
    """Calibrate the verifiers' accept thresholds on human-verified labels before they judge the pool."""

    human: str | None = field(default=None, metadata=PATH)  # a human-labelled sample in `synth calibrate`'s
    #                   format (verifiers/calibration.py); None: built from `hq_images` images of hq.train
    hq_images: int = 100  # with no `human` file: hq.train images the teacher labels; its instances matching a
    #                       human mask of their phrase (IoU >= 0.5) are the accepts, the others the rejects
    target_precision: float = 0.9  # each verifier's threshold: the lowest whose accept precision reaches this

    def __post_init__(self) -> None:
        if not 0 < self.target_precision <= 1:
            raise ConfigError(f"calibration.target_precision must be in (0, 1], got {self.target_precision}")
        if self.hq_images < 1:
            raise ConfigError(f"calibration.hq_images must be >= 1, got {self.hq_images}")


@dataclass
class SlurmSettings:
    """Where the sweep's trainings run with `train.launcher: slurm`: one task of a SLURM job array per training,
    submitted with submitit (`recipes/cluster.py`). Each task runs one training on `gpus_per_task` GPUs."""

    partition: str | None = None  # sbatch --partition
    account: str | None = None  # sbatch --account
    qos: str | None = None  # sbatch --qos
    gpus_per_task: int = 1  # GPUs of one training (train.devices, when that is a number, must equal it)
    cpus_per_task: int = 8  # data-loading workers and the training process
    mem_gb: int | None = None  # host memory per task (None: the partition's default)
    time_minutes: int = 240  # wall-clock limit of one training (sbatch --time)
    array_parallelism: int = 32  # at most this many trainings of the array run at once
    sbatch: dict[str, Any] = field(default_factory=dict)  # further sbatch options, e.g. {constraint: h100}
    setup: list[str] = field(default_factory=list)  # shell lines run before each task (module load ..., source ...)
    poll_seconds: float = 30.0  # how often `recipe run` looks at the jobs while it waits
    executor: Literal["slurm", "local"] = "slurm"  # local: submitit's local executor runs every task as a process
    #                                               here, through the same code path (a dry run of a sweep)

    def __post_init__(self) -> None:
        if self.gpus_per_task < 0 or self.cpus_per_task < 1 or self.time_minutes < 1 or self.array_parallelism < 1:
            raise ConfigError("train.slurm: gpus_per_task >= 0, cpus_per_task >= 1, time_minutes >= 1 and "
                              "array_parallelism >= 1")
        if self.poll_seconds <= 0:
            raise ConfigError(f"train.slurm.poll_seconds must be > 0, got {self.poll_seconds}")


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
    launcher: Literal["local", "slurm"] = "local"  # local: on this machine (parallel_jobs side by side);
    #                                                slurm: every training a task of a SLURM job array (`slurm:`)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)  # the cluster keys, read with launcher: slurm


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
    ontology: str | dict[str, Any] = field(metadata=PATH)  # the domain's concepts: a file or an inline mapping
    hq: HqData  # human-verified domain data: train (the hq arm, the verifier's labels) and the held-out test
    description: str = ""
    base_model: str = field(default="facebook/sam3", metadata=MODEL)  # Hub id, save_pretrained folder or preset
    pool: ImagesRef | None = None  # unlabelled domain images, pseudo-labelled for the pl and syn arms
    generator: ImagesRef | None = None  # generated images, pseudo-labelled and verified for the gen arm
    general: GeneralData | None = None  # general-domain HQ data: the 1:1 mix, and the retention test
    teacher: RecipeTeacher = field(default_factory=RecipeTeacher)  # synth's teacher keys
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    verifier_training: CropClassifierConfig | None = None  # train a crop-classifier verifier on hq.train, add it
    calibration: CalibrationSettings | None = None  # calibrate the verifiers' thresholds first (None: as written)
    synth: RunConfig = field(default_factory=RunConfig)  # how the data engine is sharded and where it runs
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    mixes: list[str] = field(default_factory=lambda: list(MIXES))  # each trained arm without / with 1:1 general
    sizes: list[int] = field(default_factory=lambda: [100, 1000])  # domain training images per run (the sweep)
    seeds: list[int] = field(default_factory=lambda: [0])
    rounds: int = 1  # data-engine rounds: round k+1 pseudo-labels the images again with round k's best model as
    #                  the teacher and retrains the pseudo-labelled arms (pl, syn, syn+hq, gen)
    train: TrainSettings = field(default_factory=TrainSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

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
        if isinstance(self.ontology, dict):  # an inline ontology is checked on load too, naming the file
            ontology_from_mapping(self.ontology, "ontology")
        if "general" in self.mixes and (self.general is None or self.general.train is None):
            raise ConfigError("mixes: 'general' needs general.train (general-domain HQ data to mix 1:1)")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if self.train.steps < 1:
            raise ConfigError(f"train.steps must be >= 1, got {self.train.steps}")
        if self.train.parallel_jobs < 1:
            raise ConfigError(f"train.parallel_jobs must be >= 1, got {self.train.parallel_jobs}")
        t = self.train
        if t.launcher == "slurm" and t.accelerator not in ("cpu",) and str(t.devices).isdigit() \
                and int(t.devices) != t.slurm.gpus_per_task:
            raise ConfigError(f"train.devices ({t.devices}) must equal train.slurm.gpus_per_task "
                              f"({t.slurm.gpus_per_task}): each training runs on its task's GPUs")

    def teacher_config(self) -> TeacherConfig:
        """The teacher of the data engine: the recipe's base model unless the teacher section names another."""
        return TeacherConfig(**{**asdict(self.teacher), "model": self.teacher.model or self.base_model})

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
    return parse_dataclass(RecipeConfig, resolve_mapping_paths(RecipeConfig, data, base_dir), where.rstrip(":"))


def recipe_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A recipe file's mapping, its paths made absolute against its folder."""
    data = read_config_file(path, "recipe")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys (name, ontology, hq, ...)")
    return resolve_mapping_paths(RecipeConfig, general_as_train(data, str(path)), Path(path).parent)


def load_recipe(name_or_path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> RecipeConfig:
    """Read a recipe by built-in name or path; `overrides` (nested mappings; relative paths against the working
    directory) are merged in, key by key."""
    path = recipe_path(name_or_path)
    data = recipe_mapping(path)
    if overrides:
        overrides = general_as_train(overrides, "the command line")
        data = deep_merge(data, resolve_mapping_paths(RecipeConfig, overrides, Path.cwd()))
    return parse_dataclass(RecipeConfig, data, str(path))


def general_as_train(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A `general:` section written as one dataset (before retention tests) is its `train:`, with a notice."""
    general = data.get("general")
    if isinstance(general, dict) and ({"path", "toy"} & set(general)):
        notice(f"{where}: `general:` is now {{train: ..., test: ...}}; read the dataset given as general.train "
               "(add general.test or general.held_out to measure what the adaptation costs)")
        return {**data, "general": {"train": general}}
    return data
