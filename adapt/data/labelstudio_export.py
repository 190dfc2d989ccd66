"""Export a COCO or SA-Co dataset (or predictions on it) as Label Studio tasks with pre-annotations.

One task per image. Its `data` holds the image reference Label Studio shows (`image`) and what the import needs
to map the task back (`labelstudio_import`): `file_name`, `width`, `height`, `phrases` (every phrase asked of the
image, negatives included), `source_format`, and the original ids: COCO `image_id` and `category_ids`
(phrase -> category id), SA-Co `pair_ids` (phrase -> pair id) and `non_exhaustive` (phrases whose pair has
`is_instance_exhaustive: false`).

Its instances (or, with `predictions`, the predictions on it, with their scores) are one Label Studio
prediction, shown as pre-annotations to correct: a mask as a `brushlabels` region, a box-only instance as a
`rectanglelabels` region. `as_annotations` writes them as an annotation instead (labels to review, not a model's
guess). The labelling config (`label_config`) is written next to the tasks: paste it into the project's
Settings > Labeling Interface.

The image reference is, in order of preference: `/data/local-files/?d=<path>` with the image's path relative to
`local_files_root` (Label Studio's LOCAL_FILES_DOCUMENT_ROOT); `image_prefix` + the file name (URL-quoted); or
the file name as given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from sam3_model.atomic import atomic_write_text
from sam3_model.errors import ConfigError, DatasetError
from sam3_model.formats import CategoryRules, check_phrase, detect_format, gc_paused, read_json, write_json_dataset
from sam3_model.records import decode_mask

from .annotations import AnnotationProblem, is_number, segmentation_to_rle
from .coco_reader import read_coco_json
from .labelstudio_regions import BOX_NAME, BRUSH_NAME, POLYGON_NAME, TO_NAME, brush_result, rectangle_result
from .problems import resolve_problems
from .records import DatasetProblem, ImageSample
from .saco_reader import read_saco_json

LOCAL_FILES = "/data/local-files/?d="  # Label Studio's URL of a file under LOCAL_FILES_DOCUMENT_ROOT
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe",
           "#008080", "#e6beff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075")  # fmt: skip


@dataclass
class ExportStats:
    """What an export wrote and left out."""

    tasks: int
    regions: int
    phrases: list[str]
    label_config: Path
    skipped: int = 0  # images left out of the dataset for a problem (on_error "skip")
    problems: list[DatasetProblem] = field(default_factory=list)
    below_score: int = 0  # predictions under min_score
    unmatched: int = 0  # predictions on images left out, or whose phrase is not one of the dataset's
    notes: list[str] = field(default_factory=list)


@dataclass
class _Image:
    """One task's image: the read sample and its ids in the source file."""

    sample: ImageSample
    file_name: str
    image_id: Any = None  # COCO image id
    ids: dict[str, Any] = field(default_factory=dict)  # phrase -> category id (COCO) or pair id (SA-Co)
    non_exhaustive: list[str] = field(default_factory=list)
    regions: list[tuple[str, Any, float | None]] = field(default_factory=list)  # (phrase, RLE or box, score)

    def phrases(self) -> list[str]:
        """Every phrase asked of the image, negatives included."""
        return [p.phrase for p in self.sample.phrases]


def export_tasks(dataset: str | os.PathLike[str], out: str | os.PathLike[str],
                 label_config: str | os.PathLike[str] | None = None, images: str | os.PathLike[str] | None = None,
                 format: str = "auto", local_files_root: str | os.PathLike[str] | None = None,
                 image_prefix: str | None = None, predictions: str | os.PathLike[str] | None = None,
                 min_score: float = 0.0, as_annotations: bool = False, model_version: str | None = None,
                 rectangles: bool = True, polygons: bool = False, on_error: str = "stop") -> ExportStats:  # fmt: skip
    """Write Label Studio tasks (JSON) with the dataset's instances or `predictions` as pre-annotations, and the
    labelling config (XML, default: the tasks' path with .xml)."""
    if local_files_root is not None and image_prefix is not None:
        raise ConfigError("give --local_files_root or --image_prefix, not both")
    if not is_number(min_score) or not 0 <= min_score <= 1:
        raise ConfigError(f"min_score must lie in [0, 1], got {min_score!r}")
    resolve_problems([], on_error, "convert")  # checks on_error before the work
    dataset, out = Path(dataset), Path(out)
    config_path = Path(label_config) if label_config is not None else out.with_suffix(".xml")
    with gc_paused():
        data = read_json(dataset, "dataset annotation")
    fmt = detect_format(data, str(dataset)) if format == "auto" else format
    if fmt not in ("coco", "saco"):
        raise ConfigError(f"format must be one of auto, coco, saco, got {format!r}")
    root = Path(images if images is not None else dataset.parent).resolve()
    if fmt == "coco":
        result = read_coco_json(data, dataset, root, None, CategoryRules())
    else:
        result = read_saco_json(data, dataset, root, None)
    skipped = resolve_problems(result.problems, on_error, f"convert {dataset}")
    tasks_of = _images(data, fmt, result.samples)
    stats = ExportStats(0, 0, [], config_path, skipped, list(result.problems), notes=list(result.notes))
    if predictions is not None:
        _attach_predictions(Path(predictions), fmt, tasks_of, min_score, stats)
    else:
        _attach_instances(tasks_of)
    has_boxes = any(isinstance(g, np.ndarray) for t in tasks_of.values() for _, g, _ in t.regions)
    version = model_version or (Path(predictions).stem if predictions is not None else dataset.stem)
    tasks = []
    for image in tasks_of.values():
        tasks.append(_task(image, fmt, _image_url(image, root, local_files_root, image_prefix), version,
                           as_annotations))  # fmt: skip
        stats.regions += len(image.regions)
    phrases = list(dict.fromkeys(p for t in tasks_of.values() for p in t.phrases()))
    write_json_dataset(out, tasks)
    atomic_write_text(config_path, label_config_xml(phrases, rectangles or has_boxes, polygons))
    stats.tasks, stats.phrases = len(tasks), phrases
    return stats


