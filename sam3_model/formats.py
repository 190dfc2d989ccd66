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


def check_rle(segmentation: Mapping[str, Any], height: int, width: int) -> RLE:
    """A compressed or uncompressed RLE of a (height, width) image, checked -> compressed RLE with str counts."""
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
