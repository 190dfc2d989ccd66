"""Join predictions to ground truth by meaning: the image's file name and the phrase, with ids checked.

A COCO results entry names its image by `image_id` and its concept by `category_id`. Those numbers mean nothing
outside the file that assigned them: `predict` numbers what it was given, labelme and Roboflow number images in
their own orders, `convert` 1..N. Joined by id alone, two files that describe the same images score 0 with no
warning. So when an entry carries `file_name` (and `phrase`), those decide:

* `file_name` is matched to the ground truth's `file_name` as a path suffix ("/data/food/images/a.jpg" is the
  ground truth's "images/a.jpg" or "a.jpg"), once per distinct name; no match, or two, is an error;
* `phrase` is matched to a COCO category name (exactly, else ignoring case) or, with the file, to an SA-Co pair;
* an entry whose `image_id` is an id of the ground truth claims to use its ids: it must name the same image as
  its file name (and the same category or pair as its phrase), or it is refused, naming the entry. An entry with
  an id the ground truth does not have (`predict` writes the path it was given) uses its own ids, and its
  file name and phrase are the join.

Entries without `file_name` are joined by id, as pycocotools does. Box units are checked too: COCO boxes are
pixels, SA-Co boxes are normalised by the image size; a file in the other unit is named.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sam3_model.errors import DatasetError

BOX_UNITS = {"coco": "px", "saco": "norm"}
_UNIT_NAMES = {"px": "pixels (COCO)", "norm": "normalised by the image size (SA-Co)"}
_BOX_MATCH_PX = 1.5  # a box equals its mask's box within this many pixels


@dataclass
class TruthIndex:
    """What a ground-truth file says about its images and phrases, for joining by meaning."""

    format: str  # "coco" or "saco"
    file_of: dict[Any, str] = field(default_factory=dict)  # image id (COCO) or pair id (SA-Co) -> file name
    size_of: dict[Any, tuple[int, int]] = field(default_factory=dict)  # same ids -> (height, width)
    phrase_of: dict[Any, str] = field(default_factory=dict)  # SA-Co pair id -> phrase
    category_names: dict[Any, str] = field(default_factory=dict)  # COCO category id -> name (kept ones)
    pair_category: Any = 1  # SA-Co: the category id of predictions joined by file name and phrase

    def __post_init__(self) -> None:
        self._by_basename: dict[str, list[tuple[tuple[str, ...], list[Any]]]] | None = None
        self._resolved: dict[str, list[Any]] = {}

    def _index(self) -> dict[str, list[tuple[tuple[str, ...], list[Any]]]]:
        if self._by_basename is None:
            by_path: dict[tuple[str, ...], list[Any]] = defaultdict(list)
            for key, name in self.file_of.items():
                by_path[_parts(name)].append(key)
            self._by_basename = defaultdict(list)
            for parts, keys in by_path.items():
                if parts:
                    self._by_basename[parts[-1]].append((parts, keys))
        return self._by_basename

    def ids_of_file(self, file_name: str, where: str) -> list[Any]:
        """The ids (COCO image id; SA-Co pair ids) of the ground-truth image a predicted file name is."""
        if file_name in self._resolved:
            return self._resolved[file_name]
        parts = _parts(file_name)
        candidates = [(p, keys) for p, keys in self._index().get(parts[-1] if parts else "", [])
                      if _is_suffix(p, parts) or _is_suffix(parts, p)]
        if len(candidates) > 1:  # prefer the ground-truth path sharing the most trailing folders
            best = max(_common_suffix(p, parts) for p, _ in candidates)
            candidates = [(p, keys) for p, keys in candidates if _common_suffix(p, parts) == best]
        if not candidates:
            raise DatasetError(f"{where}: file_name {file_name!r} is not an image of the ground truth")
        if len(candidates) > 1:
            names = ", ".join(repr("/".join(p)) for p, _ in candidates[:3])
            raise DatasetError(f"{where}: file_name {file_name!r} could be any of the ground truth's {names}; "
                               "give the path as the ground truth writes it")
        self._resolved[file_name] = candidates[0][1]
        return candidates[0][1]


def _parts(path: str) -> tuple[str, ...]:
    """A file name as path components: '/' and '\\' separators, '.' and empty parts dropped, '..' collapsed."""
    normal = posixpath.normpath(path.replace("\\", "/"))
    return tuple(p for p in normal.split("/") if p not in ("", "."))


def _is_suffix(short: tuple[str, ...], long: tuple[str, ...]) -> bool:
    return len(short) <= len(long) and long[len(long) - len(short):] == short


def _common_suffix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


@dataclass
class JoinReport:
    """How the predictions were joined, for the user to read."""

    by_file_name: int = 0  # entries joined by file name (and phrase)
    by_id: int = 0  # entries joined by their ids
    dropped_phrase: int = 0  # phrase is not a category of the ground truth (dropped, like an unknown category)
    notes: list[str] = field(default_factory=list)


def join_predictions(preds: Any, truth: TruthIndex, source: str) -> tuple[list[dict], JoinReport]:
    """The entries with the ground truth's `image_id` and `category_id`, joined by file name and phrase."""
    if not isinstance(preds, list):
        raise DatasetError(f"{source}: predictions must be a JSON list of COCO results, got {type(preds).__name__}")
    report = JoinReport()
    out = []
    phrase_ids = _phrase_ids(truth)
    for i, entry in enumerate(preds):
        where = f"{source}: entry {i}"
        if not isinstance(entry, Mapping) or "file_name" not in entry:
            out.append(entry)
            report.by_id += isinstance(entry, Mapping)
            continue
        joined = _join_entry(entry, truth, phrase_ids, where)
        if joined is None:
            report.dropped_phrase += 1
            continue
        out.append(joined)
        report.by_file_name += 1
    if report.dropped_phrase:
        report.notes.append(f"{source}: {report.dropped_phrase} predictions name a phrase that is not a category of "
                            "the ground truth; they were ignored, as the official evaluator ignores unknown "
                            "categories")
    return out, report


