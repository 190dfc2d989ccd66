"""The `sam3-adapt` CLI: happy paths on the tiny preset, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from transformers import Sam3Model

from adapt.cli import main


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


def test_segment_writes_coco_results(image_path, tmp_path, capsys):
    out = tmp_path / "results.json"
    code = main(["segment", str(image_path), "--model", "tiny", "--phrase", "red square", "--phrase", "blue",
                 "--box", "5,5,40,30", "--box", "50,10,80,50:neg", "--threshold", "0", "--top-k", "3",
                 "--out", str(out)])
    assert code == 0
    entries = json.loads(out.read_text())
    assert len(entries) == 6  # 2 prompts ("red square" with its exemplar boxes, "blue") x top-3
    assert {e["category_id"] for e in entries} == {1, 2}
    x, y, w, h = entries[0]["bbox"]
    assert 0 <= x and x + w <= 90.01 and 0 <= y and y + h <= 60.01  # pixels of the 90x60 image
    assert "instances=3" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["--phrase", ""], "prompt 0"),
    (["--phrase", "x", "--box", "1,2,3"], "--box"),
    (["--phrase", "x", "--box", "10,10,10,30"], "prompt 0"),  # zero width
    (["--box", "10,10,500,30"], "prompt 0"),  # outside the 90x60 image, box-only prompt
])
def test_segment_bad_prompts_exit_2(image_path, capsys, argv, needle):
    assert main(["segment", str(image_path), "--model", "tiny", *argv]) == 2
    _one_line_error(capsys, needle)


def test_segment_undecodable_image_exits_2(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    assert main(["segment", str(bad), "--model", "tiny", "--phrase", "x"]) == 2
    _one_line_error(capsys, "broken.jpg")


def test_unreachable_model_exits_2(image_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["segment", str(image_path), "--model", "no-such-org/no-such-model", "--phrase", "x"]) == 2
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
    proc = subprocess.run([sys.executable, "-m", "adapt.cli", "segment", str(bad), "--model", "tiny",
                           "--phrase", "x"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "broken.jpg" in proc.stderr
