"""Dataset readers: COCO and SA-Co files into samples of phrases, every bad entry a named problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapt.data.annotations import AnnotationProblem, check_box_xywh_px, segmentation_to_rle
from adapt.data.coco_reader import read_coco
from adapt.data.problems import resolve_problems
from adapt.data.readers import FORMATS, read_dataset
from adapt.data.saco_reader import read_saco
from sam3_model.errors import ConfigError, DatasetError
from sam3_model.records import decode_mask, encode_mask

W, H = 20, 10


def _image(path: Path, w: int = W, h: int = H) -> Path:
    """A small image (PNG or JPEG by suffix) with some content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(w * h * 3).reshape(h, w, 3) % 251).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def _mask(x0: int, y0: int, x1: int, y1: int, h: int = H, w: int = W) -> np.ndarray:
    """A binary mask, ones on rows y0:y1 and columns x0:x1."""
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _uncompressed(mask: np.ndarray) -> dict:
    """A binary mask as uncompressed COCO RLE (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def _coco(tmp_path: Path, annotations: list[dict], images: list[dict] | None = None,
          categories: list[dict] | None = None, name: str = "train.json") -> Path:  # fmt: skip
    """A COCO file beside images a.png and b.png (20x10); categories dog (id 2) before cat (id 1) in the file."""
    if images is None:
        _image(tmp_path / "img" / "a.png")
        _image(tmp_path / "img" / "b.png")
        images = [{"id": 1, "file_name": "img/a.png", "width": W, "height": H},
                  {"id": 2, "file_name": "img/b.png", "width": W, "height": H}]  # fmt: skip
    if categories is None:
        categories = [{"id": 2, "name": "dog"}, {"id": 1, "name": "cat"}]
    return _write(tmp_path / name, {"images": images, "annotations": annotations, "categories": categories})


def _assert_resolves(problems: list, path: Path) -> None:
    """"stop" raises one DatasetError naming the count and each problem's file and entry; "skip" counts them."""
    with pytest.raises(DatasetError) as err:
        resolve_problems(problems, "stop", str(path))
    assert f"{len(problems)} bad entries" in str(err.value)
    assert all(str(p) in str(err.value) for p in problems)
    assert resolve_problems(problems, "skip", str(path)) == len(problems)


# --------------------------------------------------------------------------------------------- COCO


def test_coco_polygon_compressed_and_uncompressed_rle(tmp_path):
    cat_a, dog_a, cat_b = _mask(2, 1, 6, 5), _mask(10, 2, 15, 9), _mask(0, 0, 3, 10)
    path = _coco(tmp_path, [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 1, 4, 4], "segmentation": [[2, 1, 6, 1, 6, 5, 2, 5]]},
        {"id": 11, "image_id": 1, "category_id": 2, "bbox": [10, 2, 5, 7], "segmentation": encode_mask(dog_a)},
        {"id": 12, "image_id": 2, "category_id": 1, "bbox": [0, 0, 3, 10], "segmentation": _uncompressed(cat_b)},
    ])
    result = read_coco(path)
    assert result.problems == []
    a, b = result.samples
    assert (a.image_id, a.width, a.height, a.dataset) == (1, W, H, "train")
    assert a.image_path == (tmp_path / "img" / "a.png").resolve()
    assert [p.phrase for p in a.phrases] == ["cat", "dog"]  # category-id order, not file order
    np.testing.assert_array_equal(a.phrases[0].boxes_xywh_px, [[2, 1, 4, 4]])
    np.testing.assert_array_equal(decode_mask(a.phrases[0].masks[0]), cat_a)  # polygon corners (2, 1)-(6, 5)
    np.testing.assert_array_equal(decode_mask(a.phrases[1].masks[0]), dog_a)
    assert isinstance(a.phrases[1].masks[0]["counts"], str)
    np.testing.assert_array_equal(decode_mask(b.phrases[0].masks[0]), cat_b)
    assert isinstance(b.phrases[0].masks[0]["counts"], str)
    # dog is absent from b: a negative phrase, with an empty mask list (the dataset has masks)
    assert b.phrases[1].phrase == "dog" and b.phrases[1].num_instances == 0 and b.phrases[1].masks == []


