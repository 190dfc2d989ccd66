"""The joins between verbs, on files shaped like real tools' exports, with ids that are neither 0..N-1 nor in
name order: predict --gt / eval --model against COCO (Roboflow-style) and SA-Co (Gold-style) ground truth give
pycocotools' and the official evaluator's numbers whatever order the images were given in; the data engine's
files are eval and fit inputs; placeholder categories are left out by fit and eval alike; box units are checked.

The model is the demo's shipped base (a small SAM 3 trained on general toy concepts), so predictions are real.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam3_adapt.cli import main
from adapt.data.readers import read_dataset
from adapt.evaluation import evaluate
from adapt.evaluation.cgf1 import official_keys
from recipes.toy_base import general_ontology, toy_images
from sam3_model.errors import DatasetError
from sam3_model.formats import CategoryRules

BASE = str(Path(__file__).resolve().parents[1] / "recipes" / "demo_base")
NOUNS = ("circle", "square", "triangle")
TOY = {"size": 84, "objects": [1, 3], "min_object": 0.2, "max_object": 0.4}


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("sam3-adapt: error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


@pytest.fixture(scope="module")
def exact(tmp_path_factory) -> Path:
    """The data engine's exact.json: 8 toy images with exact labels for the base model's general phrases."""
    out = tmp_path_factory.mktemp("toy")
    return toy_images(out, general_ontology(), 8, seed=5, **TOY)


def _by_image(saco: dict) -> dict[str, dict]:
    """file_name -> {height, width, phrases: {phrase: [annotations]}} of an SA-Co file."""
    images: dict[str, dict] = {}
    anns: dict = {}
    for ann in saco["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    for pair in saco["images"]:
        entry = images.setdefault(pair["file_name"], {"height": pair["height"], "width": pair["width"], "phrases": {}})
        entry["phrases"][pair["text_input"]] = anns.get(pair["id"], [])
    return images


@pytest.fixture(scope="module")
def roboflow(exact, tmp_path_factory) -> Path:
    """A Roboflow-style COCO export: the project as category 0 (supercategory "none", no annotations), JPEG
    names with Roboflow's hash suffix, image ids in neither 0..N-1 nor name order, pixel boxes, RLE masks."""
    root = tmp_path_factory.mktemp("roboflow") / "valid"
    root.mkdir()
    images = _by_image(json.loads(exact.read_text()))
    ids = random.Random(3).sample(range(10, 99), len(images))
    coco = {"info": {"description": "Exported from roboflow.com"}, "images": [], "annotations": [],
            "categories": [{"id": 0, "name": "shapes", "supercategory": "none"}]
            + [{"id": k, "name": n, "supercategory": "shapes"} for k, n in enumerate(NOUNS, start=1)]}
    for image_id, (file_name, image) in zip(ids, sorted(images.items(), reverse=True)):
        name = f"{Path(file_name).stem}_png.rf.{image_id:08x}.jpg"
        Image.open(exact.parent / file_name).convert("RGB").save(root / name, quality=95)
        coco["images"].append({"id": image_id, "license": 1, "file_name": name, "height": image["height"],
                               "width": image["width"], "date_captured": "2026-12-01T10:00:00+00:00"})
        for k, noun in enumerate(NOUNS, start=1):
            for ann in image["phrases"].get(noun, []):
                x, y, w, h = ann["bbox"]  # SA-Co: normalised -> COCO: pixels
                box = [x * image["width"], y * image["height"], w * image["width"], h * image["height"]]
                coco["annotations"].append({"id": len(coco["annotations"]), "image_id": image_id, "category_id": k,
                                            "bbox": box, "area": float(mask_utils.area(ann["segmentation"])),
                                            "segmentation": ann["segmentation"], "iscrowd": 0})
    path = root / "_annotations.coco.json"
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture(scope="module")
def gold(exact, tmp_path_factory) -> Path:
    """An SA-Co Gold-style file: pairs with shuffled non-sequential ids, is_pixel_exhaustive, category 1,
    normalised boxes and areas, images in a subfolder."""
    root = tmp_path_factory.mktemp("gold")
    data = json.loads(exact.read_text())
    (root / "images").mkdir()
    pairs = [p for p in data["images"] if p["text_input"] in NOUNS]
    new_ids = dict(zip([p["id"] for p in pairs], random.Random(7).sample(range(5000, 9000), len(pairs))))
    random.Random(8).shuffle(pairs)
    images = []
    for pair in pairs:
        shutil.copy(exact.parent / pair["file_name"], root / "images" / Path(pair["file_name"]).name)
        images.append({"id": new_ids[pair["id"]], "file_name": Path(pair["file_name"]).name, "height": pair["height"],
                       "width": pair["width"], "text_input": pair["text_input"], "is_instance_exhaustive": True,
                       "is_pixel_exhaustive": True})
    anns = [{"id": 100 + i, "image_id": new_ids[a["image_id"]], "category_id": 1, "bbox": a["bbox"],
             "area": a["area"], "segmentation": a["segmentation"], "iscrowd": 0}
            for i, a in enumerate(data["annotations"]) if a["image_id"] in new_ids]
    path = root / "gold_food.json"
    path.write_text(json.dumps({"info": {"version": "gold"}, "images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "object"}]}))
    return path


def _pycocotools_stats(gt: Path, preds: list[dict], iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt))
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(preds)), iou_type)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev.stats


