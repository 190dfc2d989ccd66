"""cap_samples (the official limit_ids) and MixtureSampler (weighted mixing of concatenated datasets)."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from adapt.data.mixing import MixtureSampler, cap_samples
from sam3_model.errors import ConfigError


def test_cap_samples_is_the_official_limit_ids():
    samples = [f"img{i}" for i in range(50)]
    ids = list(range(50))
    random.Random(50).shuffle(ids)
    assert cap_samples(samples, 10) == [samples[i] for i in ids[:10]]
    assert cap_samples(samples, 10) == cap_samples(list(samples), 10)
    assert cap_samples(samples, None) == samples and cap_samples(samples, 50) == samples
    assert cap_samples(samples, 80) == samples
    with pytest.raises(ConfigError):
        cap_samples(samples, 0)


def test_equal_weights_give_equal_counts_whatever_the_sizes():
    sampler = MixtureSampler([10, 1000], [1.0, 1.0], num_samples=4000, seed=0)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 4000 and all(0 <= i < 1010 for i in indices)
    small = [i for i in indices if i < 10]
    assert abs(len(small) - 2000) < 120  # binomial(4000, 0.5): sd 32
    counts = Counter(small)  # the small dataset is cycled through permutations: every image equally often
    assert len(counts) == 10 and max(counts.values()) - min(counts.values()) <= 1
    large = Counter(i - 10 for i in indices if i >= 10)
    assert max(large.values()) - min(large.values()) <= 1  # ~2 passes over the large dataset, no image favoured


def test_weights_set_the_ratio():
    indices = np.array(list(MixtureSampler([100, 100], [3.0, 1.0], num_samples=8000, seed=1)))
    assert abs((indices < 100).mean() - 0.75) < 0.03


def test_default_length_and_determinism():
    sampler = MixtureSampler([5, 7, 3], [1, 2, 1], seed=3)
    assert len(sampler) == 15
    first = list(sampler)
    assert first == list(MixtureSampler([5, 7, 3], [1, 2, 1], seed=3))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and second == list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(MixtureSampler([5, 7, 3], [1, 2, 1], seed=4)) != first


@pytest.mark.parametrize("sizes, weights", [([10, 10], [1.0]), ([10, 10], [1.0, 0.0]), ([10, 10], [1.0, -2.0]),
                                            ([10, 10], [1.0, float("nan")]), ([10, 10], [1.0, float("inf")]),
                                            ([10, 0], [1.0, 1.0]), ([], [])])
def test_bad_weights_raise_config_errors(sizes, weights):
    with pytest.raises(ConfigError):
        MixtureSampler(sizes, weights)


def test_rank_shares_interleave_to_the_one_process_draw_and_resume():
    """N ranks with batch b take, step by step, the draws one process takes with batch N x b."""
    from torch.utils.data import DistributedSampler

    from adapt.data.mixing import RankShare

    def mixture(epoch: int = 0) -> MixtureSampler:
        sampler = MixtureSampler([5, 3], [1.0, 2.0], num_samples=12, seed=4, with_seeds=True)
        sampler.set_epoch(epoch)
        return sampler

    shares = [RankShare(mixture(), 3, rank) for rank in range(3)]
    assert all(isinstance(s, DistributedSampler) for s in shares)  # Lightning keeps it, adds no shuffling wrapper
    drawn = [list(s) for s in shares]
    assert all(len(d) == len(s) == 4 for d, s in zip(drawn, shares))
    assert [d for step in zip(*drawn) for d in step] == list(mixture())
    for share in shares:
        share.set_epoch(1)
    epoch1 = [list(s) for s in shares]
    assert [d for step in zip(*epoch1) for d in step] == list(mixture(1)) != list(mixture())
    shares[1].skip_next(3)  # resumed after 3 of its draws of epoch 1
    assert list(shares[1]) == epoch1[1][3:]
    assert list(shares[1]) == epoch1[1]  # the skip applies to one pass only
    padded = [list(RankShare(MixtureSampler([5], [1.0], num_samples=5, seed=0), 2, r)) for r in (0, 1)]
    assert len(padded[0]) == len(padded[1]) == 3 and padded[1][2] == padded[0][0]  # wrapped to equal lengths