def test_coco_box_only_every_category_on_every_image(tmp_path):
    path = _coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [8, 2, 4, 4], "segmentation": []},
    ])
    result = read_coco(path, name="mine")
    assert result.problems == []
    a, b = result.samples
    assert a.dataset == "mine"
    assert [(p.phrase, p.num_instances, p.masks) for p in a.phrases] == [("cat", 0, None), ("dog", 2, None)]
    assert [(p.phrase, p.num_instances) for p in b.phrases] == [("cat", 0), ("dog", 0)]
    assert a.phrases[1].boxes_xywh_px.dtype == np.float32


def test_coco_crowd_removed_and_phrase_stays_negative(tmp_path):
    path = _coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1,
         "segmentation": _uncompressed(_mask(1, 1, 6, 6))},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [8, 2, 4, 4]},
    ])
    result = read_coco(path)
    assert result.problems == []
    cat, dog = result.samples[0].phrases
    assert cat.num_instances == 0 and dog.num_instances == 1
    assert dog.masks is None  # the crowd's RLE does not make the dataset a masked one


def test_coco_box_within_one_pixel_is_clipped(tmp_path):
    path = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [-0.5, 0, 20.9, 10.5]}])
    result = read_coco(path)
    assert result.problems == []
    np.testing.assert_allclose(result.samples[0].phrases[0].boxes_xywh_px, [[0, 0, W, H]])


def test_coco_image_root_and_missing_segmentation(tmp_path):
    _image(tmp_path / "pics" / "a.png")
    images = [{"id": "x", "file_name": "a.png", "width": W, "height": H}]
    path = _coco(tmp_path, [
        {"id": 1, "image_id": "x", "category_id": 1, "bbox": [1, 1, 4, 4], "segmentation": [[1, 1, 5, 1, 5, 5]]},
        {"id": 2, "image_id": "x", "category_id": 1, "bbox": [6, 1, 4, 4]},
    ], images=images)
    result = read_coco(path, image_root=tmp_path / "pics")
    assert result.samples == []
    (problem,) = result.problems
    assert problem.entry == "annotations[1] (id 2)" and "missing 'segmentation'" in problem.message
    assert problem.image_id == "x"


BAD_ANNOTATIONS = {
    "box outside": ({"bbox": [15, 2, 8, 4]}, "outside the 20x10 image by more than 1 px"),
    "zero width": ({"bbox": [1, 1, 0, 4]}, "non-positive width or height"),
    "box not numbers": ({"bbox": [1, 1, "a", 4]}, "four finite numbers"),
    "empty polygon": ({"segmentation": [[]]}, "polygon 0 is empty"),
    "empty polygon list": ({"segmentation": []}, "empty polygon list"),
    "two points": ({"segmentation": [[1, 1, 4, 1]]}, "2 points, needs at least 3"),
    "odd coordinates": ({"segmentation": [[1, 1, 4, 1, 4]]}, "odd number of coordinates"),
    "RLE size mismatch": ({"segmentation": encode_mask(_mask(1, 1, 4, 4, h=12))},
                          "RLE size [12, 20] (height, width) disagrees with the image's [10, 20]"),
    "RLE corrupt": ({"segmentation": {"size": [H, W], "counts": "0?"}}, "corrupt"),
    "RLE short": ({"segmentation": {"size": [H, W], "counts": [0, 5]}}, "runs cover 5 pixels"),
    "unknown category": ({"category_id": 7}, "category_id 7 is not in 'categories'"),
    "bad iscrowd": ({"iscrowd": 2}, "iscrowd must be 0 or 1"),
    "missing category_id": ({"category_id": None}, "missing key 'category_id'"),
}


@pytest.mark.parametrize("case", BAD_ANNOTATIONS)
def test_coco_bad_annotation_drops_its_image(tmp_path, case):
    change, message = BAD_ANNOTATIONS[case]
    good = {"id": 5, "image_id": 2, "category_id": 1, "bbox": [1, 1, 3, 3], "segmentation": [[1, 1, 4, 1, 4, 4]]}
    bad = {"id": 57, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "segmentation": [[1, 1, 4, 1, 4, 4]],
           **change}  # fmt: skip
    bad = {k: v for k, v in bad.items() if v is not None}
    path = _coco(tmp_path, [good, bad])
    result = read_coco(path)
    (problem,) = result.problems
    assert problem.file == str(path)
    assert problem.entry == "annotations[1] (id 57)"
    assert message in problem.message
    assert problem.image_id == 1
    assert [s.image_id for s in result.samples] == [2]  # the whole image is left out, the other stays
    _assert_resolves(result.problems, path)