def test_predict_gt_and_eval_model_equal_pycocotools_and_plain_predict_in_any_order(roboflow, tmp_path):
    preds = tmp_path / "preds.json"
    assert main(["predict", "--model", BASE, "--gt", str(roboflow), "--threshold", "0.05", "--top-k", "100",
                 "--out", str(preds)]) == 0
    entries = json.loads(preds.read_text())
    gt = json.loads(roboflow.read_text())
    ids = {img["id"]: img["file_name"] for img in gt["images"]}
    assert entries and all(ids[e["image_id"]] == e["file_name"] for e in entries)  # the ground truth's own ids
    assert {e["category_id"] for e in entries} <= {1, 2, 3}  # the root category is not a phrase
    stats = _pycocotools_stats(roboflow, entries, "segm")
    assert main(["eval", "--gt", str(roboflow), "--pred", str(preds), "--out", str(tmp_path / "m1.json")]) == 0
    by_pred = json.loads((tmp_path / "m1.json").read_text())
    assert by_pred["AP"] == pytest.approx(stats[0], abs=1e-9) and by_pred["AP50"] == pytest.approx(stats[1], abs=1e-9)
    assert by_pred["num_pairs"] == len(gt["images"]) * len(NOUNS)  # every image x every real category
    assert by_pred["AP"] > 0.05 and by_pred["cgF1"] > 0  # real predictions, not noise

    assert main(["eval", "--model", BASE, "--gt", str(roboflow), "--out", str(tmp_path / "m2.json")]) == 0
    assert json.loads((tmp_path / "m2.json").read_text()) == pytest.approx(by_pred, abs=1e-9)
    again = json.loads((tmp_path / "predictions.json").read_text())
    assert [(e["image_id"], e["category_id"], e["file_name"]) for e in again] == \
        [(e["image_id"], e["category_id"], e["file_name"]) for e in entries]
    assert [e["score"] for e in again] == pytest.approx([e["score"] for e in entries], abs=1e-6)

    # plain predict, images in name order (not the ground truth's id order), its own ids: joined by file name
    names = sorted(str(roboflow.parent / img["file_name"]) for img in gt["images"])
    plain = tmp_path / "plain.json"
    assert main(["predict", "--model", BASE, "--image", *names, *[a for n in NOUNS for a in ("--prompt", n)],
                 "--threshold", "0.05", "--top-k", "100", "--out", str(plain)]) == 0
    assert main(["eval", "--gt", str(roboflow), "--pred", str(plain), "--out", str(tmp_path / "m3.json")]) == 0
    by_name = json.loads((tmp_path / "m3.json").read_text())
    for key in ("cgF1", "pmF1", "IL_MCC", "AP", "AP50", "num_pairs"):
        assert by_name[key] == pytest.approx(by_pred[key], abs=1e-6), key


