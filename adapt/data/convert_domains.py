"""Converters from public datasets' native layouts to the COCO instance file the readers take.

* `convert_binary_masks` (medical: Kvasir-SEG, ISIC 2018 Task 1): an image folder and a folder of binary masks
  (same relative stem plus an optional suffix such as `_segmentation`, any image extension); a mask pixel above
  `threshold` is foreground. One class, named by `phrase`; one instance per 8-connected component.
* `convert_mvtec` (industrial: MVTec AD): `<root>/<category>/test/<defect>/NNN.png` with masks
  `<root>/<category>/ground_truth/<defect>/NNN_mask.png`; `test/good/` images have no mask and are kept with no
  instance, so every phrase is a negative for them. The phrase of a defect type comes from `phrase_template`
  (`{defect}` and `{category}`, underscores written as spaces).
* `convert_foodseg103` (food: FoodSeg103): class-index masks under `Images/ann_dir/<split>`, names from
  `category_id.txt` (0 background is left out); the work is `convert_semantic_masks`'.
* `convert_uecfoodpix` (food: UECFoodPix Complete): `<split>/img/*.jpg` with `<split>/mask/*.png` whose RED
  channel holds the class id; names from `category.txt`.

Every converter writes what `convert_semantic_masks` writes (RLE masks, pixel boxes, file_names relative to the
output's folder) and treats bad entries the same way (on_error "stop" raises naming them, "skip" counts them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sam3_model.errors import ConfigError, DatasetError

from .convert_semantic import (
    IMAGE_EXTENSIONS,
    ConversionProblem,
    ConversionStats,
    _components,
    check_unique_names,
    coco_image,
    convert_semantic_masks,
    list_images,
    read_image_size,
    write_coco,
)
from .problems import resolve_problems
from .records import DatasetProblem

# reads one image's masks, given its (width, height): {category index (0-based): binary mask}
MaskReader = Callable[[int, int], dict[int, np.ndarray]]


@dataclass
class _Item:
    """One image to convert and how to read its masks."""

    image: Path
    entry: str  # the image's name in problems
    read: MaskReader


def _build(items: Sequence[_Item], phrases: Sequence[str], out_json: Path, min_area: int, on_error: str,
           what: str) -> ConversionStats:  # fmt: skip
    """Write the COCO file of `items` (categories `phrases`, ids 1..K) and return what was written."""
    out_dir = out_json.parent.resolve()
    images, annotations, problems = [], [], []
    for item in items:
        try:
            width, height = read_image_size(item.image)
            masks = item.read(width, height)
        except ConversionProblem as err:
            problems.append(DatasetProblem(err.file, f"image {item.entry!r}", str(err), item.entry))
            continue
        image_id = len(images) + 1
        images.append(coco_image(image_id, item.image, out_dir, width, height))
        for index, binary in sorted(masks.items()):
            for rle, box, area in _components(binary, min_area):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": index + 1,
                                    "bbox": box, "area": area, "iscrowd": 0, "segmentation": rle})  # fmt: skip
    skipped = resolve_problems(problems, on_error, f"convert {what}")
    write_coco(out_json, images, annotations, [{"id": k, "name": p} for k, p in enumerate(phrases, start=1)])
    return ConversionStats(len(images), len(annotations), skipped, problems)


def _check_settings(min_area: int, threshold: int, on_error: str) -> None:
    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 1:
        raise ConfigError(f"min_area must be a positive number of pixels, got {min_area!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold < 255:
        raise ConfigError(f"threshold must be an integer in 0..254 (foreground: pixel > threshold), got {threshold!r}")
    resolve_problems([], on_error, "convert")  # checks on_error before the work


def _phrase(phrase: str) -> str:
    if not isinstance(phrase, str) or not phrase.strip():
        raise ConfigError(f"phrase must be a non-empty string, got {phrase!r}")
    return phrase.strip()


def _open_mask(path: Path, width: int, height: int, mode: str) -> np.ndarray:
    """A mask file converted to PIL `mode` ("L" or "RGB") as an array, checked against the image size."""
    if not path.is_file():
        raise ConversionProblem(path, f"no mask {path.name!r} for this image")
    try:
        with Image.open(path) as img:
            if img.size != (width, height):
                raise ConversionProblem(path, f"mask is {img.size[0]}x{img.size[1]}, the image is {width}x{height}")
            if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N") and mode == "L":
                return np.asarray(img).astype(np.int64)
            return np.asarray(img.convert(mode))
    except ConversionProblem:
        raise
    except Exception as err:  # noqa: BLE001 (PIL raises assorted types on bad files)
        raise ConversionProblem(path, f"mask does not decode ({type(err).__name__}: {err})") from None


def _binary(path: Path, width: int, height: int, threshold: int) -> np.ndarray:
    """A binary mask (grey, RGB or palette; JPEG noise is cut by `threshold`): pixel > threshold."""
    return _open_mask(path, width, height, "L") > threshold


# --------------------------------------------------------------------------------------------- binary masks


def convert_binary_masks(images_dir: str | os.PathLike[str], masks_dir: str | os.PathLike[str], phrase: str,
                         out_json: str | os.PathLike[str], mask_suffix: str = "", threshold: int = 127,
                         min_area: int = 1, on_error: str = "stop") -> ConversionStats:  # fmt: skip
    """One class `phrase`: each image's mask is `masks_dir/<rel stem><mask_suffix>.<any image extension>`."""
    phrase = _phrase(phrase)
    _check_settings(min_area, threshold, on_error)
    images_dir, masks_dir, out_json = Path(images_dir), Path(masks_dir), Path(out_json)
    if not masks_dir.is_dir():
        raise DatasetError(f"{masks_dir}: no such mask folder")
    image_paths = list_images(images_dir)
    if mask_suffix and images_dir.resolve() == masks_dir.resolve():  # masks beside the images: not images
        image_paths = [p for p in image_paths if not p.stem.endswith(mask_suffix)]

    def reader(image_path: Path) -> MaskReader:
        rel = image_path.relative_to(images_dir)
        stem = rel.parent / f"{rel.stem}{mask_suffix}"

        def read(width: int, height: int) -> dict[int, np.ndarray]:
            for ext in (".png", *(e for e in IMAGE_EXTENSIONS if e != ".png")):
                for candidate in (masks_dir / f"{stem}{ext}", masks_dir / f"{stem}{ext.upper()}"):
                    if candidate.is_file():
                        return {0: _binary(candidate, width, height, threshold)}
            raise ConversionProblem(masks_dir / stem, f"no mask '{stem.name}.*' for this image")

        return read

    items = [_Item(p, p.relative_to(images_dir).as_posix(), reader(p)) for p in image_paths]
    return _build(items, [phrase], out_json, min_area, on_error, str(images_dir))


