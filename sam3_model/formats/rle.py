"""Compressed COCO RLE masks, checked: runs non-negative and covering exactly height x width pixels.

pycocotools decodes a corrupt string without complaint: into garbage, into a loop that never ends (a run list
shorter than the image keeps its IoU loop from finishing), or past its buffer (an overlong one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .problem import FormatProblem

RLE = dict  # {"size": [H, W], "counts": str}
MAX_RUN_CHARS = 7  # 35 bits: longer than any image; more characters in one number is a corrupt string


def str_counts(rle: Mapping[str, Any]) -> RLE:
    """A compressed RLE with `counts` as str (pycocotools returns bytes) and `size` as a list of ints."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}  # fmt: skip


def compressed_runs(counts: str | bytes) -> np.ndarray:
    """The run lengths of a COCO compressed RLE string (pycocotools' `rleFrString`), or `FormatProblem`.

    Vectorised: each number is 5 bits per character, least significant first, with 0x20 as "more follows"
    and 0x10 of the last character as the sign; from the fourth run on, each is a delta on the run two back.
    """
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise FormatProblem("compressed RLE counts are not ASCII") from None
    chars = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48  # (C,)
    if not len(chars):
        return np.zeros(0, np.int64)
    if ((chars < 0) | (chars >= 64)).any():
        bad = int(np.flatnonzero((chars < 0) | (chars >= 64))[0])
        raise FormatProblem(f"compressed RLE counts hold an invalid character {chr(counts[bad])!r}")
    more = (chars & 0x20) != 0  # (C,)
    if more[-1]:
        raise FormatProblem("compressed RLE counts end in the middle of a number")
    ends = np.flatnonzero(~more)  # (R,) last character of each number
    starts = np.concatenate([[0], ends[:-1] + 1])  # (R,)
    lengths = ends - starts + 1
    if lengths.max() > MAX_RUN_CHARS:
        raise FormatProblem("compressed RLE counts hold a number longer than any image")
    position = np.arange(len(chars)) - np.repeat(starts, lengths)  # (C,) character index within its number
    values = np.add.reduceat((chars & 0x1F) << (5 * position), starts)  # (R,)
    negative = (chars[ends] & 0x10) != 0
    values[negative] |= -1 << (5 * lengths[negative])  # sign extension, as `x |= -1 << 5k`
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # run i > 2 adds run i - 2: odd runs accumulate from run 1,
    runs[2::2] = np.cumsum(values[2::2])  # even runs from run 2 (run 0 stands alone)
    return runs


CHECK_CHUNK_CHARS = 1 << 20  # characters checked per vectorised pass: bounds the temporaries (~40 MB)


def first_corrupt(counts: Sequence[str | bytes], totals: Sequence[int]) -> tuple[int, str] | None:
    """The index of the first compressed RLE string whose runs are not non-negative and summing to its total,
    and why; None when all are sound. Vectorised over many strings at once (per-string calls cost ~30 us each
    in numpy's fixed overhead, which dominates on a prediction file's thousands of masks), in chunks of about
    `CHECK_CHUNK_CHARS` characters."""
    start, chars = 0, 0
    for end in range(len(counts) + 1):
        if end == len(counts) or (chars >= CHECK_CHUNK_CHARS and end > start):
            found = _first_corrupt(counts[start:end], totals[start:end]) if end > start else None
            if found is not None:
                return start + found[0], found[1]
            start, chars = end, 0
        if end < len(counts):
            chars += len(counts[end])
    return None


