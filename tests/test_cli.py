"""The `sam3-adapt` CLI: happy paths on the tiny preset, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from transformers import Sam3Model

from sam3_adapt.cli import main
from adapt.overlay import overlay_scale
from adapt.predicting import overlay_paths, parse_box
from sam3_model.loading import load_model
from sam3_model.predict import ConceptSegmenter
from sam3_model.records import ConceptPrompt, decode_mask, encode_mask


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "shapes.png"
    Image.fromarray((np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _one_line_error(capsys, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("sam3-adapt: error:") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def _predict(image_path, out, *argv: str) -> int:
    return main(["predict", "--model", "tiny", "--image", str(image_path), "--out", str(out), *argv])


def test_parse_box_and_overlay_paths(tmp_path):
    assert parse_box("5,5,35,25") == ((5.0, 5.0, 40.0, 30.0), 1)  # x,y,w,h -> x0,y0,x1,y1
    assert parse_box("1.5,2,3,4:neg") == ((1.5, 2.0, 4.5, 6.0), 0)
    assert parse_box("1,2,3,4:pos")[1] == 1
    assert overlay_paths(tmp_path / "o.png", 1) == [tmp_path / "o.png"]
    assert overlay_paths(tmp_path / "o.png", 3) == [tmp_path / f"o_{k}.png" for k in range(3)]


def test_predict_writes_self_describing_coco_results(image_path, tmp_path, capsys):
    out = tmp_path / "preds.json"
    code = _predict(image_path, out, "--prompt", "red square", "--prompt", "blue", "--box", "5,5,35,25",
                    "--box", "50,10,30,40:neg", "--threshold", "0", "--top-k", "3", "--device", "cpu")
    assert code == 0
    entries = json.loads(out.read_text())
    assert len(entries) == 6  # 2 prompts ("red square" with its exemplar boxes, "blue") x top-3
    assert {(e["category_id"], e["phrase"]) for e in entries} == {(1, "red square"), (2, "blue")}
    for entry in entries:
        assert set(entry) == {"image_id", "category_id", "score", "bbox", "segmentation", "area", "phrase",
                              "file_name"}
        assert entry["image_id"] == entry["file_name"] == str(image_path)  # its own id: the path as given
        x, y, w, h = entry["bbox"]
        assert 0 <= x and x + w <= 90.01 and 0 <= y and y + h <= 60.01  # pixels of the 90x60 image
        assert entry["segmentation"]["size"] == [60, 90]
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [line for line in lines if line.startswith(str(image_path))]  # one line per prompt
    assert "\tred square\tinstances=3\tpresence=" in lines[0] and "\tblue\tinstances=3\tpresence=" in lines[1]
    # the xywh boxes reach the model as the xyxy exemplars of the first prompt, with their polarity
    segmenter = ConceptSegmenter(*load_model("tiny"), threshold=0.0, top_k=3)
    direct = segmenter([str(image_path)], [ConceptPrompt("red square", [(5, 5, 40, 30), (50, 10, 80, 50)], [1, 0]),
                                           "blue"])[0]
    scores = [e["score"] for e in entries]
    assert scores == pytest.approx([i.score for r in direct for i in r.instances], abs=1e-6)
    plain = segmenter([str(image_path)], ["red square"])[0][0]
    assert scores[:3] != pytest.approx([i.score for i in plain.instances], abs=1e-6)


def test_predict_results_load_in_eval(image_path, tmp_path):
    out = tmp_path / "preds.json"
    assert _predict(image_path, out, "--prompt", "cat", "--prompt", "dog", "--threshold", "0", "--top-k", "2") == 0
    mask = np.zeros((60, 90), dtype=np.uint8)
    mask[10:30, 20:50] = 1
    gt = {"images": [{"id": 0, "file_name": str(image_path), "height": 60, "width": 90}],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
          "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [20, 10, 30, 20], "area": 600,
                           "iscrowd": 0, "segmentation": encode_mask(mask)}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    metrics = tmp_path / "metrics.json"
    assert main(["eval", "--gt", str(tmp_path / "gt.json"), "--pred", str(out), "--out", str(metrics)]) == 0
    assert json.loads(metrics.read_text())["num_pairs"] == 2 and "AP" in json.loads(metrics.read_text())


def test_predict_box_only_prompt_is_visual(image_path, tmp_path):
    out = tmp_path / "preds.json"
    assert _predict(image_path, out, "--box", "10,10,20,20", "--box", "40,5,10,10:pos", "--threshold", "0",
                    "--top-k", "2") == 0
    entries = json.loads(out.read_text())
    assert len(entries) == 2 and {(e["category_id"], e["phrase"]) for e in entries} == {(1, "visual")}


def test_predict_overlay_one_image(image_path, tmp_path):
    overlay = tmp_path / "view" / "over.png"
    out = tmp_path / "preds.json"
    assert _predict(image_path, out, "--prompt", "thing", "--threshold", "0", "--top-k", "3",
                    "--overlay", str(overlay)) == 0
    assert sorted(p.name for p in overlay.parent.iterdir()) == ["over.png"]  # that path, no temp file left
    source = np.asarray(Image.open(image_path).convert("RGB")).astype(int)
    assert source.shape == (60, 90, 3)
    k = overlay_scale(90, 60)  # a small image is enlarged (nearest), the legend in a strip below it
    drawn = np.asarray(Image.open(overlay).convert("RGB")).astype(int)
    assert k > 1 and drawn.shape[0] > 60 * k and drawn.shape[1] >= 90 * k
    picture = drawn[: 60 * k, : 90 * k][::k, ::k]  # (60, 90, 3): the image part, one pixel per source pixel
    masks = np.any([decode_mask(e["segmentation"]) for e in json.loads(out.read_text())], axis=0)
    assert masks.sum() > 0 and (picture != source).any(-1)[masks].mean() > 0.9  # masks are blended in

    assert _predict(image_path, out, "--prompt", "thing", "--threshold", "1", "--overlay", str(overlay)) == 0
    assert json.loads(out.read_text()) == []
    drawn = np.asarray(Image.open(overlay).convert("RGB")).astype(int)
    assert np.array_equal(drawn[: 60 * k : k, : 90 * k : k], source)  # no instance: the image untouched...
    assert drawn.shape[0] > 60 * k  # ...and the legend below it


def test_predict_several_images(image_path, tmp_path, capsys):
    second = tmp_path / "second.jpg"
    Image.fromarray((np.random.default_rng(1).random((40, 50, 3)) * 255).astype(np.uint8)).save(second)
    out, overlay = tmp_path / "preds.json", tmp_path / "over.png"
    assert main(["predict", "--model", "tiny", "--image", str(image_path), "--image", str(second),
                 "--prompt", "a", "--prompt", "b", "--threshold", "0", "--top-k", "1",
                 "--out", str(out), "--overlay", str(overlay)]) == 0
    entries = json.loads(out.read_text())
    assert [(e["image_id"], e["file_name"], e["category_id"], e["phrase"]) for e in entries] == [
        (str(image_path), str(image_path), 1, "a"), (str(image_path), str(image_path), 2, "b"),
        (str(second), str(second), 1, "a"), (str(second), str(second), 2, "b")]
    assert entries[2]["segmentation"]["size"] == [40, 50]
    assert not overlay.exists()
    for name, (w, h) in (("over_0.png", (90, 60)), ("over_1.png", (50, 40))):  # each image's own overlay
        k = overlay_scale(w, h)
        width, height = Image.open(tmp_path / name).size
        assert width == w * k and height > h * k  # enlarged (small images), legend strip below
    assert len([line for line in capsys.readouterr().out.splitlines() if "instances=" in line]) == 4


@pytest.mark.parametrize("argv,needle", [
    (["--prompt", ""], "--prompt ''"),
    (["--prompt", "  "], "empty phrase"),
    ([], "--prompt"),  # nothing to find
    (["--prompt", "x", "--prompt", "x"], "twice"),
    (["--prompt", "x", "--box", "1,2,3"], "--box '1,2,3'"),
    (["--prompt", "x", "--box", "1,2,a,4"], "--box '1,2,a,4'"),
    (["--prompt", "x", "--box", "1,2,3,4:maybe"], "polarity"),
    (["--prompt", "x", "--box", "10,10,0,30"], "--box '10,10,0,30'"),  # zero width
    (["--prompt", "x", "--box", "1,2,nan,4"], "finite"),
    (["--box", "10,10,500,30"], "outside the 90x60"),  # box-only prompt, outside the image
    (["--prompt", "x", "--box=-1,10,5,5"], "--box '-1,10,5,5'"),
    (["--prompt", "x", "--overlay", "o.unknownext"], "--overlay"),
    (["--prompt", "x", "--device", "nonsense"], "--device"),
    (["--prompt", "x", "--top-k", "-1"], "top_k"),
])
def test_predict_bad_input_exits_2(image_path, tmp_path, capsys, argv, needle):
    out = tmp_path / "preds.json"
    assert _predict(image_path, out, *argv) == 2
    _one_line_error(capsys, needle)
    assert not out.exists()


def test_predict_boxes_need_exactly_one_image(image_path, tmp_path, capsys):
    assert main(["predict", "--model", "tiny", "--image", str(image_path), "--image", str(image_path),
                 "--prompt", "x", "--box", "1,1,5,5", "--out", str(tmp_path / "p.json")]) == 2
    _one_line_error(capsys, "--box", "one image")


@pytest.mark.parametrize("name,content", [("broken.jpg", b"not an image at all"), ("missing.png", None)])
def test_predict_bad_image_exits_2(image_path, tmp_path, capsys, name, content):
    bad = tmp_path / name
    if content is not None:
        bad.write_bytes(content)
    assert main(["predict", "--model", "tiny", "--image", str(image_path), "--image", str(bad), "--prompt", "x",
                 "--out", str(tmp_path / "p.json")]) == 2
    _one_line_error(capsys, name)
    assert not (tmp_path / "p.json").exists()


def test_unreachable_model_exits_2(image_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["predict", "--image", str(image_path), "--model", "no-such-org/no-such-model", "--prompt", "x",
                 "--out", "p.json"]) == 2
    _one_line_error(capsys, "no-such-org/no-such-model", "local directory")
    assert main(["export", "--model", "./missing-dir", "--out", "x"]) == 2
    _one_line_error(capsys, "missing-dir")


def test_overfit_then_export(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["overfit", "--model", "tiny", "--steps", "3", "--out", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["steps"] == 3 and report["first_loss"] > 0
    assert (run / "losses.png").stat().st_size > 0
    assert len((run / "losses.csv").read_text().splitlines()) == 4  # header + 3 steps
    model = Sam3Model.from_pretrained(run / "model")
    assert model.config.detr_decoder_config.num_queries == 20
    assert "mask_iou" in (run / "model" / "README.md").read_text()

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"cgF1": 0.42}))
    out = tmp_path / "exported"
    assert main(["export", "--model", str(run / "model"), "--data", "toy", "--recipe", "overfit",
                 "--metrics", str(metrics), "--out", str(out)]) == 0
    assert "0.42" in (out / "README.md").read_text()


def test_console_script_prints_no_traceback(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "sam3_adapt", "predict", "--image", str(bad), "--model", "tiny",
                           "--prompt", "x", "--out", str(tmp_path / "p.json")], check=False, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "broken.jpg" in proc.stderr