# --------------------------------------------------------------------------------------------- MVTec AD


def mvtec_phrase(template: str, category: str, defect: str) -> str:
    """A defect type's phrase: the template with `{defect}`/`{category}`, underscores as spaces."""
    try:
        text = template.format(defect=defect.replace("_", " "), category=category.replace("_", " "))
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"phrase template {template!r}: only {{defect}} and {{category}} may be used ({err})") from None
    return _phrase(" ".join(text.split()))


def convert_mvtec(root: str | os.PathLike[str], out_json: str | os.PathLike[str],
                  categories: Sequence[str] | None = None, phrase_template: str = "{defect}",
                  include_good: bool = True, threshold: int = 127, min_area: int = 1,
                  on_error: str = "stop") -> ConversionStats:  # fmt: skip
    """MVTec AD's test split: one phrase per defect type, `good` images kept as negatives (no instance)."""
    _check_settings(min_area, threshold, on_error)
    root, out_json = Path(root), Path(out_json)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such MVTec AD folder")
    found = sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
    if categories:
        missing = [c for c in categories if c not in found]
        if missing:
            raise DatasetError(f"{root}: no category {missing[0]!r} (a folder with test/); found: "
                               f"{', '.join(found) or 'none'}")  # fmt: skip
        found = [c for c in found if c in categories]
    if not found:
        raise DatasetError(f"{root}: no MVTec AD categories (folders <category>/test/<defect>/)")
    phrases: list[str] = []
    items: list[_Item] = []
    for category in found:
        test = root / category / "test"
        for defect_dir in sorted(p for p in test.iterdir() if p.is_dir()):
            defect = defect_dir.name
            good = defect == "good"
            if good and not include_good:
                continue
            index = -1
            if not good:
                phrase = mvtec_phrase(phrase_template, category, defect)
                if phrase not in phrases:
                    phrases.append(phrase)
                index = phrases.index(phrase)
            for image in list_images(defect_dir):
                rel = image.relative_to(root).as_posix()
                mask = root / category / "ground_truth" / defect / f"{image.stem}_mask.png"
                items.append(_Item(image, rel, _mvtec_reader(None if good else mask, index, threshold)))
    if not items:
        raise DatasetError(f"{root}: no test images in {', '.join(found)}")
    return _build(items, phrases, out_json, min_area, on_error, str(root))


