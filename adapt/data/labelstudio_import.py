"""Import Label Studio's JSON export (a list of tasks with their annotations) as a COCO or SA-Co file.

Per task, the most recent annotation that was not cancelled (`was_cancelled`) is taken (by `updated_at`, else
`created_at`, else id, else order); tasks with none are skipped and counted. Its `brushlabels`,
`rectanglelabels` and `polygonlabels` regions become instances of their label's phrase (`labelstudio_regions`);
other result types (choices, text, relations...) and regions that cover no pixel are passed over and counted.

What the export (`labelstudio_export`) put in the task's `data` maps it back: `file_name`, `image_id` and
`category_ids` (COCO), `pair_ids` and `non_exhaustive` (SA-Co), `phrases` (every phrase asked, negatives
included). A task made in Label Studio without them still converts: its file name comes from the image URL (the
`d` of a local-files URL, else the URL's path), its image id is the task id, its size that of its regions.
Phrases that are new to a task (a label added in Label Studio) get new category or pair ids after the largest.

Masks: when any region is a brush or a polygon, every instance has a mask (a rectangle's is the rectangle,
rotated); otherwise the file is box-only. The file is written atomically with the repository's writers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from sam3_model.errors import ConfigError, DatasetError
from sam3_model.formats import (
    FormatProblem,
    check_phrase,
    coco_json,
    gc_paused,
    read_json,
    saco_annotation,
    saco_json,
    write_json_dataset,
)
from sam3_model.records import mask_area

from .annotations import id_sort_key, is_id, is_int
from .labelstudio_export import LOCAL_FILES
from .labelstudio_regions import KINDS, Region, read_region, result_size
from .problems import ON_ERROR
from .records import DatasetProblem

FORMATS = ("auto", "coco", "saco")


@dataclass
class ImportStats:
    """What an import wrote and passed over."""

    format: str
    tasks: int = 0  # tasks in the export
    images: int = 0  # images written
    instances: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # tasks passed over, by reason
    problems: list[DatasetProblem] = field(default_factory=list)  # bad tasks skipped (on_error "skip")
    ignored: dict[str, int] = field(default_factory=dict)  # regions passed over, by reason


@dataclass
class _Task:
    """One converted task: its image, the phrases asked of it and its regions."""

    file_name: str
    image_id: Any
    width: int
    height: int
    phrases: list[str]  # asked of the image, in order (negatives included)
    ids: dict[str, Any]  # phrase -> category id (COCO source) or pair id (SA-Co source)
    source_format: str | None
    non_exhaustive: set[str]
    regions: list[Region]


class _TaskProblem(Exception):
    """A bad task; the message says what and where in the task."""


def import_labelstudio(export: str | os.PathLike[str], out: str | os.PathLike[str], to: str = "auto",
                       on_error: str = "stop") -> ImportStats:  # fmt: skip
    """Write the annotations of a Label Studio JSON export as a COCO or SA-Co file ("auto": the exported one's)."""
    if to not in FORMATS:
        raise ConfigError(f"to must be one of {', '.join(FORMATS)}, got {to!r}")
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    export, out = Path(export), Path(out)
    with gc_paused():
        data = read_json(export, "Label Studio export")
    if not isinstance(data, list):
        raise DatasetError(f"{export}: expected Label Studio's JSON export, a list of tasks (Export > JSON), got "
                           f"{type(data).__name__}")  # fmt: skip
    stats = ImportStats(to, tasks=len(data))
    tasks: list[_Task] = []
    seen: dict[Any, str] = {}  # file name and image id -> the task that has them
    for i, task in enumerate(data):
        label = _task_label(task, i)
        try:
            converted = _convert_task(task, stats)
            if converted is not None:
                _check_unique(converted, label, seen)
        except _TaskProblem as err:
            problem = DatasetProblem(str(export), label, str(err))
            if on_error == "stop":
                raise DatasetError(f"{problem}; fix it, or pass --on_error=skip to leave such tasks out") from None
            stats.problems.append(problem)
            continue
        if converted is not None:
            tasks.append(converted)
    if to == "auto":
        stats.format = next((t.source_format for t in tasks if t.source_format in ("coco", "saco")), "coco")
    with_masks = any(r.mask is not None for t in tasks for r in t.regions)
    write = _write_coco if stats.format == "coco" else _write_saco
    stats.images, stats.instances = write(out, tasks, with_masks, stats)
    return stats


def _task_label(task: Any, index: int) -> str:
    """How messages name a task: "task 12" (its Label Studio id), else "tasks[3]"."""
    task_id = task.get("id") if isinstance(task, Mapping) else None
    return f"task {task_id}" if is_id(task_id) else f"tasks[{index}]"


def _count(counts: dict[str, int], reason: str) -> None:
    counts[reason] = counts.get(reason, 0) + 1


def _convert_task(task: Any, stats: ImportStats) -> _Task | None:
    """A task's image and the regions of its latest non-cancelled annotation; None when it has none."""
    if not isinstance(task, Mapping):
        raise _TaskProblem(f"expected an object, got {type(task).__name__}")
    data = task.get("data")
    if not isinstance(data, Mapping):
        raise _TaskProblem("missing 'data' object")
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        raise _TaskProblem(f"'annotations' must be a list, got {type(annotations).__name__}")
    kept = [(k, a) for k, a in enumerate(annotations) if isinstance(a, Mapping) and not a.get("was_cancelled")]
    if not kept:
        _count(stats.skipped, "every annotation cancelled" if annotations else "not annotated")
        return None
    index, annotation = max(kept, key=lambda item: _recency(item[1], item[0]))
    where = f"annotation {annotation.get('id', index)}"
    results = annotation.get("result", [])
    if not isinstance(results, list):
        raise _TaskProblem(f"{where}: 'result' must be a list, got {type(results).__name__}")
    size = _image_size(data, results, where)
    if size is None:
        _count(stats.skipped, "no image size (no data.width/height and no region)")
        return None
    width, height = size
    regions = []
    for k, result in enumerate(results):
        kind = str(result.get("type", "")).lower() if isinstance(result, Mapping) else ""
        if kind not in KINDS:
            _count(stats.ignored, f"{kind or 'untyped'} results")
            continue
        try:
            region = read_region(result, width, height)
        except FormatProblem as err:
            raise _TaskProblem(f"{where}: result {k}{_region_id(result)}: {err}") from None
        if region is None:
            _count(stats.ignored, "regions covering no pixel")
        elif not region.phrases:
            _count(stats.ignored, "regions without a label")
        else:
            regions.append(region)
    return _task_image(task, data, width, height, regions)


def _region_id(result: Mapping[str, Any]) -> str:
    region_id = result.get("id")
    return f" (id {region_id!r})" if isinstance(region_id, str) else ""


def _recency(annotation: Mapping[str, Any], index: int) -> tuple:
    """Sort key of an annotation: its last change, then its id, then its place in the list."""
    stamp = _time(annotation.get("updated_at")) or _time(annotation.get("created_at"))
    ann_id = annotation.get("id")
    return (stamp is not None, stamp or datetime.min.replace(tzinfo=timezone.utc),
            ann_id if is_int(ann_id) else -1, index)  # fmt: skip


def _time(value: Any) -> datetime | None:
    """An ISO 8601 time (naive ones taken as UTC), None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=timezone.utc)


def _image_size(data: Mapping[str, Any], results: list, where: str) -> tuple[int, int] | None:
    """(width, height): the task data's, else the first region's; None when neither says."""
    w, h = data.get("width"), data.get("height")
    if w is not None or h is not None:
        if not (is_int(w) and is_int(h) and w > 0 and h > 0):
            raise _TaskProblem(f"data width/height must be positive integers, got {w!r} x {h!r}")
        return w, h
    for k, result in enumerate(results):
        if isinstance(result, Mapping) and str(result.get("type", "")).lower() in KINDS:
            try:
                size = result_size(result)
            except FormatProblem as err:
                raise _TaskProblem(f"{where}: result {k}{_region_id(result)}: {err}") from None
            if size is not None:
                return size
    return None


def _task_image(task: Mapping[str, Any], data: Mapping[str, Any], width: int, height: int,
                regions: list[Region]) -> _Task:  # fmt: skip
    """The task's image identity (file name, ids, phrases), from what the export put in `data`."""
    file_name = data.get("file_name")
    if file_name is None:
        file_name = _file_from_url(data.get("image"))
    if not isinstance(file_name, str) or not file_name.strip():
        raise _TaskProblem(f"no usable file name (data.file_name or data.image), got {file_name!r}")
    image_id = data.get("image_id", task.get("id"))
    if image_id is not None and not is_id(image_id):
        raise _TaskProblem(f"data.image_id must be an integer or a string, got {image_id!r}")
    phrases = _phrase_list(data.get("phrases", []))
    ids: dict[str, Any] = {}
    for key in ("category_ids", "pair_ids"):
        given = data.get(key, {})
        if not isinstance(given, Mapping) or not all(is_id(v) for v in given.values()):
            raise _TaskProblem(f"data.{key} must map phrases to integer or string ids, got {given!r:.80}")
        ids.update({_phrase(k): v for k, v in given.items()})
    source = data.get("source_format")
    for region in regions:
        phrases += [p for p in region.phrases if p not in phrases]
    return _Task(file_name, image_id, width, height, phrases, ids, source if isinstance(source, str) else None,
                 set(_phrase_list(data.get("non_exhaustive", []))), regions)  # fmt: skip


def _phrase(text: Any) -> str:
    try:
        return check_phrase(text)
    except FormatProblem as err:
        raise _TaskProblem(f"data: {err}") from None


def _phrase_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise _TaskProblem(f"data phrases must be a list, got {type(value).__name__}")
    return list(dict.fromkeys(_phrase(p) for p in value))


def _file_from_url(url: Any) -> str | None:
    """A file name from a task's image URL: a local-files URL's `d`, else the URL's path (no leading /)."""
    if not isinstance(url, str) or not url.strip():
        return None
    if url.startswith(LOCAL_FILES.split("?")[0]):
        found = parse_qs(urlparse(url).query).get("d")
        return found[0] if found else None
    return unquote(urlparse(url).path).lstrip("/") or None


def _check_unique(task: _Task, label: str, seen: dict[Any, str]) -> None:
    """Two tasks of one image would give it two sets of labels: refuse the second."""
    for key in (("file", os.path.normpath(task.file_name)), ("id", task.image_id)):
        if key[1] is not None and key in seen:
            what = "file_name" if key[0] == "file" else "image_id"
            raise _TaskProblem(f"{what} {key[1]!r} is also {seen[key]}'s; import each image once")
    for key in (("file", os.path.normpath(task.file_name)), ("id", task.image_id)):
        seen[key] = label


def _new_ids(used: list[Any]) -> Iterator[int]:
    """A generator of fresh integer ids after the largest integer id in `used`."""
    start = max((v for v in used if is_int(v)), default=0) + 1
    while True:
        yield start
        start += 1


def _write_coco(out: Path, tasks: list[_Task], with_masks: bool, stats: ImportStats) -> tuple[int, int]:
    """COCO: one image per task, the phrases as categories (their exported ids kept)."""
    categories: dict[str, Any] = {}
    for task in tasks:
        if task.source_format in (None, "coco"):
            for phrase, cid in task.ids.items():
                categories.setdefault(phrase, cid)
    fresh = _new_ids(list(categories.values()))
    for task in tasks:
        for phrase in task.phrases:
            if phrase not in categories:
                categories[phrase] = next(fresh)
    by_id: dict[Any, str] = {}
    for phrase, cid in categories.items():
        if cid in by_id:
            raise DatasetError(f"{out}: category id {cid!r} is given to both {by_id[cid]!r} and {phrase!r} in the "
                               "tasks' data.category_ids")  # fmt: skip
        by_id[cid] = phrase
    image_ids = _new_ids([t.image_id for t in tasks])
    images, annotations = [], []
    for task in tasks:
        image_id = task.image_id if task.image_id is not None else next(image_ids)
        images.append({"id": image_id, "file_name": task.file_name, "width": task.width, "height": task.height})
        for region, phrase, entry in _instances(task, with_masks, stats):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": categories[phrase], **entry})  # fmt: skip
    cats = [{"id": cid, "name": phrase} for cid, phrase in sorted(by_id.items(), key=lambda c: id_sort_key(c[0]))]
    write_json_dataset(out, coco_json(images, annotations, cats))
    return len(images), len(annotations)


def _write_saco(out: Path, tasks: list[_Task], with_masks: bool, stats: ImportStats) -> tuple[int, int]:
    """SA-Co: one pair per (task, phrase asked), negatives included; boxes and areas normalised."""
    own = [t.ids.get(p) if t.source_format == "saco" else None for t in tasks for p in t.phrases]
    fresh = _new_ids([v for v in own if v is not None])
    pairs, annotations, used = [], [], set()
    for task in tasks:
        pair_of = {}
        for phrase in task.phrases:
            pid = task.ids.get(phrase) if task.source_format == "saco" else None
            if pid is None or pid in used:
                pid = next(fresh)
            used.add(pid)
            pair_of[phrase] = pid
            pairs.append({"id": pid, "file_name": task.file_name, "height": task.height, "width": task.width,
                          "text_input": phrase, "is_instance_exhaustive": phrase not in task.non_exhaustive})
        for region, phrase, entry in _instances(task, with_masks, stats):
            annotations.append(saco_annotation(len(annotations) + 1, pair_of[phrase], entry["bbox"], task.width,
                                               task.height, entry["area"], entry.get("segmentation")))
    write_json_dataset(out, saco_json(pairs, annotations))
    return len({os.path.normpath(t.file_name) for t in tasks}), len(annotations)


def _instances(task: _Task, with_masks: bool, stats: ImportStats) -> Iterator[tuple[Region, str, dict[str, Any]]]:
    """(region, phrase, COCO annotation fields in pixels) of every labelled region of a task."""
    for region in task.regions:
        entry: dict[str, Any] = {"bbox": [round(v, 2) for v in region.box_xywh_px], "iscrowd": 0}
        if with_masks:
            rle = region.rle(task.height, task.width)
            area = mask_area(rle)
            if area == 0:
                _count(stats.ignored, "regions covering no pixel")
                continue
            entry.update(segmentation=rle, area=int(area))
        else:
            entry["area"] = round(region.box_xywh_px[2] * region.box_xywh_px[3], 2)
        for phrase in region.phrases:
            yield region, phrase, dict(entry)