def _first_corrupt(counts: Sequence[str | bytes], totals: Sequence[int]) -> tuple[int, str] | None:
    """`first_corrupt` on one chunk."""
    if not counts:
        return None
    raw = [c.encode("ascii", "replace") if isinstance(c, str) else bytes(c) for c in counts]
    lengths = np.fromiter((len(r) for r in raw), np.int64, len(raw))  # (S,)
    totals = np.asarray(totals, np.int64)
    last = np.cumsum(lengths) - 1  # (S,) last character of each string (-1 step for empty strings)
    chars = np.frombuffer(b"".join(raw), np.uint8).astype(np.int32) - 48  # (C,)
    if not len(chars):
        bad = np.flatnonzero(totals != 0)
        return (int(bad[0]), "compressed RLE counts are empty") if len(bad) else None
    bad_char = (chars < 0) | (chars >= 64)
    if bad_char.any():
        return _string_of(int(np.flatnonzero(bad_char)[0]), last), "compressed RLE counts hold an invalid character"
    more = (chars & 0x20).astype(bool)  # (C,) another character of the same number follows
    filled = lengths > 0
    open_end = more[last[filled]]
    if open_end.any():
        return int(np.flatnonzero(filled)[np.flatnonzero(open_end)[0]]), \
            "compressed RLE counts end in the middle of a number"
    is_start = np.empty(len(chars), bool)
    is_start[0] = True
    np.logical_not(more[:-1], out=is_start[1:])
    index = np.arange(len(chars), dtype=np.int32)
    position = index - np.maximum.accumulate(np.where(is_start, index, 0))  # (C,) character within its number
    if position.max() >= MAX_RUN_CHARS:
        return _string_of(int(np.argmax(position)), last), "compressed RLE counts hold a number longer than any image"
    summed = np.cumsum((chars & 0x1F).astype(np.int64) << (5 * position))
    ends = np.flatnonzero(~more)  # (R,) last character of each number
    starts = np.flatnonzero(is_start)  # (R,) first character of each number
    values = summed[ends] - np.where(starts > 0, summed[np.maximum(starts - 1, 0)], 0)  # (R,)
    negative = (chars[ends] & 0x10).astype(bool)
    values[negative] |= -1 << (5 * (position[ends[negative]] + 1))  # sign extension, as `x |= -1 << 5k`
    per_string = np.diff(np.r_[0, np.searchsorted(ends, last[filled], side="right")])  # numbers of each string
    numbers = np.zeros(len(raw), np.int64)
    numbers[filled] = per_string
    string = np.repeat(np.arange(len(raw)), numbers)  # (R,) string of each number
    rank = np.arange(len(values)) - np.repeat(np.cumsum(numbers) - numbers, numbers)  # (R,) index in its string
    runs = values.copy()
    for parity, first_rank in ((1, 1), (0, 2)):  # odd runs accumulate from run 1, even runs from run 2
        pick = np.flatnonzero((rank % 2 == parity) & (rank >= first_rank))
        if len(pick):
            total = np.cumsum(values[pick])
            new = np.r_[True, string[pick][1:] != string[pick][:-1]]
            first = np.maximum.accumulate(np.where(new, np.arange(len(pick)), 0))
            runs[pick] = total - total[first] + values[pick][first]
    covered = np.bincount(string, weights=runs.astype(np.float64), minlength=len(raw))
    negative_run = np.bincount(string, weights=runs < 0, minlength=len(raw)) > 0
    wrong = negative_run | (covered != totals)
    if wrong.any():
        k = int(np.flatnonzero(wrong)[0])
        return k, (f"compressed RLE counts are corrupt (runs cover {int(covered[k])} pixels, the image has "
                   f"{int(totals[k])})")
    return None


def _string_of(char: int, last: np.ndarray) -> int:
    """Which string a character of the joined buffer belongs to."""
    return int(np.searchsorted(last, char))


class RleBatch:
    """Compressed RLEs whose runs are checked together (`first_corrupt`), each with the entry that holds it."""

    def __init__(self) -> None:
        self.counts: list[str | bytes] = []
        self.totals: list[int] = []
        self.where: list[str] = []

    def add(self, rle: Mapping[str, Any], where: str) -> None:
        """Queue a size-checked compressed RLE (`check_rle(..., batch=...)` does this)."""
        self.counts.append(rle["counts"])
        self.totals.append(int(rle["size"][0]) * int(rle["size"][1]))
        self.where.append(where)

    def first_problem(self) -> tuple[str, str] | None:
        """(entry, what is wrong) of the first corrupt RLE, or None; the queue is emptied."""
        found = first_corrupt(self.counts, self.totals)
        where = self.where
        self.counts, self.totals, self.where = [], [], []
        return None if found is None else (where[found[0]], found[1])


def check_rle(segmentation: Mapping[str, Any], height: int, width: int, batch: RleBatch | None = None,
              where: str = "") -> RLE:
    """A compressed or uncompressed RLE of a (height, width) image, checked -> compressed RLE with str counts.

    With `batch`, a compressed RLE's runs are queued there (under `where`) instead of being checked now.
    """
    if "size" not in segmentation or "counts" not in segmentation:
        raise FormatProblem("RLE segmentation needs 'size' and 'counts'")
    size = segmentation["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and list(size) == [height, width]):
        raise FormatProblem(f"RLE size {size!r} (height, width) disagrees with the image's [{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise FormatProblem("uncompressed RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            raise FormatProblem(f"RLE runs cover {sum(counts)} pixels, the image has {height * width}")
        from pycocotools import mask as mask_utils

        return str_counts(mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width))
    if not isinstance(counts, (str, bytes)):
        raise FormatProblem(f"RLE counts must be a string or a list of integers, got {type(counts).__name__}")
    if batch is not None:
        rle = {"size": [height, width], "counts": counts.decode("ascii", "replace") if isinstance(counts, bytes)
               else counts}
        batch.add(rle, where)
        return rle
    runs = compressed_runs(counts)
    total = int(runs.sum())
    if (runs < 0).any() or total != height * width:
        raise FormatProblem(f"compressed RLE counts are corrupt (runs cover {total} pixels, the image has "
                            f"{height * width})")  # fmt: skip
    return {"size": [height, width], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