BAD_IMAGES = {
    "dot-dot": ({"file_name": "../a.png"}, "images[0] (file_name '../a.png')", "leads out of the image folder"),
    "dot-dot inside": ({"file_name": "img/../../a.png"}, "images[0] (file_name 'img/../../a.png')", "leads out"),
    "absolute": ({"file_name": "/etc/passwd"}, "images[0] (file_name '/etc/passwd')", "absolute path"),
    "missing keys": ({"width": None}, "images[0] (file_name 'img/a.png')", "missing key(s) 'width'"),
    "bad size": ({"height": 0}, "images[0] (file_name 'img/a.png')", "positive integers"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_coco_bad_image_entry(tmp_path, case):
    change, entry, message = BAD_IMAGES[case]
    _image(tmp_path / "img" / "a.png")
    _image(tmp_path / "img" / "b.png")
    first = {k: v for k, v in {"id": 1, "file_name": "img/a.png", "width": W, "height": H, **change}.items()
             if v is not None}  # fmt: skip
    images = [first, {"id": 2, "file_name": "img/b.png", "width": W, "height": H}]
    path = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]}], images=images)
    result = read_coco(path)
    (problem,) = result.problems
    assert (problem.file, problem.entry, problem.image_id) == (str(path), entry, 1)
    assert message in problem.message
    assert [s.image_id for s in result.samples] == [2]
    _assert_resolves(result.problems, path)


def test_coco_duplicate_and_unknown_image_ids(tmp_path):
    _image(tmp_path / "img" / "a.png")
    images = [{"id": 1, "file_name": "img/a.png", "width": W, "height": H},
              {"id": 1, "file_name": "img/a.png", "width": W, "height": H}]  # fmt: skip
    path = _coco(tmp_path, [{"id": 3, "image_id": 9, "category_id": 1, "bbox": [1, 1, 3, 3]}], images=images)
    result = read_coco(path)
    assert result.samples == []
    dup, unknown = result.problems
    assert dup.entry == "images[1] (file_name 'img/a.png')" and "duplicate image id 1 (also images[0])" in dup.message
    assert unknown.entry == "annotations[0] (id 3)" and "image_id 9 is not in 'images'" in unknown.message
    assert unknown.image_id is None


@pytest.mark.parametrize("data, message", [
    ({"images": [], "annotations": []}, "'categories' must be a list (missing)"),
    ({"images": {}, "annotations": [], "categories": []}, "'images' must be a list (a dict)"),
    ({"images": [], "annotations": [], "categories": [{"id": 1}]}, "categories[0]: a category needs 'id' and 'name'"),
    ({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]},
     "name 'a' is also category 1's"),
])
def test_coco_file_level_errors_raise(tmp_path, data, message):
    path = _write(tmp_path / "bad.json", data)
    with pytest.raises(DatasetError, match="bad.json") as err:
        read_coco(path)
    assert message in str(err.value)


def test_not_json_raises(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{ not json")
    with pytest.raises(DatasetError, match="x.json.*not valid JSON"):
        read_dataset(path)


def test_resolve_problems_stop_lists_them_and_skip_counts(tmp_path):
    path = _coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 3, 3]},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [19, 1, 8, 3]},
    ])
    result = read_coco(path)
    assert result.samples == [] and len(result.problems) == 2
    with pytest.raises(DatasetError) as err:
        resolve_problems(result.problems, "stop", str(path))
    text = str(err.value)
    assert "2 bad entries" in text
    assert f"{path}: annotations[0] (id 1): category_id 7" in text
    assert f"{path}: annotations[1] (id 2): bbox [19, 1, 8, 3]" in text
    assert resolve_problems(result.problems, "skip", str(path)) == 2


# --------------------------------------------------------------------------------------------- image files