def _mvtec_reader(mask: Path | None, index: int, threshold: int) -> MaskReader:
    def read(width: int, height: int) -> dict[int, np.ndarray]:
        return {} if mask is None else {index: _binary(mask, width, height, threshold)}

    return read


# --------------------------------------------------------------------------------------------- food


def read_category_names(path: Path, skip: Sequence[int] = (0,)) -> dict[int, str]:
    """{id: name} from lines "<id> <name>" (tab or spaces; a header line such as "id name" is passed over)."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such class list")
    out: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.strip().split(None, 1)
        if not parts or not parts[0].isdigit():
            continue
        if len(parts) < 2:
            raise DatasetError(f"{path}: line {number}: expected '<id> <name>', got {line.strip()!r}")
        value = int(parts[0])
        if value in out:
            raise DatasetError(f"{path}: line {number}: id {value} is given twice")
        if value not in skip:
            out[value] = parts[1].strip()
    if not out:
        raise DatasetError(f"{path}: no '<id> <name>' lines")
    check_unique_names(list(out.values()), str(path))
    return out


def convert_foodseg103(root: str | os.PathLike[str], out_json: str | os.PathLike[str], split: str = "train",
                       min_area: int = 1, on_error: str = "stop") -> ConversionStats:  # fmt: skip
    """FoodSeg103: `Images/img_dir/<split>/*.jpg` with class-index masks `Images/ann_dir/<split>/*.png`."""
    root = Path(root)
    class_map = read_category_names(root / "category_id.txt")
    return convert_semantic_masks(root / "Images" / "img_dir" / split, root / "Images" / "ann_dir" / split,
                                  class_map, out_json, min_area=min_area, on_error=on_error)  # fmt: skip


def convert_uecfoodpix(root: str | os.PathLike[str], out_json: str | os.PathLike[str], split: str = "train",
                       min_area: int = 1, on_error: str = "stop") -> ConversionStats:  # fmt: skip
    """UECFoodPix Complete: `<split>/img/*.jpg` with `<split>/mask/*.png` (class id in the red channel)."""
    _check_settings(min_area, 127, on_error)
    root, out_json = Path(root), Path(out_json)
    class_map = read_category_names(root / "category.txt")
    images_dir, masks_dir = root / split / "img", root / split / "mask"
    if not masks_dir.is_dir():
        raise DatasetError(f"{masks_dir}: no such mask folder")
    values = list(class_map)

    def reader(rel: Path) -> MaskReader:
        def read(width: int, height: int) -> dict[int, np.ndarray]:
            red = _open_mask(masks_dir / rel.with_suffix(".png"), width, height, "RGB")[..., 0]
            return {k: red == value for k, value in enumerate(values)}

        return read

    items = [_Item(p, p.relative_to(images_dir).as_posix(), reader(p.relative_to(images_dir)))
             for p in list_images(images_dir)]  # fmt: skip
    return _build(items, list(class_map.values()), out_json, min_area, on_error, str(images_dir))
