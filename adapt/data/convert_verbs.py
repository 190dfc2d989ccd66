"""`sam3-adapt convert KIND`: other label formats and public datasets' layouts -> a COCO instance file, and
Label Studio both ways (`labelstudio-tasks` out, `labelstudio` back).

Each function converts, then prints one line: what was written, and how many images were skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from .convert_semantic import ConversionStats

OnError = Literal["stop", "skip"]


def summary(stats: ConversionStats, out: Path) -> str:
    """One line: what was written, and how many images were skipped (with the first reason)."""
    line = f"wrote {out}: {stats.images} images, {stats.instances} instances"
    if stats.skipped:
        line += f"; skipped {stats.skipped} images with problems (first: {stats.problems[0]})"
    return line


def semantic(images: Path, masks: Path, classes: Path, out: Path, min_area: int = 1,
             on_error: OnError = "stop") -> None:
    """Class-index masks (PNG, VOC palette PNGs) -> one instance per connected component.

    Args:
        images: image folder.
        masks: mask folder (a PNG per image, same relative stem).
        classes: YAML/JSON map of pixel value to class name (`background` and `ignore` values left out).
        out: COCO JSON to write (in the image folder or above).
        min_area: drop components smaller than this many pixels.
        on_error: stop at bad images, or skip them (counted).
    """
    from .convert_semantic import convert_semantic_masks

    print(summary(convert_semantic_masks(images, masks, classes, out, min_area=min_area, on_error=on_error), out))


def yolo(images: Path, labels: Path, names: Path, out: Path, on_error: OnError = "stop") -> None:
    """YOLO segmentation (or detection) labels, as ultralytics writes them -> COCO instances.

    Args:
        images: image folder.
        labels: label folder (a .txt per image, same relative stem).
        names: YOLO data.yaml (its `names`: a list or a mapping).
        out: COCO JSON to write (in the image folder or above).
        on_error: stop at bad images, or skip them (counted).
    """
    from .convert_yolo import convert_yolo

    print(summary(convert_yolo(images, labels, names, out, on_error=on_error), out))


def binary_masks(root: Path, phrase: str, out: Path, images: str = "images", masks: str = "masks",
                 mask_suffix: str = "", threshold: int = 127, min_area: int = 1, on_error: OnError = "stop") -> None:
    """Images + binary masks (Kvasir-SEG, ISIC) -> one phrase, one instance per connected component.

    Args:
        root: dataset folder.
        phrase: the class name, e.g. 'polyp' or 'skin lesion'.
        out: COCO JSON to write (in the image folder or above).
        images: image folder, relative to root.
        masks: mask folder, relative to root.
        mask_suffix: mask stem = image stem + this (ISIC: _segmentation).
        threshold: foreground: mask pixel > this (0..254).
        min_area: drop components smaller than this many pixels.
        on_error: stop at bad images, or skip them (counted).
    """
    from .convert_domains import convert_binary_masks

    stats = convert_binary_masks(root / images, root / masks, phrase, out, mask_suffix=mask_suffix,
                                 threshold=threshold, min_area=min_area, on_error=on_error)
    print(summary(stats, out))


def mvtec(root: Path, out: Path, category: list[str] | None = None, phrase_template: str = "{defect}",
          no_good: bool = False, threshold: int = 127, min_area: int = 1, on_error: OnError = "stop") -> None:
    """MVTec AD test split -> one phrase per defect type; defect-free (good) images kept as negatives.

    Args:
        root: MVTec AD folder (holding <category>/test/).
        out: COCO JSON to write (in the image folder or above).
        category: only these categories (default: all).
        phrase_template: phrase of a defect type, from {defect} and {category} (underscores as spaces).
        no_good: leave out the test/good images (negatives).
        threshold: foreground: mask pixel > this (0..254).
        min_area: drop components smaller than this many pixels.
        on_error: stop at bad images, or skip them (counted).
    """
    from .convert_domains import convert_mvtec

    stats = convert_mvtec(root, out, categories=category, phrase_template=phrase_template, include_good=not no_good,
                          threshold=threshold, min_area=min_area, on_error=on_error)
    print(summary(stats, out))


def foodseg103(root: Path, out: Path, split: Literal["train", "test"] = "train", min_area: int = 1,
               on_error: OnError = "stop") -> None:
    """FoodSeg103 (Images/img_dir, Images/ann_dir, category_id.txt) -> one instance per connected component.

    Args:
        root: dataset folder.
        out: COCO JSON to write (in the image folder or above).
        split: train or test.
        min_area: drop components smaller than this many pixels.
        on_error: stop at bad images, or skip them (counted).
    """
    from .convert_domains import convert_foodseg103

    print(summary(convert_foodseg103(root, out, split=split, min_area=min_area, on_error=on_error), out))


def uecfoodpix(root: Path, out: Path, split: Literal["train", "test"] = "train", min_area: int = 1,
               on_error: OnError = "stop") -> None:
    """UECFoodPix Complete (<split>/img, <split>/mask red channel, category.txt) -> one instance per component.

    Args:
        root: dataset folder.
        out: COCO JSON to write (in the image folder or above).
        split: train or test.
        min_area: drop components smaller than this many pixels.
        on_error: stop at bad images, or skip them (counted).
    """
    from .convert_domains import convert_uecfoodpix

    print(summary(convert_uecfoodpix(root, out, split=split, min_area=min_area, on_error=on_error), out))


def labelstudio_tasks(dataset: Path, out: Path, label_config: Path | None = None, images: Path | None = None,
                      format: Literal["auto", "coco", "saco"] = "auto", local_files_root: Path | None = None,
                      image_prefix: str | None = None, predictions: Path | None = None, min_score: float = 0.0,
                      as_annotations: bool = False, model_version: str | None = None, rectangles: bool = True,
                      polygons: bool = False, on_error: OnError = "stop") -> None:  # fmt: skip
    """A COCO or SA-Co dataset (or predictions on it) -> Label Studio tasks with pre-annotations, and the
    labelling config to paste into the project.

    Args:
        dataset: COCO or SA-Co JSON (pl.json, syn.json, an HQ file, a training set).
        out: Label Studio tasks JSON to write (Import it in the project).
        label_config: labelling config XML to write (default: out with .xml).
        images: folder the dataset's file_names are relative to (default: the dataset's folder).
        format: dataset format (auto: SA-Co when images carry text_input).
        local_files_root: Label Studio's LOCAL_FILES_DOCUMENT_ROOT: images become /data/local-files/?d=<path
            below it> (needs LOCAL_FILES_SERVING_ENABLED=true and a Local files storage).
        image_prefix: else, prepended to each (URL-quoted) file_name, e.g. https://host/images/; neither: the
            file_name as given.
        predictions: COCO results on the dataset's images (`predict --gt`): pre-annotate these, with their
            scores, instead of the dataset's instances.
        min_score: leave out predictions scored below this.
        as_annotations: write the regions as annotations (to review) rather than predictions.
        model_version: the predictions' model_version (default: the predictions' or dataset's file stem).
        rectangles: add RectangleLabels to the labelling config (always when there are box-only instances).
        polygons: add PolygonLabels to the labelling config.
        on_error: stop at bad dataset entries, or skip their images (counted).
    """
    from .labelstudio_export import export_tasks

    stats = export_tasks(dataset, out, label_config, images, format, local_files_root, image_prefix, predictions,
                         min_score, as_annotations, model_version, rectangles, polygons, on_error)
    line = (f"wrote {out}: {stats.tasks} tasks, {stats.regions} regions, {len(stats.phrases)} phrases; labelling "
            f"config {stats.label_config}")
    if stats.skipped:
        line += f"; skipped {stats.skipped} images with problems (first: {stats.problems[0]})"
    if stats.below_score or stats.unmatched:
        line += f"; left out {stats.below_score} predictions below min_score, {stats.unmatched} on no task"
    for note in stats.notes:
        print(note, file=sys.stderr)
    print(line)


def labelstudio(export: Path, out: Path, to: Literal["auto", "coco", "saco"] = "auto",
                on_error: OnError = "stop") -> None:  # fmt: skip
    """Label Studio's JSON export (brush, rectangle and polygon labels) -> a COCO or SA-Co file.

    Args:
        export: the project's export (Export > JSON): a list of tasks with their annotations.
        out: COCO or SA-Co JSON to write; file_names are kept, so write it where the exported dataset was.
        to: output format (auto: the format the tasks were exported from, else COCO).
        on_error: stop at a bad task, or skip it (counted).
    """
    from .labelstudio_import import import_labelstudio

    stats = import_labelstudio(export, out, to, on_error)
    line = f"wrote {out} ({stats.format}): {stats.images} images, {stats.instances} instances from {stats.tasks} tasks"
    passed = [f"{n} {why}" for why, n in stats.skipped.items()]
    if stats.problems:
        passed.append(f"{len(stats.problems)} with problems (first: {stats.problems[0]})")
    if passed:
        line += f"; skipped tasks: {', '.join(passed)}"
    if stats.ignored:
        line += f"; passed over: {', '.join(f'{n} {why}' for why, n in stats.ignored.items())}"
    print(line)