def test_read_dataset_checks_image_files(tmp_path):
    _image(tmp_path / "ok.jpg")
    _image(tmp_path / "small.png", 8, 8)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    truncated = _image(tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(truncated[: len(truncated) // 2])
    names = ["ok.jpg", "missing.png", "broken.png", "small.png", "cut.jpg"]
    images = [{"id": i, "file_name": n, "width": W, "height": H} for i, n in enumerate(names, start=1)]
    path = _coco(tmp_path, [], images=images)
    result = read_dataset(path)
    assert [s.image_id for s in result.samples] == [1]
    by_id = {p.image_id: p for p in result.problems}
    assert set(by_id) == {2, 3, 4, 5}
    assert all(p.file == str(path) for p in result.problems)
    assert by_id[2].entry.startswith("image 2 (") and "missing.png" in by_id[2].entry
    assert "not found" in by_id[2].message
    assert "does not decode" in by_id[3].message
    assert "image is 8x8 (width x height), the annotation file says 20x10" in by_id[4].message
    assert "does not decode" in by_id[5].message
    _assert_resolves(result.problems, path)
    # without the check every entry is a sample
    assert len(read_dataset(path, check_image_files=False).samples) == 5


def test_read_dataset_format_detection(tmp_path):
    coco = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]}])
    saco = _saco(tmp_path, [])
    assert [p.phrase for p in read_dataset(coco).samples[0].phrases] == ["cat", "dog"]
    assert [p.phrase for p in read_dataset(saco).samples[0].phrases] == ["red car", "tree"]
    assert read_dataset(saco, format="saco", name="n").samples[0].dataset == "n"
    with pytest.raises(ConfigError, match="must be one of"):
        read_dataset(coco, format="yolo")
    assert FORMATS == ("auto", "coco", "saco")


# --------------------------------------------------------------------------------------------- SA-Co


def _saco(tmp_path: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    """An SA-Co file: pairs 1, 2 on a.png (red car, tree) and pair 3 on b.jpg (dog)."""
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.jpg")
    if images is None:
        images = [
            {"id": 1, "file_name": "a.png", "width": W, "height": H, "text_input": "red car"},
            {"id": 2, "file_name": "a.png", "width": W, "height": H, "text_input": "tree",
             "is_instance_exhaustive": False},
            {"id": 3, "file_name": "b.jpg", "width": W, "height": H, "text_input": "dog"},
        ]  # fmt: skip
    return _write(tmp_path / "saco.json", {"images": images, "annotations": annotations,
                                            "categories": [{"id": 1, "name": "object"}]})  # fmt: skip


def test_saco_groups_pairs_and_converts_normalised_boxes(tmp_path):
    car = _mask(2, 2, 6, 8)
    path = _saco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0.1, 0.2, 0.2, 0.6], "segmentation": encode_mask(car)},
        {"id": 2, "image_id": 3, "category_id": 1, "bbox": [0.5, 0.0, 0.5, 1.0],
         "segmentation": [[10, 0, 20, 0, 20, 10, 10, 10]]},
        {"id": 3, "image_id": 3, "category_id": 1, "bbox": [0, 0, 0.1, 0.1], "iscrowd": 1},
    ])
    result = read_saco(path)
    assert result.problems == []
    a, b = result.samples
    assert (a.image_id, a.dataset, a.image_path) == ("a.png", "saco", (tmp_path / "a.png").resolve())
    assert [(p.phrase, p.num_instances, p.exhaustive) for p in a.phrases] == [("red car", 1, True),
                                                                              ("tree", 0, False)]
    np.testing.assert_allclose(a.phrases[0].boxes_xywh_px, [[2, 2, 4, 6]], atol=1e-5)  # 0.1 * 20, 0.2 * 10, ...
    np.testing.assert_array_equal(decode_mask(a.phrases[0].masks[0]), car)
    assert a.phrases[1].masks == []  # explicit negative
    (dog,) = b.phrases
    np.testing.assert_allclose(dog.boxes_xywh_px, [[10, 0, 10, 10]])
    assert dog.num_instances == 1  # the crowd annotation is removed
    assert decode_mask(dog.masks[0])[:, 10:].all() and not decode_mask(dog.masks[0])[:, :10].any()


