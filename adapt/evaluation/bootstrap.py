"""Per-pair evaluation tables and image-level bootstrap intervals for cgF1, pmF1, IL_MCC and IL_FPR.

A `PairTable` holds, for every evaluated image-phrase pair of one evaluation, the image it belongs to, its
phrase, |G|, |D| (predictions >= the score threshold) and TP_t at the 10 IoU thresholds (after the oracle
selection): enough to recompute the metrics exactly as `adapt.evaluation.cgf1._accumulate` does.

The bootstrap resamples the test *images* with replacement (every pair of a drawn image comes with it). All the
metrics are ratios of sums over pairs, so each image is reduced once to its sufficient statistics (sums over its
pairs of TP_t, pmFP_t and FN_t, and its image-level TP/FP/TN/FN pair counts); a resample is then a row of a
(B, I) count matrix, and one matrix product gives the (B, K) sums from which the metrics are vectorised over B,
with the official epsilons. A subset of pairs (`PairTable.subset`) keeps every image, so its statistic is over the
same image population; a paired difference draws the same images for both models.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from adapt.evaluation.cgf1 import BOX_EPS, IL_EPS, IOU_THRESHOLDS, CgF1Result
from adapt.evaluation.pairs import PairId
from sam3_model.atomic import atomic_write

METRICS = ("cgF1", "pmF1", "IL_MCC", "IL_FPR")
FORMAT_VERSION = 1
_T = len(IOU_THRESHOLDS)
_K = 3 * _T + 4  # per-image statistics: TP_t, pmFP_t, FN_t, then IL TP, FP, TN, FN


@dataclass
class PairTable:
    """Per-pair counts of one evaluation (one IoU type), grouped by image; rows are pairs, `image_*` are images."""

    image_keys: np.ndarray  # (I,) str: a stable key per image (validation: "<dataloader index>:<sample index>")
    image_ids: np.ndarray  # (I,) str: the image's id in its source file, "" when unknown
    image_files: np.ndarray  # (I,) str: the image's file, "" when unknown
    pair_image: np.ndarray  # (N,) int64: row of the pair's image in `image_*`
    phrases: np.ndarray  # (N,) str
    num_gt: np.ndarray  # (N,) int64: non-crowd GT instances
    num_dt: np.ndarray  # (N,) int64: predictions with score >= score_threshold
    tps: np.ndarray  # (N, T) int64: matched pairs with IoU >= each of the 10 thresholds
    iou_type: str = "segm"
    score_threshold: float = 0.5

    def __post_init__(self) -> None:
        """Normalise dtypes and check the shapes agree."""
        for name in ("image_keys", "image_ids", "image_files", "phrases"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=str).reshape(-1))
        for name in ("pair_image", "num_gt", "num_dt"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.int64).reshape(-1))
        self.tps = np.asarray(self.tps, dtype=np.int64).reshape(-1, _T)
        n, i = len(self.pair_image), len(self.image_keys)
        if not (len(self.phrases) == len(self.num_gt) == len(self.num_dt) == len(self.tps) == n):
            raise ValueError("PairTable: pair columns differ in length")
        if not (len(self.image_ids) == len(self.image_files) == i):
            raise ValueError("PairTable: image columns differ in length")
        if n and (self.pair_image.min() < 0 or self.pair_image.max() >= i):
            raise ValueError("PairTable: pair_image points outside the images")
        if len(set(self.image_keys.tolist())) != i:
            raise ValueError("PairTable: image keys are not unique")

    @property
    def num_pairs(self) -> int:
        """Number of pairs (rows)."""
        return len(self.pair_image)

    @property
    def num_images(self) -> int:
        """Number of images (resampling units)."""
        return len(self.image_keys)

    @classmethod
    def from_result(
        cls,
        result: CgF1Result,
        image_of: Mapping[PairId, str],
        *,
        iou_type: str,
        score_threshold: float,
        image_info: Mapping[str, tuple[str, str]] | None = None,
    ) -> PairTable:
        """Table of an `evaluate_pairs` result; `image_of`: pair id -> image key, `image_info`: key -> (id, file)."""
        pair_keys = [str(image_of[o.pair_id]) for o in result.per_pair]
        keys = list(dict.fromkeys(pair_keys))  # images in order of first appearance
        row = {k: r for r, k in enumerate(keys)}
        info = image_info or {}
        return cls(
            image_keys=np.asarray(keys, dtype=str),
            image_ids=np.asarray([str(info.get(k, ("", ""))[0]) for k in keys], dtype=str),
            image_files=np.asarray([str(info.get(k, ("", ""))[1]) for k in keys], dtype=str),
            pair_image=np.asarray([row[k] for k in pair_keys], dtype=np.int64),
            phrases=np.asarray([o.phrase for o in result.per_pair], dtype=str),
            num_gt=result.num_gt, num_dt=result.num_dt, tps=result.tps,
            iou_type=iou_type, score_threshold=score_threshold,
        )  # fmt: skip

    def subset(self, mask: np.ndarray) -> PairTable:
        """The pairs where `mask` (N,) bool is true; every image is kept (an image left without pairs counts zero)."""
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        if len(mask) != self.num_pairs:
            raise ValueError(f"subset mask has {len(mask)} entries, the table has {self.num_pairs} pairs")
        return PairTable(self.image_keys, self.image_ids, self.image_files, self.pair_image[mask], self.phrases[mask],
                         self.num_gt[mask], self.num_dt[mask], self.tps[mask], self.iou_type, self.score_threshold)

    def save(self, path: str | Path) -> Path:
        """Write the table to `path` as a compressed `.npz` (atomically: never half a file)."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("iou_type", "score_threshold")}
        meta = {"format": "sam3-adapt pair table", "version": FORMAT_VERSION, "iou_type": self.iou_type,
                "score_threshold": self.score_threshold, "iou_thresholds": IOU_THRESHOLDS.tolist()}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, meta=np.asarray(json.dumps(meta)), **arrays)
        return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))

    @classmethod
    def load(cls, path: str | Path) -> PairTable:
        """Read a table written by `save` (`ValueError` naming the file when it is not one)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {f.name: data[f.name] for f in fields(cls) if f.name not in ("iou_type", "score_threshold")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: not a pair table ({err})") from None
        if meta.get("format") != "sam3-adapt pair table" or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: not a pair table of version {FORMAT_VERSION}")
        return cls(**arrays, iou_type=meta["iou_type"], score_threshold=float(meta["score_threshold"]))


def hard_negative_mask(table: PairTable, siblings: Mapping[str, Iterable[str]]) -> np.ndarray:
    """(N,) bool: positive pairs, and negative pairs whose phrase is a sibling of a phrase positive in their image."""
    positive = table.num_gt > 0
    present: dict[int, set[str]] = {}
    for img, phrase in zip(table.pair_image[positive].tolist(), table.phrases[positive].tolist()):
        present.setdefault(img, set()).add(phrase)
    sib = {k: set(v) for k, v in siblings.items()}
    hard = [bool(sib.get(p, set()) & present.get(img, set()))
            for img, p in zip(table.pair_image.tolist(), table.phrases.tolist())]
    return positive | np.asarray(hard, dtype=bool).reshape(-1)


# ----------------------------------------------------------------------------------------- statistics


def image_statistics(table: PairTable) -> np.ndarray:
    """(I, K) per-image sums over its pairs of TP_t, pmFP_t, FN_t (T each) and IL TP, FP, TN, FN (as `_accumulate`)."""
    pos, det = table.num_gt > 0, table.num_dt > 0  # (N,)
    tps = table.tps  # (N, T)
    pm_fp = (table.num_dt[:, None] - tps) * pos[:, None]  # (N, T): FPs of pairs with a GT only
    fn = table.num_gt[:, None] - tps  # (N, T): zero for TN pairs, so summing every pair is the official sum
    il = np.stack([pos & det, ~pos & det, ~pos & ~det, pos & ~det], axis=1)  # (N, 4)
    per_pair = np.concatenate([tps, pm_fp, fn, il], axis=1).astype(np.float64)  # (N, K)
    out = np.zeros((table.num_images, _K))  # (I, K)
    np.add.at(out, table.pair_image, per_pair)
    return out


def metrics_from_sums(sums: np.ndarray) -> dict[str, np.ndarray]:
    """cgF1, pmF1, IL_MCC, IL_FPR of (B, K) summed statistics, vectorised over B, with the official epsilons."""
    tp, pm_fp, fn = sums[:, :_T], sums[:, _T : 2 * _T], sums[:, 2 * _T : 3 * _T]  # (B, T) each
    il_tp, il_fp, il_tn, il_fn = sums[:, 3 * _T :].T  # (B,) each
    pm_precision = tp / (tp + pm_fp + BOX_EPS)  # (B, T)
    recall = tp / (tp + fn + BOX_EPS)
    pm_f1 = 2 * pm_precision * recall / (pm_precision + recall + BOX_EPS)  # (B, T)
    denom = np.sqrt((il_tp + il_fp) * (il_tp + il_fn) * (il_tn + il_fp) * (il_tn + il_fn)) + IL_EPS
    mcc = (il_tp * il_tn - il_fp * il_fn) / denom  # (B,)
    # Official summary: mean over thresholds of the entries > -1; pmF1 >= 0 and |cgF1_t| < 1, so all are kept.
    return {"cgF1": (pm_f1 * mcc[:, None]).mean(1), "pmF1": pm_f1.mean(1), "IL_MCC": mcc,
            "IL_FPR": il_fp / (il_fp + il_tn + IL_EPS)}


def point_estimate(table: PairTable) -> dict[str, float]:
    """cgF1, pmF1, IL_MCC, IL_FPR of the whole table (equal to `evaluate_pairs` on the same pairs)."""
    sums = image_statistics(table).sum(0, keepdims=True)  # (1, K)
    return {k: float(v[0]) for k, v in metrics_from_sums(sums).items()}


def resample_counts(num_images: int, B: int = 1000, seed: int = 0) -> np.ndarray:
    """(B, I) multinomial counts: how often each image is drawn in each of B resamples of I images with replacement."""
    draws = np.random.default_rng(seed).integers(0, num_images, size=(B, num_images))  # (B, I) image indices
    flat = (np.arange(B)[:, None] * num_images + draws).reshape(-1)
    return np.bincount(flat, minlength=B * num_images).reshape(B, num_images).astype(np.float64)


def bootstrap_metrics(table: PairTable, B: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """(B,) values of each metric over B image resamples."""
    return metrics_from_sums(resample_counts(table.num_images, B, seed) @ image_statistics(table))


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """(low, high) percentile interval of (B,) values at `level`."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def intervals(table: PairTable, B: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval (low, high) of each metric, resampling images."""
    return {k: percentile_interval(v, level) for k, v in bootstrap_metrics(table, B, seed).items()}


