"""Dataset-layout converters (Kvasir-SEG / ISIC binary masks, MVTec AD, FoodSeg103, UECFoodPix) read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_adapt.cli import main
from adapt.data.convert_domains import (
    convert_binary_masks,
    convert_foodseg103,
    convert_mvtec,
    convert_uecfoodpix,
    mvtec_phrase,
)
from adapt.data.readers import read_dataset
from sam3_model.errors import ConfigError, DatasetError
from sam3_model.records import decode_mask

W, H = 48, 32


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 100, np.uint8)).save(path)
    return path


def _save(path: Path, array: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode=mode).save(path)
    return path


def _blob(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _phrases(sample) -> dict[str, list[np.ndarray]]:
    return {p.phrase: [decode_mask(m) for m in p.masks] for p in sample.phrases}


# --------------------------------------------------------------------------------------------- binary masks


def _kvasir(root: Path) -> tuple[np.ndarray, np.ndarray]:
    a, b = _blob(4, 14, 4, 16), _blob(20, 30, 30, 44)
    _image(root / "images" / "cju0.jpg")
    _save(root / "masks" / "cju0.png", (a + b) * 255)  # two polyps
    _image(root / "images" / "cju1.jpg")
    _save(root / "masks" / "cju1.png", np.zeros((H, W)))  # no polyp: a negative
    return a, b


def test_binary_masks_kvasir_components_and_negative(tmp_path):
    a, b = _kvasir(tmp_path)
    out = tmp_path / "train.json"
    stats = convert_binary_masks(tmp_path / "images", tmp_path / "masks", " polyp ", out)
    assert (stats.images, stats.instances, stats.skipped) == (2, 2, 0)
    result = read_dataset(out)
    assert result.problems == []
    first, second = result.samples
    assert first.image_path == (tmp_path / "images" / "cju0.jpg").resolve()
    masks = _phrases(first)["polyp"]
    assert len(masks) == 2
    np.testing.assert_array_equal(masks[0], a)
    np.testing.assert_array_equal(masks[1], b)
    assert [(p.phrase, p.num_instances) for p in second.phrases] == [("polyp", 0)]


def test_binary_masks_jpeg_threshold_and_isic_suffix(tmp_path):
    lesion = _blob(8, 24, 10, 40)
    _image(tmp_path / "in" / "ISIC_0000001.jpg")
    noisy = lesion * 250 + 3  # JPEG-like noise on the background
    noisy[0, 0] = 90
    _save(tmp_path / "gt" / "ISIC_0000001_segmentation.png", np.stack([noisy] * 3, -1), "RGB")
    out = tmp_path / "isic.json"
    stats = convert_binary_masks(tmp_path / "in", tmp_path / "gt", "skin lesion", out, mask_suffix="_segmentation")
    assert stats.instances == 1
    (sample,) = read_dataset(out).samples
    np.testing.assert_array_equal(_phrases(sample)["skin lesion"][0], lesion)
    assert convert_binary_masks(tmp_path / "in", tmp_path / "gt", "skin lesion", out, mask_suffix="_segmentation",
                                threshold=50).instances == 2  # fmt: skip


def test_binary_masks_missing_mask_stop_or_skip(tmp_path):
    _kvasir(tmp_path)
    _image(tmp_path / "images" / "cju2.jpg")  # no mask
    out = tmp_path / "train.json"
    with pytest.raises(DatasetError, match=r"1 bad entries: .*masks/cju2.*no mask 'cju2\.\*' for this image"):
        convert_binary_masks(tmp_path / "images", tmp_path / "masks", "polyp", out)
    assert not out.exists()
    stats = convert_binary_masks(tmp_path / "images", tmp_path / "masks", "polyp", out, on_error="skip")
    assert (stats.images, stats.skipped) == (2, 1)
    assert stats.problems[0].entry == "image 'cju2.jpg'"
    with pytest.raises(ConfigError, match="phrase"):
        convert_binary_masks(tmp_path / "images", tmp_path / "masks", " ", out)


# --------------------------------------------------------------------------------------------- MVTec AD


def _mvtec(root: Path) -> dict[str, np.ndarray]:
    masks = {"broken_large/000": _blob(2, 10, 2, 10), "contamination/000": _blob(15, 25, 20, 30)}
    for key, mask in masks.items():
        defect, stem = key.split("/")
        _image(root / "bottle" / "test" / defect / f"{stem}.png")
        _save(root / "bottle" / "ground_truth" / defect / f"{stem}_mask.png", mask * 255)
    _image(root / "bottle" / "test" / "good" / "000.png")
    _image(root / "bottle" / "train" / "good" / "000.png")  # not converted
    return masks


def test_mvtec_defects_and_good_negatives(tmp_path):
    masks = _mvtec(tmp_path)
    out = tmp_path / "mvtec.json"
    stats = convert_mvtec(tmp_path, out)
    assert (stats.images, stats.instances) == (3, 2)
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["categories"]] == ["broken large", "contamination"]
    assert [i["file_name"] for i in data["images"]] == [
        "bottle/test/broken_large/000.png", "bottle/test/contamination/000.png", "bottle/test/good/000.png"]
    broken, contamination, good = read_dataset(out).samples
    np.testing.assert_array_equal(_phrases(broken)["broken large"][0], masks["broken_large/000"])
    assert _phrases(broken)["contamination"] == []
    np.testing.assert_array_equal(_phrases(contamination)["contamination"][0], masks["contamination/000"])
    assert good.image_path.name == "000.png" and "good" in str(good.image_path)
    assert [(p.phrase, p.num_instances) for p in good.phrases] == [("broken large", 0), ("contamination", 0)]

    assert convert_mvtec(tmp_path, out, phrase_template="{defect} on {category}", include_good=False).images == 2
    assert [c["name"] for c in json.loads(out.read_text())["categories"]][0] == "broken large on bottle"
    assert mvtec_phrase("{category} {defect}", "metal_nut", "color") == "metal nut color"
    with pytest.raises(ConfigError, match="only {defect} and {category}"):
        mvtec_phrase("{kind}", "bottle", "crack")


def test_mvtec_missing_mask_and_bad_roots(tmp_path):
    _mvtec(tmp_path)
    (tmp_path / "bottle" / "ground_truth" / "contamination" / "000_mask.png").unlink()
    out = tmp_path / "mvtec.json"
    with pytest.raises(DatasetError, match="no mask '000_mask.png' for this image"):
        convert_mvtec(tmp_path, out)
    assert convert_mvtec(tmp_path, out, on_error="skip").skipped == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no MVTec AD categories"):
        convert_mvtec(tmp_path / "empty", out)
    with pytest.raises(DatasetError, match="no category 'screw'"):
        convert_mvtec(tmp_path, out, categories=["screw"])


# --------------------------------------------------------------------------------------------- food


def test_foodseg103_class_map_from_category_file(tmp_path):
    (tmp_path / "category_id.txt").write_text("0\tbackground\n1\tcandy\n2\tegg tart\n")
    rice, tart = _blob(0, 10, 0, 10), _blob(12, 20, 30, 40)
    _image(tmp_path / "Images" / "img_dir" / "test" / "00000001.jpg")
    _save(tmp_path / "Images" / "ann_dir" / "test" / "00000001.png", rice * 1 + tart * 2)
    out = tmp_path / "test.json"
    stats = convert_foodseg103(tmp_path, out, split="test")
    assert (stats.images, stats.instances) == (1, 2)
    (sample,) = read_dataset(out).samples
    found = _phrases(sample)
    assert list(found) == ["candy", "egg tart"]
    np.testing.assert_array_equal(found["egg tart"][0], tart)
    with pytest.raises(DatasetError, match="ann_dir/train: no such mask folder"):
        convert_foodseg103(tmp_path, out, split="train")


def test_uecfoodpix_red_channel(tmp_path):
    (tmp_path / "category.txt").write_text("id\tname\n1\trice\n2\tbeef curry\n")
    rice, curry = _blob(2, 8, 2, 8), _blob(10, 30, 10, 30)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = rice * 1 + curry * 2
    rgb[..., 1] = 77  # other channels do not matter
    _image(tmp_path / "train" / "img" / "1.jpg")
    _save(tmp_path / "train" / "mask" / "1.png", rgb, "RGB")
    out = tmp_path / "uec.json"
    assert convert_uecfoodpix(tmp_path, out).instances == 2
    (sample,) = read_dataset(out).samples
    np.testing.assert_array_equal(_phrases(sample)["beef curry"][0], curry)
    np.testing.assert_array_equal(_phrases(sample)["rice"][0], rice)


# --------------------------------------------------------------------------------------------- CLI


def test_cli_commands_and_errors(tmp_path, capsys):
    _kvasir(tmp_path / "kv")
    out = tmp_path / "kv" / "train.json"
    assert main(["convert", "binary-masks", "--root", str(tmp_path / "kv"), "--phrase", "polyp",
                 "--out", str(out), "--min-area", "200"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == f"wrote {out}: 2 images, 0 instances"

    _mvtec(tmp_path / "mv")
    out = tmp_path / "mv" / "all.json"
    assert main(["convert", "mvtec", "--root", str(tmp_path / "mv"), "--category", "bottle",
                 "--phrase-template", "{defect} {category}", "--out", str(out)]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == f"wrote {out}: 3 images, 2 instances"
    assert "broken large bottle" in [p.phrase for p in read_dataset(out).samples[0].phrases]

    (tmp_path / "food").mkdir()
    assert main(["convert", "foodseg103", "--root", str(tmp_path / "food"), "--out", str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sam3-adapt: error: ") and "category_id.txt: no such class list" in err and "\n" not in err

    _image(tmp_path / "kv" / "images" / "cju9.jpg")
    assert main(["convert", "binary-masks", "--root", str(tmp_path / "kv"), "--phrase", "polyp",
                 "--out", str(tmp_path / "kv" / "x.json"), "--on-error", "skip"]) == 0  # fmt: skip
    line = capsys.readouterr().out.strip()
    assert "2 images, 2 instances; skipped 1 images" in line and "cju9" in line
    assert main(["convert", "mvtec", "--root", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no such MVTec AD folder" in capsys.readouterr().err
