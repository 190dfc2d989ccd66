"""Label Studio interop: the brush RLE codec, tasks export, and the import of Label Studio's JSON export."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapt.data.coco_reader import read_coco
from adapt.data.labelstudio_import import import_labelstudio
from adapt.data.ls_brush import decode_mask, decode_values, encode_mask, encode_values
from adapt.data.saco_reader import read_saco
from sam3_adapt.cli import main
from sam3_model.formats import FormatProblem
from sam3_model.records import decode_mask as decode_coco
from sam3_model.records import encode_mask as encode_coco

W, H = 20, 16


# --------------------------------------------------------------------------------------------- the codec


def _bits(fields: list[tuple[int, int]]) -> list[int]:
    """Byte values of big-endian bit fields (value, width), zero-padded to a byte."""
    text = "".join(f"{v:0{w}b}" for v, w in fields)
    text += "0" * (-len(text) % 8)
    return [int(text[k:k + 8], 2) for k in range(0, len(text), 8)]


def _header(num: int, word: int = 8, sizes: tuple[int, ...] = (3, 4, 8, 16)) -> list[tuple[int, int]]:
    return [(num, 32), (word - 1, 5)] + [(s - 1, 4) for s in sizes]


def test_brush_rle_known_vector_of_a_2x2_mask():
    # RGBA values: pixel (0, 0) is 0 0 0 0, the other three are 255 x 4 -> runs: 4 x 0, 12 x 255. By the
    # converter's scheme: header 16 (32 bits), word size 8 -> 00111, field sizes 3,4,8,16 -> 0010 0011 0111 1111;
    # run of 4 (<= 8): 1 00 011 00000000; run of 12 (9..16): 1 01 1011 11111111; 82 bits + 6 zero bits.
    mask = np.array([[0, 1], [1, 1]], np.uint8)
    expected = [0, 0, 0, 16, 57, 27, 252, 96, 22, 255, 192]
    assert encode_mask(mask) == expected
    np.testing.assert_array_equal(decode_mask(expected, 2, 2), mask)
    # a single value is a literal of one (0 00 000 word); a byte-aligned stream (53 + 14 + 14 + 15 = 96 bits)
    # still gets 8 zero bits
    values = np.array([7] + [1] * 3 + [2] * 10)
    records = [(0, 1), (0, 2), (0, 3), (7, 8), (1, 1), (0, 2), (2, 3), (1, 8), (1, 1), (1, 2), (9, 4), (2, 8)]
    assert encode_values(values) == _bits(_header(14) + records + [(0, 8)])


@pytest.mark.parametrize("seed", range(6))
def test_brush_rle_round_trips_random_masks(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 70, 2)
    mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
    if seed % 2:  # blobs: long runs
        mask[:] = 0
        mask[rng.integers(0, h):, rng.integers(0, w):] = 1
    rle = encode_mask(mask)
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in rle)
    np.testing.assert_array_equal(decode_mask(rle, h, w), mask)
    np.testing.assert_array_equal(decode_values(rle), np.repeat(mask.reshape(-1) * 255, 4))


def test_brush_rle_long_runs_and_any_values():
    values = np.r_[np.zeros(70000, int), [3], np.full(65536, 9), np.arange(40) % 7]
    np.testing.assert_array_equal(decode_values(encode_values(values)), values)
    full = np.ones((300, 300), np.uint8)  # 360000 values: runs longer than 2**16 are split
    np.testing.assert_array_equal(decode_mask(encode_mask(full), 300, 300), full)


def test_brush_rle_decodes_literal_blocks_and_other_sizes():
    # the front end's encoder writes runs of distinct values as literal blocks (flag 0, then `count` words)
    words = list(range(20, 40))  # 20 words: longer than the one-by-one loop
    rle = _bits(_header(23) + [(0, 1), (2, 2), (19, 8)] + [(v, 8) for v in words] + [(1, 1), (0, 2), (2, 3), (5, 8)])
    np.testing.assert_array_equal(decode_values(rle), words + [5, 5, 5])
    rle = _bits(_header(3, word=5, sizes=(2, 2, 2, 2)) + [(0, 1), (3, 2), (2, 2), (31, 5), (1, 5), (17, 5)])
    np.testing.assert_array_equal(decode_values(rle), [31, 1, 17])


@pytest.mark.parametrize("rle, message", [
    ([0, 0, 0], "ends early"),
    ("abc", "list of byte values"),
    ([0, 0, 0, 16, 300], "not a byte value"),
    ([0, 0, 0, 17, 57, 27, 252, 96, 22, 255, 192], "codes 17 values"),
    ([0, 0, 0, 16, 57, 27, 252, 96], "ends early"),
])  # fmt: skip
def test_brush_rle_refuses_malformed(rle, message):
    with pytest.raises(FormatProblem, match=message):
        decode_mask(rle, 2, 2)


def test_brush_rle_refuses_overshooting_runs():
    rle = _bits(_header(4) + [(1, 1), (0, 2), (7, 3), (255, 8)])  # a run of 8 in 4 values
    with pytest.raises(FormatProblem, match="overshoots"):
        decode_values(rle)


# --------------------------------------------------------------------------------------------- fixtures


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(path)


def _blob(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _coco(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """COCO with image ids 17, 42, 99 and category ids 3 (cat), 7 (dog); 99 has no instance."""
    for name in ("a.png", "sub/b.png", "c.png"):
        _image(root / name)
    masks = {"cat_a": _blob(2, 10, 3, 11), "dog_a": _blob(9, 15, 12, 19), "cat_b": _blob(1, 6, 1, 18)}
    place = {"cat_a": (17, 3), "dog_a": (17, 7), "cat_b": (42, 3)}
    anns = []
    for k, (name, (image_id, cat)) in enumerate(place.items(), start=1):
        rle = encode_coco(masks[name])
        ys, xs = np.nonzero(masks[name])
        box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        anns.append({"id": k, "image_id": image_id, "category_id": cat, "segmentation": rle, "bbox": box,
                     "area": int(masks[name].sum()), "iscrowd": 0})
    data = {"images": [{"id": 17, "file_name": "a.png", "width": W, "height": H},
                       {"id": 42, "file_name": "sub/b.png", "width": W, "height": H},
                       {"id": 99, "file_name": "c.png", "width": W, "height": H}],
            "annotations": anns, "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    path = root / "gt.json"
    path.write_text(json.dumps(data))
    return path, masks


def _export(tmp_path: Path, *extra: str) -> tuple[list[dict], Path, dict[str, np.ndarray]]:
    gt, masks = _coco(tmp_path / "ds")
    out = tmp_path / "ls" / "tasks.json"
    assert main(["convert", "labelstudio-tasks", "--dataset", str(gt), "--out", str(out),
                 "--local_files_root", str(tmp_path), *extra]) == 0
    return json.loads(out.read_text()), out, masks


def _mask_of(result: dict) -> np.ndarray:
    return decode_mask(result["value"]["rle"], result["original_height"], result["original_width"])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# --------------------------------------------------------------------------------------------- export


def test_export_writes_tasks_with_brush_predictions_and_a_label_config(tmp_path, capsys):
    tasks, out, masks = _export(tmp_path)
    assert "3 tasks, 3 regions, 2 phrases" in capsys.readouterr().out
    assert [t["data"]["image_id"] for t in tasks] == [17, 42, 99]
    first = tasks[0]["data"]
    assert first["image"] == "/data/local-files/?d=ds/a.png"
    assert tasks[1]["data"]["image"] == "/data/local-files/?d=ds/sub/b.png"
    assert (first["file_name"], first["width"], first["height"]) == ("a.png", W, H)
    assert first["phrases"] == ["cat", "dog"] and first["category_ids"] == {"cat": 3, "dog": 7}
    results = tasks[0]["predictions"][0]["result"]
    assert [(r["type"], r["from_name"], r["to_name"], r["value"]["brushlabels"]) for r in results] == [
        ("brushlabels", "mask", "image", ["cat"]), ("brushlabels", "mask", "image", ["dog"])]
    assert results[0]["value"]["format"] == "rle"
    np.testing.assert_array_equal(_mask_of(results[0]), masks["cat_a"])
    assert tasks[2]["predictions"][0]["result"] == []
    config = ET.fromstring(out.with_suffix(".xml").read_text())
    brush = config.find("BrushLabels")
    assert brush.get("name") == "mask" and brush.get("toName") == "image"
    assert [label.get("value") for label in brush.findall("Label")] == ["cat", "dog"]
    assert config.find("RectangleLabels") is not None and config.find("Image").get("value") == "$image"


def test_export_image_references_and_phrases_needing_xml_escapes(tmp_path):
    gt, _ = _coco(tmp_path)
    data = json.loads(gt.read_text())
    data["categories"][0]["name"] = 'cat & "kitten" <small>'
    gt.write_text(json.dumps(data))
    out = tmp_path / "tasks.json"
    assert main(["convert", "labelstudio-tasks", "--dataset", str(gt), "--out", str(out),
                 "--image_prefix", "https://host/imgs/", "--label_config", str(tmp_path / "cfg.xml")]) == 0
    assert json.loads(out.read_text())[1]["data"]["image"] == "https://host/imgs/sub/b.png"
    labels = [lab.get("value") for lab in ET.fromstring((tmp_path / "cfg.xml").read_text()).iter("Label")]
    assert labels[0] == 'cat & "kitten" <small>'
    assert main(["convert", "labelstudio-tasks", "--dataset", str(gt), "--out", str(out)]) == 0
    assert json.loads(out.read_text())[1]["data"]["image"] == "sub/b.png"


def test_export_predictions_with_scores(tmp_path):
    gt, masks = _coco(tmp_path)
    preds = [{"image_id": str(tmp_path / "a.png"), "category_id": 1, "phrase": "dog", "score": 0.9,
              "file_name": str(tmp_path / "a.png"), "segmentation": encode_coco(masks["dog_a"])},
             {"image_id": str(tmp_path / "a.png"), "category_id": 1, "phrase": "cat", "score": 0.2,
              "file_name": str(tmp_path / "a.png"), "bbox": [1, 1, 4, 4]},
             {"image_id": 42, "category_id": 3, "score": 0.7, "bbox": [2, 2, 5, 5]}]  # fmt: skip
    (tmp_path / "preds.json").write_text(json.dumps(preds))
    out = tmp_path / "tasks.json"
    assert main(["convert", "labelstudio-tasks", "--dataset", str(gt), "--out", str(out), "--predictions",
                 str(tmp_path / "preds.json"), "--min_score", "0.5"]) == 0
    tasks = json.loads(out.read_text())
    first, second = tasks[0]["predictions"][0], tasks[1]["predictions"][0]
    assert first["model_version"] == "preds" and first["score"] == 0.9
    assert [(r["value"]["brushlabels"], r["score"]) for r in first["result"]] == [(["dog"], 0.9)]
    np.testing.assert_array_equal(_mask_of(first["result"][0]), masks["dog_a"])
    box = second["result"][0]
    assert box["type"] == "rectanglelabels" and box["value"]["rectanglelabels"] == ["cat"]
    assert [box["value"][k] for k in ("x", "y", "width", "height")] == [10.0, 12.5, 25.0, 31.25]


# --------------------------------------------------------------------------------------------- import


def _as_labelled(tasks: list[dict]) -> list[dict]:
    """What Label Studio's JSON export looks like once a person has accepted and edited the pre-annotations."""
    out = []
    for k, task in enumerate(tasks):
        result = json.loads(json.dumps(task["predictions"][0]["result"]))
        out.append({"id": 100 + k, "data": task["data"], "predictions": task["predictions"], "annotations": [{
            "id": 500 + k, "completed_by": 1, "was_cancelled": False, "ground_truth": False, "result": result,
            "created_at": "2024-05-02T10:00:00.000000Z", "updated_at": "2024-05-02T10:05:00.000000Z",
            "lead_time": 12.5, "task": 100 + k}]})  # fmt: skip
    return out