def test_predict_gt_on_saco_gold_equals_the_official_evaluator(gold, tmp_path, capsys):
    from test_cgf1 import _official_path, _run_official

    preds = tmp_path / "preds.json"
    assert main(["predict", "--model", BASE, "--gt", str(gold), "--images", str(gold.parent / "images"),
                 "--threshold", "0.05", "--out", str(preds)]) == 0
    entries = json.loads(preds.read_text())
    pairs = {p["id"]: p for p in json.loads(gold.read_text())["images"]}
    for e in entries:  # pair ids, the pair's phrase and file, normalised boxes
        assert pairs[e["image_id"]]["text_input"] == e["phrase"] and pairs[e["image_id"]]["file_name"] == e["file_name"]
        assert all(0 <= v <= 1.0001 for v in e["bbox"]) and e["category_id"] == 1
    ours = {t: evaluate([gold], preds, t).metrics for t in ("segm", "bbox")}
    assert ours["segm"]["cgF1"] > 0 and ours["bbox"]["cgF1"] > 0
    path = _official_path()
    if path is not None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("_official_cgf1_eval_joins", path)
        official = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(official)
        for iou_type, metrics in ours.items():
            expected = _run_official(official, [str(gold)], str(preds), iou_type)
            got = official_keys(metrics, iou_type)
            assert all(abs(got[k] - expected[k]) <= 1e-6 for k in expected), iou_type

    # plain predict writes pixel boxes: joined by (file name, phrase), then refused for box metrics
    images = sorted({str(gold.parent / "images" / p["file_name"]) for p in pairs.values()})
    plain = tmp_path / "plain.json"
    assert main(["predict", "--model", BASE, "--image", *images, *[a for n in NOUNS for a in ("--prompt", n)],
                 "--threshold", "0.05", "--out", str(plain)]) == 0
    capsys.readouterr()
    assert main(["eval", "--gt", str(gold), "--pred", str(plain), "--iou-type", "bbox",
                 "--out", str(tmp_path / "m.json")]) == 2
    assert "pixels (COCO)" in _error(capsys)
    assert main(["eval", "--gt", str(gold), "--pred", str(plain), "--out", str(tmp_path / "m.json")]) == 0
    assert "warning:" in capsys.readouterr().err  # mask metrics are right, box ones would not be
    joined = json.loads((tmp_path / "m.json").read_text())
    assert joined["cgF1"] == pytest.approx(ours["segm"]["cgF1"], abs=1e-6)


def test_ids_that_disagree_with_file_names_are_refused(roboflow, tmp_path, capsys):
    preds = tmp_path / "preds.json"
    assert main(["predict", "--model", BASE, "--gt", str(roboflow), "--threshold", "0.3", "--out", str(preds)]) == 0
    entries = json.loads(preds.read_text())
    other = next(img["id"] for img in json.loads(roboflow.read_text())["images"] if img["id"] != entries[0]["image_id"])
    entries[0]["image_id"] = other  # a ground-truth id naming another image than the entry's file name
    preds.write_text(json.dumps(entries))
    capsys.readouterr()
    assert main(["eval", "--gt", str(roboflow), "--pred", str(preds), "--out", str(tmp_path / "m.json")]) == 2
    err = _error(capsys)
    assert "entry 0" in err and f"image_id {other}" in err and "predict --gt" in err