def _phrase_ids(truth: TruthIndex) -> dict[str, Any]:
    """COCO: category name -> id, exact names first, then lower-case names that are unambiguous."""
    exact = {name: cid for cid, name in truth.category_names.items()}
    lower: dict[str, list[Any]] = defaultdict(list)
    for cid, name in truth.category_names.items():
        lower[name.lower()].append(cid)
    return {**{k: v[0] for k, v in lower.items() if len(v) == 1}, **exact}


def _join_entry(entry: Mapping[str, Any], truth: TruthIndex, phrase_ids: Mapping[str, Any],
                where: str) -> dict | None:  # fmt: skip
    """One entry with ground-truth ids (None: its phrase is not a ground-truth category)."""
    file_name = entry["file_name"]
    if not isinstance(file_name, str) or not file_name.strip():
        raise DatasetError(f"{where}: file_name must be a non-empty string, got {file_name!r}")
    ids = truth.ids_of_file(file_name, where)
    claimed = entry.get("image_id")
    claims_truth_ids = _hashable(claimed) and claimed in truth.file_of
    phrase = entry.get("phrase")
    if phrase is not None and (not isinstance(phrase, str) or not phrase.strip()):
        raise DatasetError(f"{where}: phrase must be a non-empty string, got {phrase!r}")
    joined = dict(entry)
    if truth.format == "coco":
        image_id = ids[0]
        if claims_truth_ids and claimed != image_id:
            raise _disagree(where, "image_id", claimed, f"is {truth.file_of[claimed]!r} in the ground truth",
                            f"file_name {file_name!r} is its image {image_id!r}")
        joined["image_id"] = image_id
        if phrase is not None:
            category = phrase_ids.get(phrase.strip(), phrase_ids.get(phrase.strip().lower()))
            given = entry.get("category_id")
            if claims_truth_ids and _hashable(given) and given in truth.category_names and given != category:
                raise _disagree(where, "category_id", given, f"is {truth.category_names[given]!r} in the ground truth",
                                f"the entry's phrase is {phrase!r}")
            if category is None:
                return None
            joined["category_id"] = category
        return joined
    # SA-Co: a file holds several pairs; the phrase picks one
    if phrase is None:
        if claims_truth_ids and claimed in ids:
            return joined
        raise DatasetError(f"{where}: an SA-Co prediction with a file_name needs its 'phrase' (or the pair's "
                           "image_id) to tell which image-phrase pair it belongs to")
    pair = next((p for p in ids if truth.phrase_of[p] == phrase.strip()), None)
    if pair is None:
        pair = next((p for p in ids if truth.phrase_of[p].lower() == phrase.strip().lower()), None)
    if claims_truth_ids and claimed != pair:
        raise _disagree(where, "image_id", claimed, f"is pair ({truth.file_of[claimed]!r}, "
                        f"{truth.phrase_of[claimed]!r}) in the ground truth", f"the entry is ({file_name!r}, {phrase!r})")
    if pair is None:
        return None
    joined["image_id"] = pair
    if not claims_truth_ids:
        joined["category_id"] = truth.pair_category
    return joined


