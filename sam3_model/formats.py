"""Checks every dataset and prediction reader shares: phrases, compressed RLE masks, placeholder categories.

One checked parser for each, so training, evaluation and the data engine accept and refuse the same entries:

* a phrase is a non-empty string that can be encoded as UTF-8 (a lone surrogate, e.g. from undecodable command
  line bytes, would crash the tokenizer at the first step);
* a compressed RLE's runs must be non-negative and cover exactly height x width pixels: pycocotools decodes a
  corrupt string without complaint, into garbage or a loop that does not end;
* annotation tools write categories that are not concepts: Roboflow's root category (the project name, id 0,
  supercategory "none", no annotations) and labelme's `_background_`. Asked as phrases they would teach that
  the concept is absent everywhere, so they are left out (and reported) unless asked to keep them.

Problems raise `FormatProblem` with a message saying what is wrong; the caller adds the file and the entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RLE = dict  # {"size": [H, W], "counts": str}
MAX_RUN_CHARS = 7  # 35 bits: longer than any image; more characters in one number is a corrupt string
BACKGROUND_NAMES = ("_background_", "__background__")  # labelme2coco, detectron/mmdet conventions


class FormatProblem(ValueError):
    """One bad value (phrase, mask, category); the message says what, the caller names the file and the entry."""


def check_phrase(text: Any) -> str:
    """A usable phrase: a non-empty string (stripped) that encodes as UTF-8, or `FormatProblem`."""
    if not isinstance(text, str) or not text.strip():
        raise FormatProblem(f"a phrase must be a non-empty string, got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise FormatProblem(f"phrase {text!r} cannot be encoded as UTF-8 (character {err.start}: "
                            f"{text[err.start]!r}); was it read with the wrong encoding?") from None
    return text.strip()


# ----------------------------------------------------------------------------------------------- RLE


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

        coded = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        return {"size": [height, width], "counts": coded["counts"].decode("ascii")}
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


# ----------------------------------------------------------------------------------------------- categories


@dataclass(frozen=True)
class CategoryRules:
    """Which categories of a COCO file are phrases: placeholders dropped, names excluded, an optional allow-list."""

    exclude: tuple[str, ...] = ()  # category names left out with their annotations
    keep_only: tuple[str, ...] | None = None  # only these phrases (case-insensitive), e.g. a recipe's ontology
    keep_placeholders: bool = False  # keep Roboflow's root category and labelme's _background_ as phrases


@dataclass
class CategoryChoice:
    """The categories that are phrases (id -> name, in id order) and those left out (id -> why)."""

    kept: dict[Any, str]
    dropped: dict[Any, str] = field(default_factory=dict)

    def notes(self, source: str, names: Mapping[Any, str]) -> list[str]:
        """One line per left-out category, naming the file, for the user to read."""
        return [f"{source}: left out category {names[c]!r} (id {c!r}): {why}" for c, why in self.dropped.items()]


def placeholder_reason(category: Mapping[str, Any], used_ids: set, supercategories: set) -> str | None:
    """Why a category is an annotation tool's placeholder rather than a concept, or None when it is a concept."""
    name = str(category.get("name", "")).strip()
    if name in BACKGROUND_NAMES:
        return "labelme's background class, not a concept"
    root = category.get("supercategory") == "none" and category["id"] not in used_ids
    if root and (category["id"] == 0 or name in supercategories):
        return "Roboflow's root category (the project name: supercategory 'none', no annotations)"
    return None


def read_categories(categories: Any, annotations: Iterable[Any], rules: CategoryRules, source: str,
                    sort_key=lambda v: v) -> CategoryChoice:  # noqa: B008
    """A COCO file's `categories` checked (each an object with an integer or string `id`, unique, and a phrase
    for a `name`) and chosen by `rules`; `FormatProblem` naming `source` and the entry. Training and evaluation
    read categories with this one function, so they accept and refuse the same files."""
    if not isinstance(categories, list):
        raise FormatProblem(f"{source}: 'categories' must be a list")
    ids: set = set()
    for i, cat in enumerate(categories):
        where = f"{source}: categories[{i}]"
        if not isinstance(cat, Mapping) or "id" not in cat or "name" not in cat:
            raise FormatProblem(f"{where}: a category needs 'id' and 'name'")
        cat_id = cat["id"]
        if not ((isinstance(cat_id, int) and not isinstance(cat_id, bool)) or (isinstance(cat_id, str) and cat_id)):
            raise FormatProblem(f"{where}: id must be an integer or a string, got {cat_id!r}")
        if cat_id in ids:
            raise FormatProblem(f"{where}: duplicate category id {cat_id!r}")
        ids.add(cat_id)
        try:
            check_phrase(cat["name"])
        except FormatProblem as err:
            raise FormatProblem(f"{where}: name (it is the phrase): {err}") from None
    try:
        return choose_categories(categories, annotations, rules, sort_key)
    except FormatProblem as err:
        raise FormatProblem(f"{source}: {err}") from None


def choose_categories(categories: Sequence[Any], annotations: Iterable[Any], rules: CategoryRules = CategoryRules(),
                      sort_key=lambda v: v) -> CategoryChoice:  # noqa: B008 - frozen
    """Apply `rules` to checked categories (each a mapping with 'id' and 'name'); `FormatProblem` on clashes.

    Names must differ among the kept categories only: a placeholder or excluded category may share a real
    class's name (Roboflow's root "nails" beside "Nail").
    """
    used = {a.get("category_id") for a in annotations if isinstance(a, Mapping)}
    supers = {c.get("supercategory") for c in categories}
    excluded = {n.strip().lower() for n in rules.exclude}
    allowed = None if rules.keep_only is None else {n.strip().lower() for n in rules.keep_only}
    kept: dict[Any, str] = {}
    dropped: dict[Any, str] = {}
    seen: dict[str, Any] = {}
    for cat in categories:
        name = check_phrase(cat["name"])
        why = None if rules.keep_placeholders else placeholder_reason(cat, used, supers)
        if why is None and name.lower() in excluded:
            why = "excluded (exclude_categories)"
        if why is None and allowed is not None and name.lower() not in allowed:
            why = "not one of the dataset's phrases"
        if why is not None:
            dropped[cat["id"]] = why
            continue
        if name in seen:
            raise FormatProblem(f"name {name!r} is also category {seen[name]!r}'s; each category is a phrase, so "
                                "names must differ (merge the two categories, or exclude one)")
        seen[name] = cat["id"]
        kept[cat["id"]] = name
    return CategoryChoice({c: kept[c] for c in sorted(kept, key=sort_key)}, dropped)