def test_placeholder_categories_are_left_out_by_fit_and_eval_alike(roboflow, tmp_path):
    data = json.loads(roboflow.read_text())
    data["categories"][0]["name"] = "circle"  # a root named like a real class (Roboflow's "nails" beside "Nail")
    labelme = {**data, "categories": [{"supercategory": None, "id": 0, "name": "_background_"}]
               + [{"supercategory": None, "id": c["id"], "name": c["name"]} for c in data["categories"][1:]]}
    for name, content in (("root.json", data), ("labelme.json", labelme)):
        path = roboflow.parent / name
        path.write_text(json.dumps(content))
        read = read_dataset(path, check_image_files=False)
        assert not read.problems and len(read.notes) == 1 and "left out category" in read.notes[0]
        assert all([p.phrase for p in s.phrases] == list(NOUNS) for s in read.samples)
        metrics = evaluate([path], None, predictions=[]).metrics
        assert metrics["num_pairs"] == len(data["images"]) * len(NOUNS)
    kept = read_dataset(roboflow.parent / "labelme.json", check_image_files=False,
                        rules=CategoryRules(keep_placeholders=True))
    assert [p.phrase for p in kept.samples[0].phrases] == ["_background_", *NOUNS]
    with pytest.raises(DatasetError, match="'circle' is also category 0's"):  # kept, the root clashes by name
        read_dataset(roboflow.parent / "root.json", check_image_files=False, rules=CategoryRules(keep_placeholders=True))
    excluded = read_dataset(roboflow, check_image_files=False, rules=CategoryRules(exclude=("triangle",)))
    assert all([p.phrase for p in s.phrases] == ["circle", "square"] for s in excluded.samples)