def test_saco_box_only(tmp_path):
    path = _saco(tmp_path, [{"id": 1, "image_id": 2, "bbox": [0.0, 0.0, 0.5, 0.5]}])
    a, b = read_saco(path).samples
    assert a.phrases[1].masks is None and b.phrases[0].masks is None
    np.testing.assert_allclose(a.phrases[1].boxes_xywh_px, [[0, 0, 10, 5]])


def test_saco_pixel_box_is_a_problem_that_says_normalised(tmp_path):
    path = _saco(tmp_path, [{"id": 8, "image_id": 2, "bbox": [2, 2, 4, 4]}])
    result = read_saco(path)
    (problem,) = result.problems
    assert problem.entry == "annotations[0] (id 8)"
    assert "outside" in problem.message and "SA-Co boxes are xywh normalised to [0, 1]" in problem.message
    assert problem.image_id == "a.png"
    assert [s.image_id for s in result.samples] == ["b.jpg"]  # both pairs of a.png go


@pytest.mark.parametrize("change, message, kept", [
    ({"text_input": "  "}, "text_input: a phrase must be a non-empty string", ["b.jpg"]),
    ({"file_name": "../a.png"}, "leads out of the image folder", ["a.png", "b.jpg"]),  # another file: a.png stays
    ({"text_input": "red car"}, "phrase 'red car' is asked of 'a.png' twice (also pair 1)", ["b.jpg"]),
    ({"width": 30}, "size 30x10 disagrees with 20x10", ["b.jpg"]),
    ({"is_instance_exhaustive": "yes"}, "is_instance_exhaustive must be true or false", ["b.jpg"]),
])
def test_saco_bad_pair_drops_its_image(tmp_path, change, message, kept):
    images = [
        {"id": 1, "file_name": "a.png", "width": W, "height": H, "text_input": "red car"},
        {"id": 2, "file_name": "a.png", "width": W, "height": H, "text_input": "tree", **change},
        {"id": 3, "file_name": "b.jpg", "width": W, "height": H, "text_input": "dog"},
    ]
    path = _saco(tmp_path, [], images=images)
    result = read_saco(path)
    assert [p.entry for p in result.problems] == ["images[1] (id 2)"]
    assert message in result.problems[0].message
    assert [s.image_id for s in result.samples] == kept
    _assert_resolves(result.problems, path)


def test_saco_duplicate_pair_id_drops_both_images(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "width": W, "height": H, "text_input": "red car"},
        {"id": 1, "file_name": "b.jpg", "width": W, "height": H, "text_input": "dog"},
    ]
    result = read_saco(_saco(tmp_path, [], images=images))
    assert result.samples == []
    assert [(p.entry, p.image_id) for p in result.problems] == [("images[1] (id 1)", "b.jpg"),
                                                                ("images[0] (id 1)", "a.png")]


def test_saco_unknown_pair_and_missing_lists(tmp_path):
    path = _saco(tmp_path, [{"id": 4, "image_id": 99, "bbox": [0, 0, 0.1, 0.1]}])
    result = read_saco(path)
    expected = f"{path}: annotations[0] (id 4): image_id 99 is not in 'images' (the pairs)"
    assert [str(p) for p in result.problems] == [expected]
    assert len(result.samples) == 2
    bad = _write(tmp_path / "s.json", {"images": []})
    with pytest.raises(DatasetError, match="'annotations' must be a list"):
        read_saco(bad)


# --------------------------------------------------------------------------------------------- geometry


def test_geometry_helpers():
    np.testing.assert_array_equal(check_box_xywh_px([1, 2, 3, 4], W, H), [1, 2, 3, 4])
    with pytest.raises(AnnotationProblem, match="by more than 1 px"):
        check_box_xywh_px([0, 0, 21.5, 5], W, H)
    with pytest.raises(AnnotationProblem, match="no area inside"):
        check_box_xywh_px([20.2, 0, 0.5, 5], W, H)
    rle = segmentation_to_rle(_uncompressed(_mask(0, 0, 2, 2)), H, W)
    assert rle == encode_mask(_mask(0, 0, 2, 2))
    with pytest.raises(AnnotationProblem, match="covers no pixel"):
        segmentation_to_rle(encode_mask(np.zeros((H, W), np.uint8)), H, W)