def test_round_trip_through_a_labelled_export(tmp_path, capsys):
    tasks, _, masks = _export(tmp_path)
    export = _as_labelled(tasks)
    # task of image 17: erase the right half of the cat, delete the dog
    cat = export[0]["annotations"][0]["result"][0]
    edited = masks["cat_a"].copy()
    edited[:, 7:] = 0
    cat["value"]["rle"] = encode_mask(edited)
    del export[0]["annotations"][0]["result"][1]
    # an older annotation that must not win, and a cancelled newer one
    export[0]["annotations"].insert(0, {"id": 400, "was_cancelled": False, "result": [],
                                        "updated_at": "2024-05-01T09:00:00Z"})
    # task of image 42: add a rectangle for "dog"; a later annotation was cancelled (skipped)
    export[1]["annotations"][0]["result"].append({
        "id": "new1", "type": "rectanglelabels", "from_name": "box", "to_name": "image", "original_width": W,
        "original_height": H, "image_rotation": 0,
        "value": {"x": 10, "y": 25, "width": 30, "height": 50, "rotation": 0, "rectanglelabels": ["dog"]}})
    export[1]["annotations"].append({"id": 600, "was_cancelled": True, "result": [],
                                     "updated_at": "2024-06-01T00:00:00Z"})
    export[1]["annotations"][0]["result"].append({"type": "choices", "value": {"choices": ["ok"]}})
    # task of image 99: never annotated
    export[2]["annotations"] = []
    path = tmp_path / "ls" / "export.json"
    path.write_text(json.dumps(export))
    out = tmp_path / "ds" / "labelled.json"
    assert main(["convert", "labelstudio", "--export", str(path), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "(coco): 2 images, 3 instances from 3 tasks" in line and "1 not annotated" in line
    assert "1 choices results" in line

    data = json.loads(out.read_text())
    assert [(i["id"], i["file_name"]) for i in data["images"]] == [(17, "a.png"), (42, "sub/b.png")]
    assert data["categories"] == [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    result = read_coco(out)
    assert result.problems == []
    by_image = {s.image_id: {p.phrase: p for p in s.phrases} for s in result.samples}
    cat17, dog17 = by_image[17]["cat"], by_image[17]["dog"]
    assert cat17.num_instances == 1 and dog17.num_instances == 0
    np.testing.assert_array_equal(decode_coco(cat17.masks[0]), edited)
    assert _iou(decode_coco(by_image[42]["cat"].masks[0]).astype(bool), masks["cat_b"].astype(bool)) == 1.0
    dog42 = by_image[42]["dog"]
    np.testing.assert_allclose(dog42.boxes_xywh_px[0], [2, 4, 6, 8])
    assert decode_coco(dog42.masks[0])[4:12, 2:8].all() and decode_coco(dog42.masks[0]).sum() == 48


def test_round_trip_of_an_saco_file_keeps_pair_ids_negatives_and_exhaustivity(tmp_path):
    root = tmp_path / "ds"
    _image(root / "a.png")
    cat = _blob(2, 10, 3, 11)
    data = {"images": [
        {"id": 5, "file_name": "a.png", "width": W, "height": H, "text_input": "cat"},
        {"id": 9, "file_name": "a.png", "width": W, "height": H, "text_input": "zebra"},
        {"id": 6, "file_name": "a.png", "width": W, "height": H, "text_input": "bowl",
         "is_instance_exhaustive": False}],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "segmentation": encode_coco(cat),
                         "bbox": [3 / W, 2 / H, 8 / W, 8 / H], "area": 64 / (W * H), "iscrowd": 0}],
        "categories": [{"id": 1, "name": "object"}]}  # fmt: skip
    (root / "pl.json").write_text(json.dumps(data))
    out = tmp_path / "tasks.json"
    assert main(["convert", "labelstudio-tasks", "--dataset", str(root / "pl.json"), "--out", str(out),
                 "--as_annotations"]) == 0
    tasks = json.loads(out.read_text())
    assert tasks[0]["data"]["pair_ids"] == {"cat": 5, "zebra": 9, "bowl": 6}
    assert tasks[0]["data"]["non_exhaustive"] == ["bowl"] and "predictions" not in tasks
    for k, task in enumerate(tasks):
        task["id"] = 7 + k
        task["annotations"][0].update(id=1, was_cancelled=False)
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    stats = import_labelstudio(tmp_path / "export.json", root / "back.json")
    assert (stats.format, stats.images, stats.instances) == ("saco", 1, 1)
    back = json.loads((root / "back.json").read_text())
    assert [(p["id"], p["text_input"], p["is_instance_exhaustive"]) for p in back["images"]] == [
        (5, "cat", True), (9, "zebra", True), (6, "bowl", False)]
    assert back["annotations"][0]["image_id"] == 5
    np.testing.assert_allclose(back["annotations"][0]["bbox"], [3 / W, 2 / H, 8 / W, 8 / H])
    sample = read_saco(root / "back.json").samples[0]
    np.testing.assert_array_equal(decode_coco(sample.phrases[0].masks[0]), cat)
    assert [p.num_instances for p in sample.phrases] == [1, 0, 0]
    stats = import_labelstudio(tmp_path / "export.json", root / "as_coco.json", to="coco")
    coco = json.loads((root / "as_coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "zebra", "bowl"]
    assert coco["images"] == [{"id": 7, "file_name": "a.png", "width": W, "height": H}]


def test_task_made_in_label_studio_without_our_data(tmp_path):
    square = _blob(0, 4, 0, 4)
    tasks = [{"id": 3, "data": {"image": "/data/local-files/?d=imgs/x%20y.png"}, "annotations": [{
        "id": 1, "result": [
            {"type": "brushlabels", "original_width": W, "original_height": H,
             "value": {"format": "rle", "rle": encode_mask(square), "brushlabels": ["leaf"]}},
            {"type": "polygonlabels", "original_width": W, "original_height": H,
             "value": {"points": [[50, 50], [100, 50], [100, 100], [50, 100]], "polygonlabels": ["stem"]}}]}]}]
    (tmp_path / "e.json").write_text(json.dumps(tasks))
    stats = import_labelstudio(tmp_path / "e.json", tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    assert (stats.format, stats.instances) == ("coco", 2)
    assert data["images"] == [{"id": 3, "file_name": "imgs/x y.png", "width": W, "height": H}]
    assert data["categories"] == [{"id": 1, "name": "leaf"}, {"id": 2, "name": "stem"}]
    assert data["annotations"][1]["bbox"] == [10, 8, 10, 8]


def test_malformed_rle_is_one_line_naming_file_and_task(tmp_path, capsys):
    tasks, _, _ = _export(tmp_path)
    export = _as_labelled(tasks)
    export[1]["annotations"][0]["result"][0]["value"]["rle"] = [0, 0, 1]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    assert main(["convert", "labelstudio", "--export", str(path), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err and "task 101" in err and "annotation 501" in err and "ends early" in err
    assert not (tmp_path / "o.json").exists()
    assert main(["convert", "labelstudio", "--export", str(path), "--out", str(tmp_path / "o.json"),
                 "--on_error", "skip"]) == 0
    assert "1 with problems (first:" in capsys.readouterr().out
    assert [i["id"] for i in json.loads((tmp_path / "o.json").read_text())["images"]] == [17, 99]


def test_bad_export_files(tmp_path, capsys):
    out = tmp_path / "o.json"
    (tmp_path / "e.json").write_text(json.dumps({"tasks": []}))
    assert main(["convert", "labelstudio", "--export", str(tmp_path / "e.json"), "--out", str(out)]) == 2
    assert "a list of tasks" in capsys.readouterr().err
    twice = [{"id": k, "data": {"image": "a.png", "width": W, "height": H}, "annotations": [{"result": []}]}
             for k in (1, 2)]
    (tmp_path / "e.json").write_text(json.dumps(twice))
    assert main(["convert", "labelstudio", "--export", str(tmp_path / "e.json"), "--out", str(out)]) == 2
    assert "task 2" in capsys.readouterr().err