def _images(data: Mapping[str, Any], fmt: str, samples: Sequence[ImageSample]) -> dict[Any, _Image]:
    """The read samples (key: their `image_id`), with the file names and ids of the source file."""
    out: dict[Any, _Image] = {}
    if fmt == "coco":
        entries = {img["id"]: img for img in data["images"] if isinstance(img, Mapping) and "id" in img}
        names = {c["id"]: c["name"] for c in data["categories"] if isinstance(c, Mapping)}
        ids_by_name = {name: cid for cid, name in names.items()}
        for sample in samples:
            ids = {p.phrase: ids_by_name[p.phrase] for p in sample.phrases if p.phrase in ids_by_name}
            out[sample.image_id] = _Image(sample, entries[sample.image_id]["file_name"], sample.image_id, ids)
        return out
    pairs: dict[str, dict[str, Mapping[str, Any]]] = {}  # file key -> phrase -> pair entry
    for pair in data["images"]:
        try:
            key, phrase = os.path.normpath(pair["file_name"]), check_phrase(pair["text_input"])
        except (TypeError, KeyError, ValueError):
            continue  # a bad pair: its image is not among the samples
        pairs.setdefault(key, {}).setdefault(phrase, pair)
    for sample in samples:
        own = pairs[sample.image_id]
        first = next(iter(own.values()))
        out[sample.image_id] = _Image(sample, first["file_name"], None, {p: e["id"] for p, e in own.items()},
                                      [p.phrase for p in sample.phrases if not p.exhaustive])  # fmt: skip
    return out


def _attach_instances(images: Mapping[Any, _Image]) -> None:
    """Each image's instances as regions: masks (RLE) or, box-only, pixel boxes."""
    for image in images.values():
        for phrase in image.sample.phrases:
            geometry = phrase.masks if phrase.masks is not None else list(phrase.boxes_xywh_px)
            image.regions += [(phrase.phrase, g, None) for g in geometry]


def _attach_predictions(path: Path, fmt: str, images: Mapping[Any, _Image], min_score: float,
                        stats: ExportStats) -> None:  # fmt: skip
    """Predictions (COCO results, joined by file name and phrase, or by id) as regions with their scores."""
    from adapt.evaluation.join import join_predictions

    index = _truth_index(fmt, images)
    with gc_paused():
        preds = read_json(path, "predictions")
    joined, report = join_predictions(preds, index, str(path))
    stats.notes += report.notes
    stats.unmatched += report.dropped_phrase
    where_of = {}  # truth id -> (image key, phrase)
    for key, image in images.items():
        for phrase, pid in image.ids.items():
            where_of[pid if fmt == "saco" else (key, pid)] = (key, phrase)
    for i, entry in enumerate(joined):
        where = f"{path}: entry {i}"
        if not isinstance(entry, Mapping):
            raise DatasetError(f"{where}: expected an object, got {type(entry).__name__}")
        score = entry.get("score", 1.0)
        if not is_number(score) or not 0 <= score <= 1:
            raise DatasetError(f"{where}: score must be a number in [0, 1], got {score!r}")
        target = _target(entry, fmt, index, where_of)
        if target is None:
            stats.unmatched += 1
            continue
        if score < min_score:
            stats.below_score += 1
            continue
        image = images[target[0]]
        image.regions.append((target[1], _geometry(entry, image.sample, fmt, where), float(score)))


