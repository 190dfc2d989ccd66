"""Converters: semantic masks and YOLO labels into COCO instance files that `read_coco` takes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapt.data.coco_reader import read_coco
from sam3_adapt.cli import main
from adapt.data.convert_semantic import convert_semantic_masks, load_class_map
from adapt.data.convert_yolo import convert_yolo, load_names
from sam3_model.errors import ConfigError, DatasetError
from sam3_model.records import decode_mask

W, H = 12, 10


def _image(path: Path, w: int = W, h: int = H) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)
    return path


def _png_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)
    return path


def _blob(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


# --------------------------------------------------------------------------------------------- semantic


def _semantic_dataset(root: Path) -> tuple[list[np.ndarray], Path]:
    """Image a.jpg: two cat blobs (value 1), one dog blob (value 2), background 0 and an ignore region 255."""
    cat1, cat2, dog = _blob(1, 3, 1, 4), _blob(6, 9, 7, 11), _blob(1, 4, 8, 10)
    mask = cat1 * 1 + cat2 * 1 + dog * 2
    mask[8:10, 0:3] = 255
    _image(root / "images" / "a.jpg")
    _png_mask(root / "masks" / "a.png", mask)
    classes = root / "classes.yaml"
    classes.write_text("1: cat\n2: dog\n")
    return [cat1, cat2, dog], classes


def test_semantic_components_become_instances_and_read_back(tmp_path):
    (cat1, cat2, dog), classes = _semantic_dataset(tmp_path)
    out = tmp_path / "train.json"
    stats = convert_semantic_masks(tmp_path / "images", tmp_path / "masks", classes, out)
    assert (stats.images, stats.instances, stats.skipped, stats.problems) == (1, 3, 0, [])
    data = json.loads(out.read_text())
    assert data["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert data["images"] == [{"id": 1, "file_name": "images/a.jpg", "width": W, "height": H}]
    anns = data["annotations"]
    assert [(a["category_id"], a["bbox"], a["area"], a["iscrowd"]) for a in anns] == [
        (1, [1.0, 1.0, 3.0, 2.0], 6, 0), (1, [7.0, 6.0, 4.0, 3.0], 12, 0), (2, [8.0, 1.0, 2.0, 3.0], 6, 0)]
    for ann, blob in zip(anns, (cat1, cat2, dog)):
        assert isinstance(ann["segmentation"]["counts"], str)
        np.testing.assert_array_equal(decode_mask(ann["segmentation"]), blob)

    result = read_coco(out)
    assert result.problems == []
    (sample,) = result.samples
    assert sample.image_path == (tmp_path / "images" / "a.jpg").resolve()
    cat, dog_phrase = sample.phrases
    assert (cat.phrase, cat.num_instances, dog_phrase.phrase, dog_phrase.num_instances) == ("cat", 2, "dog", 1)
    np.testing.assert_array_equal(decode_mask(dog_phrase.masks[0]), dog)


def test_semantic_eight_connectivity_and_min_area(tmp_path):
    mask = np.zeros((H, W), np.uint8)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = 3  # diagonal neighbours: one instance of 3 pixels
    mask[7, 9] = 3  # alone: 1 pixel
    _image(tmp_path / "images" / "a.png")
    _png_mask(tmp_path / "masks" / "a.png", mask)
    out = tmp_path / "out.json"
    stats = convert_semantic_masks(tmp_path / "images", tmp_path / "masks", {3: "crack"}, out, min_area=2)
    assert stats.instances == 1
    (ann,) = json.loads(out.read_text())["annotations"]
    assert ann["area"] == 3 and ann["bbox"] == [0.0, 0.0, 3.0, 3.0]
    assert convert_semantic_masks(tmp_path / "images", tmp_path / "masks", {3: "crack"}, out).instances == 2


def test_semantic_problems_stop_or_skip(tmp_path):
    _, classes = _semantic_dataset(tmp_path)
    _image(tmp_path / "images" / "b.jpg")  # no mask
    _image(tmp_path / "images" / "c.jpg")
    _png_mask(tmp_path / "masks" / "c.png", np.zeros((H + 1, W), np.uint8))  # wrong size
    _image(tmp_path / "images" / "d.jpg")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "masks" / "d.png")  # RGB
    (tmp_path / "images" / "e.jpg").write_bytes(b"not an image")
    out = tmp_path / "train.json"
    with pytest.raises(DatasetError) as err:
        convert_semantic_masks(tmp_path / "images", tmp_path / "masks", classes, out)
    assert "4 bad entries" in str(err.value) and "no mask 'b.png' for this image" in str(err.value)
    assert not out.exists()  # nothing written on stop

    stats = convert_semantic_masks(tmp_path / "images", tmp_path / "masks", classes, out, on_error="skip")
    assert (stats.images, stats.instances, stats.skipped) == (1, 3, 4)
    by_entry = {p.entry: p for p in stats.problems}
    assert set(by_entry) == {"image 'b.jpg'", "image 'c.jpg'", "image 'd.jpg'", "image 'e.jpg'"}
    assert by_entry["image 'b.jpg'"].file == str(tmp_path / "masks" / "b.png")
    assert "mask is 12x11, the image is 12x10" in by_entry["image 'c.jpg'"].message
    assert "mode RGB" in by_entry["image 'd.jpg'"].message
    assert by_entry["image 'e.jpg'"].file == str(tmp_path / "images" / "e.jpg")
    assert "does not open" in by_entry["image 'e.jpg'"].message
    assert [img["file_name"] for img in json.loads(out.read_text())["images"]] == ["images/a.jpg"]


def test_semantic_bad_settings(tmp_path):
    _, classes = _semantic_dataset(tmp_path)
    with pytest.raises(ConfigError, match="must be in the images' folder or above it"):
        convert_semantic_masks(tmp_path / "images", tmp_path / "masks", classes, tmp_path / "elsewhere" / "o.json")
    with pytest.raises(ConfigError, match="min_area"):
        convert_semantic_masks(tmp_path / "images", tmp_path / "masks", classes, tmp_path / "o.json", min_area=0)
    with pytest.raises(ConfigError, match="'bg' is not a pixel value"):
        load_class_map({"bg": "background"})
    with pytest.raises(ConfigError, match="'cat' is given twice"):
        load_class_map({1: "cat", 2: "cat"})
    json_map = tmp_path / "classes.json"
    json_map.write_text('{"classes": {"1": "cat", "7": "dog"}}')
    assert load_class_map(json_map) == {1: "cat", 7: "dog"}


# --------------------------------------------------------------------------------------------- YOLO

YW, YH = 20, 10


def _yolo_dataset(root: Path, labels: dict[str, str]) -> Path:
    """Images a.png, b.png (20x10), the given label files, and a data.yaml with names {0: cat, 1: dog}."""
    for name in ("a", "b"):
        _image(root / "images" / f"{name}.png", YW, YH)
    (root / "labels").mkdir()
    for name, text in labels.items():
        (root / "labels" / f"{name}.txt").write_text(text)
    data_yaml = root / "data.yaml"
    data_yaml.write_text("path: .\ntrain: images\nnames:\n  0: cat\n  1: dog\n")
    return data_yaml


def test_yolo_polygons_to_pixel_boxes_and_read_back(tmp_path):
    names = _yolo_dataset(tmp_path, {"a": "0 0.1 0.2 0.5 0.2 0.5 0.8 0.1 0.8\n\n1 0.75 0.5 0.5 1.0\n"})
    out = tmp_path / "train.json"
    stats = convert_yolo(tmp_path / "images", tmp_path / "labels", names, out)
    assert (stats.images, stats.instances, stats.skipped) == (2, 2, 0)
    data = json.loads(out.read_text())
    assert data["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    cat, dog = data["annotations"]
    assert cat["bbox"] == [2.0, 2.0, 8.0, 6.0] and cat["segmentation"] == [[2.0, 2.0, 10.0, 2.0, 10.0, 8.0, 2.0, 8.0]]
    assert cat["area"] == 48
    # a box line in a dataset with polygons becomes its rectangle polygon
    assert dog["bbox"] == [10.0, 0.0, 10.0, 10.0] and dog["segmentation"] == [[10.0, 0.0, 20.0, 0.0, 20.0, 10.0,
                                                                                 10.0, 10.0]]  # fmt: skip

    result = read_coco(out)
    assert result.problems == []
    a, b = result.samples
    np.testing.assert_array_equal(a.phrases[0].boxes_xywh_px, [[2, 2, 8, 6]])
    expected = np.zeros((YH, YW), np.uint8)
    expected[2:8, 2:10] = 1
    np.testing.assert_array_equal(decode_mask(a.phrases[0].masks[0]), expected)
    assert [(p.phrase, p.num_instances) for p in b.phrases] == [("cat", 0), ("dog", 0)]  # no label file: negatives


def test_yolo_box_only_and_tolerance(tmp_path):
    _yolo_dataset(tmp_path, {"a": "1 0.5 0.5 0.5 0.5\n0 0.5 0.52 1.04 1.0\n"})  # 2nd sticks out 0.4 px: clipped
    out = tmp_path / "train.json"
    stats = convert_yolo(tmp_path / "images", tmp_path / "labels", ["cat", "dog"], out)
    assert stats.instances == 2
    anns = json.loads(out.read_text())["annotations"]
    assert all("segmentation" not in a for a in anns)
    assert [a["bbox"] for a in anns] == [[5.0, 2.5, 10.0, 5.0], [0.0, 0.2, 20.0, 9.8]]
    (a, _) = read_coco(out).samples
    assert a.phrases[0].masks is None and a.phrases[1].num_instances == 1


@pytest.mark.parametrize("line, message", [
    ("2 0.1 0.1 0.4 0.1 0.4 0.4", "line 1: class index 2 is not in 0..1 (there are 2 names)"),
    ("x 0.1 0.1 0.4 0.1 0.4 0.4", "line 1: class index 'x' is not an integer"),
    ("0 0.1 0.1 0.4 0.1 0.4", "line 1: odd number of coordinates (5)"),
    ("0 0.1 0.1", "line 1: polygon has 1 points, needs at least 3"),
    ("0 0.1 0.1 1.3 0.1 0.4 0.4", "line 1: point (1.3, 0.1) is outside [0, 1] by more than 1 px"),
    ("0 0.1 0.1 0.2 0.1 0.3 0.1", "line 1: polygon has no area (its points lie on a line)"),
    ("0 0.1 0.1 0.2 0.2 0.3 0.3", "line 1: polygon covers no pixel"),  # on a diagonal: a box but no pixel
])
def test_yolo_bad_lines(tmp_path, line, message):
    names = _yolo_dataset(tmp_path, {"a": line + "\n", "b": "0 0.1 0.1 0.4 0.1 0.4 0.4\n"})
    out = tmp_path / "train.json"
    with pytest.raises(DatasetError, match="1 bad entries"):
        convert_yolo(tmp_path / "images", tmp_path / "labels", names, out)
    assert not out.exists()
    stats = convert_yolo(tmp_path / "images", tmp_path / "labels", names, out, on_error="skip")
    (problem,) = stats.problems
    assert (problem.file, problem.entry) == (str(tmp_path / "labels" / "a.txt"), "image 'a.png'")
    assert message in problem.message
    assert (stats.images, stats.skipped) == (1, 1)
    assert [s.image_path.name for s in read_coco(out).samples] == ["b.png"]


def test_yolo_unreadable_image_and_names(tmp_path):
    names = _yolo_dataset(tmp_path, {})
    (tmp_path / "images" / "c.png").write_bytes(b"\x89PNG broken")
    stats = convert_yolo(tmp_path / "images", tmp_path / "labels", names, tmp_path / "o.json", on_error="skip")
    (problem,) = stats.problems
    assert problem.file == str(tmp_path / "images" / "c.png") and "does not open" in problem.message
    assert load_names(["a", " b "]) == ["a", "b"]
    listed = tmp_path / "list.yaml"
    listed.write_text("names: [person, car]\n")
    assert load_names(listed) == ["person", "car"]
    with pytest.raises(ConfigError, match="indexed 0..1"):
        load_names({0: "a", 2: "b"})
    with pytest.raises(ConfigError, match="non-empty list"):
        load_names([])


# --------------------------------------------------------------------------------------------- CLI


def test_cli_convert_yolo_and_semantic(tmp_path, capsys):
    names = _yolo_dataset(tmp_path / "y", {"a": "0 0.1 0.2 0.5 0.2 0.5 0.8\n"})
    out = tmp_path / "y" / "train.json"
    assert main(["convert", "yolo", "--images", str(tmp_path / "y" / "images"),
                 "--labels", str(tmp_path / "y" / "labels"), "--names", str(names), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}: 2 images, 1 instances"

    _, classes = _semantic_dataset(tmp_path / "s")
    _image(tmp_path / "s" / "images" / "b.jpg")  # no mask: skipped
    out = tmp_path / "s" / "train.json"
    assert main(["convert", "semantic", "--images", str(tmp_path / "s" / "images"),
                 "--masks", str(tmp_path / "s" / "masks"), "--classes", str(classes),
                 "--out", str(out), "--min-area", "7", "--on-error", "skip"]) == 0  # the old spellings still work
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out}: 1 images, 1 instances; skipped 1 images with problems (first: ")
    assert "no mask 'b.png'" in line and "\n" not in line
