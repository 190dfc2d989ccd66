"""How sure a recipe's numbers are: 95% bootstrap intervals over the test images, for every group of runs.

Every run saves the per-pair table of each test set it was scored on (`runs/<run>/pairs-<set>.npz`). All runs
are scored on the same test images, so one (B, I) matrix of resampled image counts serves them all: a group's
replicates are the mean over its seeds of each seed's metric on the same resampled images, and the difference
between two groups is taken replicate by replicate (a paired bootstrap). A difference whose interval holds 0
cannot be told from noise on this test set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapt.evaluation.bootstrap import (PairTable, hard_negative_mask, image_statistics, metrics_from_sums,
                                        percentile_interval, resample_counts)
from synth.ontology import Ontology

RESAMPLES = 1000  # bootstrap resamples of the test images
SEED = 0  # of the resampled image counts: the same draws for every run, so intervals are reproducible
LEVEL = 0.95


@dataclass
class Estimate:
    """A metric's value (mean over seeds) and its replicates over the resampled test images."""

    value: float
    replicates: np.ndarray  # (B,)

    def interval(self) -> tuple[float, float]:
        """The 95% percentile interval."""
        return percentile_interval(self.replicates, LEVEL)

    def __sub__(self, other: Estimate) -> Estimate:
        return Estimate(self.value - other.value, self.replicates - other.replicates)

    def holds_zero(self) -> bool:
        """Whether 0 is inside the interval: a difference that cannot be told from noise."""
        low, high = self.interval()
        return low <= 0.0 <= high


class Evidence:
    """The saved pair tables of a recipe's runs, and bootstrap estimates of any group of them."""

    def __init__(self, runs_dir: Path, ontology: Ontology | None = None) -> None:
        self.runs_dir = runs_dir
        self.confusable = _confusable(ontology) if ontology is not None else {}
        self._keys: dict[str, list[str]] = {}  # set -> the image order every table is aligned to
        self._counts: dict[str, np.ndarray] = {}  # set -> (B, I) resampled image counts
        self._tables: dict[Path, PairTable] = {}  # each run's table, read once

    def estimate(self, runs: Sequence[str], test_set: str, metric: str,
                 pairs: Callable[[PairTable], np.ndarray] | None = None) -> Estimate | None:
        """`metric` of the runs (averaged over them) on `test_set`, over the pairs `pairs` selects; None when a
        run has no table (a run of an older version) or the tables are of other images."""
        stats = []
        for run in runs:
            table = self._table(self.runs_dir / run / f"pairs-{test_set}.npz")
            if table is None:
                return None
            if pairs is not None:
                table = table.subset(pairs(table))
            aligned = self._aligned(table, test_set)
            if aligned is None:
                return None
            stats.append(aligned)
        if not stats:
            return None
        counts = self._counts[test_set]
        value = np.mean([metrics_from_sums(s.sum(0, keepdims=True))[metric][0] for s in stats])
        replicates = np.mean([metrics_from_sums(counts @ s)[metric] for s in stats], axis=0)  # (B,)
        return Estimate(float(value), replicates)

    def _table(self, path: Path) -> PairTable | None:
        """The pair table at `path` (read on first use), or None when the run has none."""
        if path not in self._tables:
            if not path.is_file():
                return None
            self._tables[path] = PairTable.load(path)
        return self._tables[path]

    def hard_negatives(self, table: PairTable) -> np.ndarray:
        """(N,) the positive pairs and the negatives confusable with a concept present in their image."""
        return hard_negative_mask(table, self.confusable)

    def _aligned(self, table: PairTable, test_set: str) -> np.ndarray | None:
        """(I, K) per-image statistics in the set's reference image order."""
        keys = table.image_keys.tolist()
        if test_set not in self._keys:
            self._keys[test_set] = keys
            self._counts[test_set] = resample_counts(len(keys), RESAMPLES, SEED)
        reference = self._keys[test_set]
        if set(keys) != set(reference):
            return None
        order = {k: i for i, k in enumerate(keys)}
        return image_statistics(table)[[order[k] for k in reference]]


def _confusable(ontology: Ontology) -> dict[str, set[str]]:
    """phrase -> the concepts it is a hard negative of (a sibling, or listed by the concept)."""
    out: dict[str, set[str]] = {}
    for concept in ontology.names:
        for negative in ontology.negatives_of(concept):
            out.setdefault(negative, set()).add(concept)
    return out


def cell(estimate: Estimate | None, fallback: float | None = None, signed: bool = False) -> str:
    """"0.293 [0.251, 0.334]" (signed: "+0.293 [+0.251, +0.334]"); the bare value when there is no estimate."""
    fmt = "{:+.3f}" if signed else "{:.3f}"
    if estimate is None:
        return "" if fallback is None else fmt.format(fallback)
    low, high = estimate.interval()
    return f"{fmt.format(estimate.value)} [{fmt.format(low)}, {fmt.format(high)}]"