def _truth_index(fmt: str, images: Mapping[Any, _Image]) -> Any:
    """What `join_predictions` needs of the dataset: ids -> file names, sizes (and SA-Co phrases)."""
    from adapt.evaluation.join import TruthIndex

    index = TruthIndex(fmt)
    for image in images.values():
        size = (image.sample.height, image.sample.width)
        if fmt == "coco":
            index.file_of[image.image_id], index.size_of[image.image_id] = image.file_name, size
            index.category_names.update({cid: phrase for phrase, cid in image.ids.items()})
            continue
        for phrase, pid in image.ids.items():
            index.file_of[pid], index.size_of[pid], index.phrase_of[pid] = image.file_name, size, phrase
    return index


def _target(entry: Mapping[str, Any], fmt: str, index: Any,
            where_of: Mapping[Any, tuple[Any, str]]) -> tuple[Any, str] | None:  # fmt: skip
    """(image key, phrase) of a joined prediction; None when its image was left out or its phrase is unknown."""
    image_id = entry.get("image_id")
    if fmt == "saco":
        return where_of.get(image_id) if _hashable(image_id) else None
    category = entry.get("category_id")
    if not (_hashable(image_id) and image_id in index.file_of):
        return None
    if not (_hashable(category) and category in index.category_names):
        return None
    return where_of.get((image_id, category))


def _hashable(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _geometry(entry: Mapping[str, Any], sample: ImageSample, fmt: str, where: str) -> Any:
    """A prediction's mask (RLE) or, without a segmentation, its pixel box (SA-Co boxes are normalised)."""
    try:
        if entry.get("segmentation") is not None:
            return segmentation_to_rle(entry["segmentation"], sample.height, sample.width)
        box = entry.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
            raise AnnotationProblem(f"needs a segmentation or a bbox [x, y, w, h], got bbox {box!r}")
    except AnnotationProblem as err:
        raise DatasetError(f"{where}: {err}") from None
    scale = np.array([sample.width, sample.height] * 2, np.float64) if fmt == "saco" else 1.0
    return np.asarray(box, np.float64) * scale


def _image_url(image: _Image, root: Path, local_files_root: str | os.PathLike[str] | None,
               prefix: str | None) -> str:  # fmt: skip
    """What the task's `image` holds: a local-files URL, the prefixed file name, or the file name as given."""
    if local_files_root is not None:
        base = os.path.realpath(local_files_root)
        rel = os.path.relpath(os.path.abspath(image.sample.image_path), base)
        if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
            raise ConfigError(f"{image.sample.image_path}: not under --local_files_root {base} (Label Studio serves "
                              "local files only below its LOCAL_FILES_DOCUMENT_ROOT)")  # fmt: skip
        return LOCAL_FILES + quote(Path(rel).as_posix(), safe="/")
    if prefix is not None:
        return prefix + quote(Path(image.file_name).as_posix(), safe="/")
    return image.file_name


def _task(image: _Image, fmt: str, url: str, version: str, as_annotations: bool) -> dict[str, Any]:
    """One Label Studio task: data (image, ids) and the regions as a prediction or an annotation."""
    sample = image.sample
    data: dict[str, Any] = {"image": url, "file_name": image.file_name, "width": sample.width,
                            "height": sample.height, "phrases": image.phrases(), "source_format": fmt}
    if fmt == "coco":
        data.update(image_id=image.image_id, category_ids=image.ids)
    else:
        data["pair_ids"] = image.ids
        if image.non_exhaustive:
            data["non_exhaustive"] = image.non_exhaustive
    results = []
    for k, (phrase, geometry, score) in enumerate(image.regions):
        region_id = f"r{k}"
        if isinstance(geometry, np.ndarray):
            results.append(rectangle_result(geometry, sample.width, sample.height, phrase, region_id, score))
        else:
            results.append(brush_result(decode_mask(geometry), phrase, region_id, score))
    if as_annotations:
        return {"data": data, "annotations": [{"result": results, "ground_truth": False}]}
    prediction: dict[str, Any] = {"model_version": version, "result": results}
    scores = [s for _, _, s in image.regions if s is not None]
    if scores:
        prediction["score"] = round(float(np.mean(scores)), 4)
    return {"data": data, "predictions": [prediction]}


def label_config_xml(phrases: Sequence[str], rectangles: bool = True, polygons: bool = False) -> str:
    """The labelling config: the image, a brush label per phrase (and rectangle, polygon labels)."""
    labels = "".join(f'\n    <Label value={quoteattr(p)} background="{PALETTE[k % len(PALETTE)]}"/>'
                     for k, p in enumerate(phrases))  # fmt: skip
    tags = [("BrushLabels", BRUSH_NAME, True), ("RectangleLabels", BOX_NAME, rectangles),
            ("PolygonLabels", POLYGON_NAME, polygons)]  # fmt: skip
    body = "".join(f'\n  <{tag} name="{name}" toName="{TO_NAME}">{labels}\n  </{tag}>' for tag, name, on in tags if on)
    return f'<View>\n  <Image name="{TO_NAME}" value="$image" zoom="true"/>{body}\n</View>\n'
