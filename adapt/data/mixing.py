"""Mixing datasets: a deterministic cap on a dataset's images, and a weighted sampler over concatenated datasets."""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterator, Sequence
from typing import TypeVar

import numpy as np
from torch.utils.data import ConcatDataset, DistributedSampler, Sampler

from sam3_model.errors import ConfigError

T = TypeVar("T")


def cap_samples(samples: Sequence[T], max_images: int | None) -> list[T]:
    """The official `limit_ids` subset: shuffle with `random.Random(len(samples))`, keep the first `max_images`.

    The kept samples stay in that shuffled order, as the official id list does. None, or a cap at least the
    dataset's size, keeps every sample in its original order.
    """
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ConfigError(f"max_images must be a positive integer or None, got {max_images!r}")
    if max_images is None or max_images >= len(samples):
        return list(samples)
    order = list(range(len(samples)))
    random.Random(len(order)).shuffle(order)
    return [samples[i] for i in order[:max_images]]


class MixtureSampler(Sampler[int]):
    """Indices into a ConcatDataset of datasets of `sizes`, each draw picking a dataset with probability ∝ weight.

    Within a dataset, draws walk a random permutation, reshuffled each time it is used up, so a small dataset
    is cycled and a large one is sampled without repeats. The draw depends only on (seed, epoch): call
    `set_epoch` every epoch (Lightning does) for a new one. With `with_seeds`, each draw is `(index, seed)`:
    the seed of that draw's randomness (augmentation, hard negatives), a function of (seed, epoch, position)
    alone, so an item is the same whichever worker makes it and whether or not the run was resumed.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], num_samples: int | None = None,
                 seed: int = 0, with_seeds: bool = False) -> None:
        sizes = [int(s) for s in sizes]
        weights = [float(w) for w in weights]
        if not sizes:
            raise ConfigError("MixtureSampler needs at least one dataset")
        if len(weights) != len(sizes):
            raise ConfigError(f"{len(weights)} mixing weights for {len(sizes)} datasets; give one per dataset")
        for d, (size, weight) in enumerate(zip(sizes, weights)):
            if not (math.isfinite(weight) and weight > 0):
                raise ConfigError(f"mixing weight of dataset {d} must be finite and > 0, got {weight}")
            if size < 1:
                raise ConfigError(f"dataset {d} is empty; remove it from the mixture")
        num_samples = sum(sizes) if num_samples is None else num_samples
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
        self.sizes = sizes
        self.probabilities = np.asarray(weights) / sum(weights)  # (D,)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)  # (D,) ConcatDataset starts
        self.num_samples = num_samples
        self.seed = seed
        self.with_seeds = with_seeds
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the draw of `epoch` (deterministic in (seed, epoch))."""
        self.epoch = epoch

    def skip_next(self, draws: int) -> None:
        """Make the next pass start after its first `draws` draws (resuming mid-epoch, nothing is loaded)."""
        self._skip = max(0, int(draws))

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        choice = rng.choice(len(self.sizes), size=self.num_samples, p=self.probabilities)  # (N,) dataset per draw
        indices = np.empty(self.num_samples, dtype=np.int64)  # (N,) ConcatDataset indices
        for d, size in enumerate(self.sizes):
            where = np.flatnonzero(choice == d)
            cycles = -(-len(where) // size)
            walk = np.concatenate([rng.permutation(size) for _ in range(cycles)] or [np.zeros(0, np.int64)])
            indices[where] = self.offsets[d] + walk[: len(where)]
        skip, self._skip = self._skip, 0
        if not self.with_seeds:
            return iter(indices[skip:].tolist())
        seeds = np.random.default_rng([self.seed, self.epoch, 1]).integers(0, 2**63 - 1, self.num_samples)  # (N,)
        return zip(indices[skip:].tolist(), seeds[skip:].tolist())


class RankShare(DistributedSampler):
    """One rank's share of a sampler's draws: every `num_replicas`-th draw from position `rank` (the pass padded by
    wrapping to a multiple of the ranks), so the ranks' batches of one step together are the batch one process
    takes at the same global batch, in the same order, and a run on N ranks trains what one process trains.

    It is a `DistributedSampler`, so Lightning uses it as it is instead of wrapping the sampler in one that
    reshuffles its draws (which Lightning always does for training).
    """

    def __init__(self, sampler: MixtureSampler, num_replicas: int, rank: int) -> None:  # noqa: D107 - no dataset
        self.sampler, self.num_replicas, self.rank = sampler, int(num_replicas), int(rank)
        self.num_samples = -(-len(sampler) // self.num_replicas)  # draws per rank and pass
        self.total_size = self.num_samples * self.num_replicas
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the draw of `epoch` (the same on every rank)."""
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def skip_next(self, draws: int) -> None:
        """Make this rank's next pass start after its first `draws` draws (resuming mid-epoch)."""
        self._skip = max(0, int(draws))

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator:
        draws = list(self.sampler)
        draws += draws[: self.total_size - len(draws)]
        skip, self._skip = self._skip, 0
        return iter(draws[self.rank : self.total_size : self.num_replicas][skip:])


class SeededConcatDataset(ConcatDataset):
    """A ConcatDataset indexed by `MixtureSampler(with_seeds=True)` draws: `(index, seed)` reaches the dataset."""

    def __getitem__(self, key: int | tuple[int, int]):
        if not isinstance(key, tuple):
            return super().__getitem__(key)
        index, seed = key
        d = bisect.bisect_right(self.cumulative_sizes, index)
        local = index - (self.cumulative_sizes[d - 1] if d else 0)
        return self.datasets[d][(local, seed)]