def _aligned_statistics(table_a: PairTable, table_b: PairTable) -> tuple[np.ndarray, np.ndarray]:
    """(I, K) statistics of both tables with rows in the same image order; refuses tables of different images."""
    keys_a, keys_b = table_a.image_keys.tolist(), table_b.image_keys.tolist()
    if set(keys_a) != set(keys_b):
        only_a, only_b = sorted(set(keys_a) - set(keys_b)), sorted(set(keys_b) - set(keys_a))
        raise ValueError(f"paired bootstrap needs the same test images: {len(only_a)} only in A "
                         f"(e.g. {only_a[:1]}), {len(only_b)} only in B (e.g. {only_b[:1]})")
    order = {k: r for r, k in enumerate(keys_b)}
    rows = np.asarray([order[k] for k in keys_a], dtype=np.int64)  # (I,) row in B of each image of A
    for name in ("image_ids", "image_files"):
        a, b = getattr(table_a, name), getattr(table_b, name)[rows]
        clash = np.flatnonzero((a != "") & (b != "") & (a != b))
        if len(clash):
            k = clash[0]
            raise ValueError(f"paired bootstrap: image {keys_a[k]!r} is {a[k]!r} in A but {b[k]!r} in B ({name})")
    return image_statistics(table_a), image_statistics(table_b)[rows]


def paired_difference(
    table_a: PairTable, table_b: PairTable, B: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float, float]]:
    """(estimate, low, high) of metric(A) - metric(B) per metric, both evaluated on the same resampled images."""
    stats_a, stats_b = _aligned_statistics(table_a, table_b)  # (I, K) each, same image rows
    counts = resample_counts(len(stats_a), B, seed)  # (B, I), shared by both models
    boot_a, boot_b = metrics_from_sums(counts @ stats_a), metrics_from_sums(counts @ stats_b)
    point_a, point_b = point_estimate(table_a), point_estimate(table_b)
    return {k: (point_a[k] - point_b[k], *percentile_interval(boot_a[k] - boot_b[k], level)) for k in METRICS}


def summarize(table: PairTable, B: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, dict[str, float]]:
    """{metric: {"value", "low", "high"}}: the point estimate and its interval, ready for a results file."""
    point, ci = point_estimate(table), intervals(table, B, seed, level)
    return {k: {"value": point[k], "low": ci[k][0], "high": ci[k][1]} for k in METRICS}