def _disagree(where: str, key: str, value: Any, says: str, but: str) -> DatasetError:
    return DatasetError(f"{where}: {key} {value!r} {says}, but {but}; ids and names must agree (rerun "
                        "`sam3-adapt predict --gt GROUND_TRUTH` to write the ground truth's own ids)")


def _hashable(value: Any) -> bool:
    return isinstance(value, (int, str, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------- box units


def box_units(preds: Sequence[Mapping[str, Any]], sizes: Mapping[Any, tuple[int, int]]) -> tuple[str | None, int]:
    """The unit the boxes of joined predictions are in ("px", "norm" or None: cannot tell) and an example entry.

    With a mask, a box is in pixels when it is the mask's box in pixels, normalised when it is that box divided by
    the image size. Without masks: a coordinate above 1.5 is pixels; all within [0, 1] with a sub-pixel extent is
    normalised. The file's unit is what its entries say most often.
    """
    votes = {"px": [], "norm": []}
    for i, entry in enumerate(preds):
        box, size = entry.get("bbox"), sizes.get(entry.get("image_id"))
        if not (isinstance(box, list) and len(box) == 4 and size is not None):
            continue
        unit = _entry_unit(np.asarray(box, np.float64), entry.get("segmentation"), size)
        if unit is not None:
            votes[unit].append(i)
    if not votes["px"] and not votes["norm"]:
        return None, -1
    unit = "px" if len(votes["px"]) >= len(votes["norm"]) else "norm"
    return unit, votes[unit][0]


def _entry_unit(box: np.ndarray, segmentation: Any, size: tuple[int, int]) -> str | None:
    h, w = size
    scale = np.array([w, h, w, h], np.float64)
    if isinstance(segmentation, Mapping) and isinstance(segmentation.get("counts"), str):
        try:
            mask_box = np.asarray(mask_utils.toBbox({"size": list(segmentation["size"]),
                                                     "counts": segmentation["counts"].encode("ascii")}), np.float64)
        except Exception:  # noqa: BLE001 - a bad mask is reported by the checks that follow
            return None
        if not mask_box[2:].any():
            return None
        px = np.abs(box - mask_box).max() <= _BOX_MATCH_PX
        norm = np.abs(box * scale - mask_box).max() <= _BOX_MATCH_PX
        return None if px == norm else ("px" if px else "norm")
    if (box > 1.5).any():
        return "px"
    extent = box[2:]
    if (box >= 0).all() and (box[:2] + extent <= 1.0 + 1e-6).all() and ((extent > 0) & (extent < 1)).any() \
            and min(h, w) > 2:
        return "norm"
    return None


def check_box_units(preds: Sequence[Mapping[str, Any]], truth: TruthIndex, iou_type: str, source: str) -> list[str]:
    """Refuse (bbox evaluation) or warn (segm) when the joined predictions' boxes are in the other unit."""
    expected = BOX_UNITS[truth.format]
    unit, example = box_units(preds, truth.size_of)
    if unit is None or unit == expected:
        return []
    message = (f"{source}: the boxes are {_UNIT_NAMES[unit]} (e.g. entry {example}: bbox {preds[example]['bbox']}), "
               f"but this {truth.format.upper().replace('SACO', 'SA-Co')} ground truth's boxes are "
               f"{_UNIT_NAMES[expected]}")
    fix = "; rerun `sam3-adapt predict --gt GROUND_TRUTH`, which writes boxes in the ground truth's unit"
    if iou_type == "bbox":
        raise DatasetError(message + fix)
    return [f"warning: {message}: box metrics would be wrong (these mask metrics are not affected){fix}"]