def test_the_engine_outputs_are_eval_and_fit_inputs(exact, tmp_path):
    from synth.config import synth_config_from_mapping
    from synth.engine import SynthRun

    config = synth_config_from_mapping({
        "ontology": general_ontology(), "source": {"toy": {"num_images": 4, "seed": 9, **TOY}},
        "teacher": {"model": BASE}, "verify": {"geometric": {}},
        "run": {"shard_size": 4, "progress": False, "accelerator": "cpu"}}, "synth:", tmp_path)
    written = SynthRun(config, tmp_path / "engine").run()
    for name in ("pl", "syn"):
        out = tmp_path / f"{name}-metrics.json"
        assert main(["eval", "--model", BASE, "--gt", str(written[name]), "--out", str(out),
                     "--pred-out", str(tmp_path / f"{name}-preds.json")]) == 0
        metrics = json.loads(out.read_text())
        assert metrics["num_pairs"] > 0 and metrics["cgF1"] > 0.3  # the teacher agrees with its own labels
    fit = {"model": {"model": "tiny", "phrase_chunk_size": 4},
           "data": {"train": [{"path": str(written["syn"])}, {"path": str(exact), "name": "exact"}],
                    "val": [{"path": str(written["pl"])}], "batch_size": 2, "num_workers": 0},
           "trainer": {"max_steps": 1, "default_root_dir": str(tmp_path / "run"), "enable_progress_bar": False,
                       "logger": False, "accelerator": "cpu"}}
    (tmp_path / "fit.yaml").write_text(json.dumps(fit))
    assert main(["fit", "--config", str(tmp_path / "fit.yaml")]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    # straight from training: eval and predict take the run folder
    assert main(["eval", "--model", str(tmp_path / "run"), "--gt", str(written["pl"]),
                 "--out", str(tmp_path / "run-metrics.json")]) == 0


def test_exif_orientation_is_applied_wherever_images_are_read(exact, tmp_path):
    from sam3_model.images import load_image, read_image_size

    data = json.loads(exact.read_text())
    pair = data["images"][0]
    upright = Image.open(exact.parent / pair["file_name"]).convert("RGB")  # 84x84: make it non-square
    upright = upright.crop((0, 0, 84, 60))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a phone stores: rotated pixels + a tag
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    assert read_image_size(tmp_path / "phone.jpg") == (84, 60)
    assert load_image(tmp_path / "phone.jpg", "x").size == (84, 60)
    gt = {"images": [{"id": 41, "file_name": "phone.jpg", "width": 84, "height": 60}],
          "categories": [{"id": 1, "name": "circle"}], "annotations": []}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert not read_dataset(tmp_path / "gt.json").problems  # the displayed size is the annotation's size
    assert main(["predict", "--model", BASE, "--gt", str(tmp_path / "gt.json"), "--threshold", "0",
                 "--top-k", "1", "--out", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())[0]["segmentation"]["size"] == [60, 84]


def test_a_corrupt_rle_fails_within_seconds_naming_the_entry(roboflow, tmp_path, capsys):
    gt = json.loads(roboflow.read_text())
    image = gt["images"][0]
    other = mask_utils.encode(np.ones((image["height"], image["width"] + 7), np.uint8, order="F"))
    bad = {"size": [image["height"], image["width"]], "counts": other["counts"].decode()}  # runs past the image
    preds = [{"image_id": image["id"], "category_id": 1, "score": 0.9, "bbox": [1, 1, 5, 5], "segmentation": bad}]
    (tmp_path / "p.json").write_text(json.dumps(preds))
    start = time.monotonic()
    assert main(["eval", "--gt", str(roboflow), "--pred", str(tmp_path / "p.json"),
                 "--out", str(tmp_path / "m.json")]) == 2
    assert time.monotonic() - start < 10
    err = _error(capsys)
    assert "entry 0" in err and "corrupt" in err
    gt["annotations"][0]["segmentation"] = bad
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert main(["eval", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "p.json"),
                 "--out", str(tmp_path / "m.json")]) == 2
    assert "annotations[0]" in _error(capsys)


def test_phrases_that_cannot_be_encoded_are_refused_at_read_time(roboflow, tmp_path, capsys):
    data = json.loads(roboflow.read_text())
    data["categories"][2]["name"] = "squ\ud800are"  # a lone surrogate, as a JSON escape
    path = roboflow.parent / "surrogate.json"
    path.write_text(json.dumps(data))
    for argv in (["eval", "--gt", str(path), "--pred", str(tmp_path / "none.json")],):
        (tmp_path / "none.json").write_text("[]")
        assert main(argv) == 2
        assert "categories[2]" in _error(capsys)
    with pytest.raises(DatasetError, match="categories\\[2\\]"):
        read_dataset(path, check_image_files=False)
    image = next(roboflow.parent.glob("*.jpg"))
    command = [str(Path(sys.executable).with_name("sam3-adapt")).encode(), b"predict", b"--model", b"tiny",
               b"--image", str(image).encode(), b"--prompt", b"caf\xe9", b"--out", str(tmp_path / "p.json").encode()]
    done = subprocess.run(command, capture_output=True, timeout=120)
    assert done.returncode == 2 and b"cannot be encoded" in done.stderr and b"Traceback" not in done.stderr


def test_names_never_shadow_silently(tmp_path, monkeypatch, capsys):
    from recipes.config import RECIPES_DIR, recipe_path
    from sam3_model.errors import ModelLoadError
    from sam3_model.loading import load_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # e.g. an output folder named like the preset
    (tmp_path / "demo").mkdir()  # `recipe run demo --out demo`, run twice
    model, _ = load_model("tiny")
    assert model.config.vision_config.backbone_config.image_size == 112
    assert "built-in preset" in capsys.readouterr().err
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model("./tiny")
    assert recipe_path("demo") == RECIPES_DIR / "demo.yaml"
    assert "built-in recipe" in capsys.readouterr().err
    with pytest.raises(ModelLoadError, match="sam3-random"):
        load_model("sam3")
    assert main(["info", "--model", "sam3"]) == 2
    err = _error(capsys)
    assert "sam3-random" in err and "facebook/sam3" in err and "./sam3" in err


def _yolo_layout(exact: Path, root: Path) -> None:
    """What ultralytics' converter writes: images/val/*.jpg, labels/val/*.txt ("cls x1 y1 ... xn yn", normalised
    polygons, 6 decimals), data.yaml with `names` as a mapping; one image without a label file (a negative)."""
    images = _by_image(json.loads(exact.read_text()))
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for k, (file_name, image) in enumerate(sorted(images.items())):
        stem = f"IMG_{9000 - k}"  # names whose order is not the images' order
        Image.open(exact.parent / file_name).convert("RGB").save(root / "images" / "val" / f"{stem}.jpg", quality=95)
        lines = []
        for cls, noun in enumerate(NOUNS):
            for ann in image["phrases"].get(noun, []):
                mask = mask_utils.decode({"size": ann["segmentation"]["size"],
                                          "counts": ann["segmentation"]["counts"].encode()})
                contour = _outline(mask)
                lines.append(f"{cls} " + " ".join(f"{x / image['width']:.6f} {y / image['height']:.6f}"
                                                  for x, y in contour))
        if k:  # the first image has no label file at all
            (root / "labels" / "val" / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    (root / "data.yaml").write_text("path: .\nval: images/val\nnames:\n" + "".join(f"  {i}: {n}\n"
                                                                                 for i, n in enumerate(NOUNS)))


def _outline(mask: np.ndarray) -> list[tuple[float, float]]:
    """A polygon around a mask: its box corners (enough for a converter test; ultralytics traces contours)."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def test_convert_fit_predict_eval_chain_on_yolo_and_voc_exports(exact, tmp_path):
    _yolo_layout(exact, tmp_path / "yolo")
    val = tmp_path / "yolo" / "val.json"
    assert main(["convert", "yolo", "--images", str(tmp_path / "yolo" / "images" / "val"), "--labels",
                 str(tmp_path / "yolo" / "labels" / "val"), "--names", str(tmp_path / "yolo" / "data.yaml"),
                 "--out", str(val)]) == 0
    converted = json.loads(val.read_text())
    assert [c["name"] for c in converted["categories"]] == list(NOUNS) and len(converted["images"]) == 8

    # VOC-style palette PNGs (P mode, 255 = void border) through `convert semantic`
    voc = tmp_path / "voc"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    for k, img in enumerate(converted["images"][:4]):
        source = Image.open(val.parent / img["file_name"])
        source.save(voc / "JPEGImages" / f"2007_{k:06d}.jpg")
        classes = np.zeros((img["height"], img["width"]), np.uint8)
        for ann in (a for a in converted["annotations"] if a["image_id"] == img["id"]):
            x, y, w, h = (int(round(v)) for v in ann["bbox"])
            classes[y:y + h, x:x + w] = ann["category_id"]
        palette = Image.fromarray(classes, mode="P")
        palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * 756)
        palette.save(voc / "SegmentationClass" / f"2007_{k:06d}.png")
    (voc / "classes.yaml").write_text("0: background\n1: circle\n2: square\n3: triangle\n255: ignore\n")
    train = voc / "train.json"
    code = main(["convert", "semantic", "--images", str(voc / "JPEGImages"), "--masks",
                 str(voc / "SegmentationClass"), "--classes", str(voc / "classes.yaml"), "--out", str(train)])
    assert code == 0, "convert semantic refused VOC palette masks"

    fit = {"model": {"model": "tiny", "phrase_chunk_size": 4},
           "data": {"train": [{"path": str(train)}], "val": [{"path": str(val)}], "batch_size": 2, "num_workers": 0},
           "trainer": {"max_steps": 2, "val_check_interval": 2, "default_root_dir": str(tmp_path / "run"),
                       "enable_progress_bar": False, "logger": False, "accelerator": "cpu"}}
    (tmp_path / "fit.yaml").write_text(json.dumps(fit))
    assert main(["fit", "--config", str(tmp_path / "fit.yaml")]) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    preds = tmp_path / "preds.json"
    assert main(["predict", "--model", str(ckpt), "--gt", str(val), "--threshold", "0", "--top-k", "100",
                 "--out", str(preds)]) == 0
    assert main(["eval", "--gt", str(val), "--pred", str(preds), "--out", str(tmp_path / "a.json")]) == 0
    assert main(["eval", "--model", str(tmp_path / "run"), "--gt", str(val), "--threshold", "0",
                 "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["num_pairs"] == 8 * len(NOUNS) and a == pytest.approx(b, abs=1e-9)
    assert a["AP"] == pytest.approx(_pycocotools_stats(val, json.loads(preds.read_text()), "segm")[0], abs=1e-9)
