"""`Sam3DataModule`: datasets on disk -> checked samples -> transformed images with many phrases each -> batches.

Training mixes several datasets with weights (e.g. SYN:HQ 1:1) and caps each at `max_images` (data-size
sweeps). Every dataset is read and checked in `setup` before any step runs: with `on_error="stop"` (default) a
bad entry stops training with a message listing the first problems; with `on_error="skip"` the bad images are
left out and their count is logged. Hard-negative phrases of a dataset are sampled into each of its images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader

from adapt.data.batch import PhraseCollator
from adapt.data.dataset import PhraseDataset
from adapt.data.mixing import MixtureSampler, RankShare, SeededConcatDataset, cap_samples
from adapt.data.problems import resolve_problems
from adapt.data.readers import read_dataset
from adapt.data.records import ImageSample
from adapt.data.transforms import AugmentConfig, EvalTransform, TrainTransform
from sam3_model.errors import ConfigError
from adapt.settings import DatasetSpec
from sam3_model.images import load_image
from sam3_model.tokenizer import build_offline_tokenizer

log = logging.getLogger(__name__)


def keep_phrases(samples: list[ImageSample], phrases: list[str]) -> list[ImageSample]:
    """Each sample with only the phrases in `phrases` (case-insensitive); samples left with none are dropped."""
    wanted = {p.strip().lower() for p in phrases}
    kept = [replace(s, phrases=[p for p in s.phrases if p.phrase.strip().lower() in wanted]) for s in samples]
    return [s for s in kept if s.phrases]


class ResumableDataLoader(DataLoader):
    """A DataLoader Lightning can checkpoint mid-epoch: restored, its next pass skips the batches already trained on.

    Lightning saves `state_dict()` in every checkpoint and calls `load_state_dict()` on resume; `progress` reports
    how many batches of the current epoch the trainer has completed. The skip goes through `MixtureSampler` when
    it is the sampler (nothing is loaded); behind a distributed sampler wrapper the skipped batches are drawn and
    discarded, which is exact but loads them. `epoch` reports the trainer's epoch: each pass sets it on the
    sampler first, because with worker processes a resumed run starts its first pass (and the workers prefetch)
    before Lightning sets the epoch, which would replay epoch 0's draws.
    """

    def __init__(self, *args: Any, progress: Callable[[], int] | None = None,
                 epoch: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress, self._epoch = progress, epoch
        self._to_skip = 0

    def state_dict(self) -> dict[str, int]:
        return {"batches_done": int(self._progress()) if self._progress is not None else 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._to_skip = int(state.get("batches_done", 0))

    def __iter__(self) -> Iterator[Any]:
        if self._epoch is not None:
            for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(int(self._epoch()))
        skip, self._to_skip = self._to_skip, 0
        if skip and isinstance(self.sampler, (MixtureSampler, RankShare)) and self.batch_size:
            self.sampler.skip_next(skip * self.batch_size)
            skip = 0
        iterator = super().__iter__()
        for _ in range(skip):
            next(iterator, None)
        return iterator


class Sam3DataModule(L.LightningDataModule):
    """Train, validation and test data for `Sam3FineTuner`.

    `batch_size`: images per step and device (each with all its phrases); `samples_per_epoch`: training draws
    per epoch (default: the total number of training images); `image_size`: the model canvas (default: the
    attached model's); `on_error`: "stop" or "skip" bad entries; `check_image_files`: open every image in setup.
    """

    def __init__(
        self,
        train: list[DatasetSpec] | None = None,
        val: list[DatasetSpec] | None = None,
        test: list[DatasetSpec] | None = None,
        batch_size: int = 1,
        num_workers: int = 2,
        augment: AugmentConfig = AugmentConfig(),  # noqa: B008 - never mutated
        samples_per_epoch: int | None = None,
        image_size: int | None = None,
        on_error: str = "stop",
        check_image_files: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.train_specs, self.val_specs, self.test_specs = list(train or []), list(val or []), list(test or [])
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.num_workers, self.augment = batch_size, num_workers, augment
        self.samples_per_epoch, self.image_size, self.on_error = samples_per_epoch, image_size, on_error
        self.check_image_files, self.seed = check_image_files, seed
        self.num_skipped = 0
        self._samples: dict[str, list[list[ImageSample]]] = {}
        self._datasets: dict[str, list[PhraseDataset]] = {}

    # ----- reading ------------------------------------------------------------------------------------------
    def _read(self, spec: DatasetSpec) -> list[ImageSample]:
        """Read, check and cap one dataset; bad entries stop or are skipped (counted) per `on_error`."""
        result = read_dataset(spec.path, format=spec.format, image_root=spec.images, name=spec.name,
                              check_image_files=self.check_image_files, rules=spec.category_rules())
        for note in result.notes:
            log.warning("%s", note)
        self.num_skipped += resolve_problems(result.problems, self.on_error, spec.path)
        samples = result.samples if spec.phrases is None else keep_phrases(result.samples, spec.phrases)
        samples = cap_samples(samples, spec.max_images)
        if not samples:
            raise ConfigError(f"{spec.path}: no usable image in this dataset")
        return samples

    def _canvas(self) -> int:
        if self.image_size is not None:
            return self.image_size
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not hasattr(module, "image_size"):
            raise ConfigError("data.image_size is not set and no Sam3FineTuner is attached to give it")
        return module.image_size

    def _tokenizer(self):
        module = self.trainer.lightning_module if self.trainer is not None else None
        processor = getattr(module, "processor", None)
        return processor.tokenizer if processor is not None else build_offline_tokenizer()

    def setup(self, stage: str) -> None:
        """Read and check the datasets the stage needs (once), then build their torch datasets."""
        canvas = self._canvas()
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}[stage]
        for split in wanted:
            if split in self._datasets:
                continue
            specs = {"train": self.train_specs, "val": self.val_specs, "test": self.test_specs}[split]
            if split == "train" and not specs:
                raise ConfigError("data.train lists no dataset; give at least one {path: ...}")
            samples = [self._read(spec) for spec in specs]
            transform = TrainTransform(canvas, self.augment) if split == "train" else EvalTransform(canvas)
            self._samples[split] = samples
            self._datasets[split] = [
                PhraseDataset(s, transform, spec.hard_negatives, spec.negatives_per_image if spec.hard_negatives else 0,
                              max_negatives=spec.max_negatives if split == "train" else None)
                for s, spec in zip(samples, specs)
            ]
        if self.num_skipped:
            log.warning("left out %d bad dataset entries (data.on_error=skip)", self.num_skipped)

    # ----- loaders ------------------------------------------------------------------------------------------
    def _loader(self, dataset, sampler=None, resumable: bool = False) -> DataLoader:
        # An own generator: creating an iterator (each validation, a resume) must not draw from the global torch
        # RNG, whose state the checkpoint restores for dropout (see RandomStateCheckpoint).
        kwargs = dict(batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                      collate_fn=PhraseCollator(self._tokenizer()), persistent_workers=self.num_workers > 0,
                      generator=torch.Generator().manual_seed(self.seed))
        if resumable:
            return ResumableDataLoader(dataset, progress=self._batches_done_this_epoch, epoch=self._epoch, **kwargs)
        return DataLoader(dataset, **kwargs)

    def _epoch(self) -> int:
        """The epoch the trainer is in (what Lightning passes to `set_epoch`)."""
        return int(self.trainer.fit_loop.epoch_progress.current.processed) if self.trainer is not None else 0

    def _batches_done_this_epoch(self) -> int:
        """Training batches the trainer has completed in the current epoch (what a resumed run must skip)."""
        if self.trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.completed)

    def train_dataloader(self) -> DataLoader:
        """Weighted mixture of the training datasets."""
        datasets = self._datasets["train"]
        sampler = MixtureSampler([len(d) for d in datasets], [s.weight for s in self.train_specs],
                                 num_samples=self.samples_per_epoch, seed=self.seed, with_seeds=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world > 1:  # each rank its share of one draw sequence: N ranks train what one process trains
                sampler = RankShare(sampler, world, torch.distributed.get_rank())
        return self._loader(SeededConcatDataset(datasets), sampler=sampler, resumable=True)

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per validation dataset (the metrics pool them)."""
        return [self._loader(d) for d in self._datasets.get("val", [])]

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per test dataset."""
        return [self._loader(d) for d in self._datasets.get("test", [])]

    # ----- what validation needs ----------------------------------------------------------------------------
    def _eval_split(self) -> str:
        trainer = self.trainer
        return "test" if trainer is not None and trainer.testing else "val"

    def val_samples(self) -> list[list[ImageSample]]:
        """Original annotations of the samples being evaluated, per dataloader."""
        return self._samples.get(self._eval_split(), [])

    def eval_set_names(self) -> list[str]:
        """The name each evaluation set is logged under (`val/<name>/cgF1`): `name:` or the file's stem, made unique."""
        specs = self.test_specs if self._eval_split() == "test" else self.val_specs
        names: list[str] = []
        for spec in specs:
            base = spec.name or Path(spec.path).stem
            name, k = base, 2
            while name in names:
                name, k = f"{base}-{k}", k + 1
            names.append(name)
        return names

    def val_image(self, dataloader_idx: int, index: int) -> Image.Image:
        """The original image of one evaluated sample (for the validation panel)."""
        sample = self.val_samples()[dataloader_idx][index]
        return load_image(sample.image_path, str(sample.image_path))

    @property
    def num_train_images(self) -> int:
        """Training images after caps and skips."""
        return sum(len(s) for s in self._samples.get("train", []))

    def train_counts(self) -> dict[str, int]:
        """Training images per dataset (by name: the spec's, or the file's stem) after caps and skips."""
        return {spec.name or Path(spec.path).stem: len(samples)
                for spec, samples in zip(self.train_specs, self._samples.get("train", []))}

    def describe(self) -> str:
        """One line per split: datasets, images, weights."""
        lines = []
        for split, specs in (("train", self.train_specs), ("val", self.val_specs), ("test", self.test_specs)):
            for spec, samples in zip(specs, self._samples.get(split, [])):
                lines.append(f"{split}: {spec.name or Path(spec.path).stem} {len(samples)} images, weight {spec.weight}")
        return "\n".join(lines)
