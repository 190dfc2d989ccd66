"""Crop-text MV with tiny random CLIP and SigLIP models: crops, scores equal to the full forward, verdicts, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sam3_model.errors import ModelLoadError
from sam3_model.records import Instance, encode_mask
from tiny_clip import build_tiny_clip, build_tiny_siglip
from verifiers.base import MaskVerifier, VerifyItem
from verifiers.clip_score import ClipMaskVerifier, fill_template, masked_crop

H, W = 60, 90
FILL = (124, 116, 104)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dual")
    return {"clip": build_tiny_clip(root / "clip"), "siglip": build_tiny_siglip(root / "siglip")}


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8))


def rect_instance(x0, y0, x1, y1, box=None) -> Instance:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return Instance(encode_mask(mask), box or (x0, y0, x1, y1), 0.9)


def test_masked_crop_pads_paints_and_squares():
    image = Image.new("RGB", (W, H), (255, 0, 0))
    crop = masked_crop(image, rect_instance(20, 10, 40, 20), padding=0.1, fill=FILL)
    pixels = np.asarray(crop)
    # box 20 x 10 padded by 2 and 1 px -> 24 x 12, centred in a 24 x 24 square of the fill colour
    assert pixels.shape == (24, 24, 3)
    red = (pixels == (255, 0, 0)).all(-1)
    assert red.sum() == 200
    assert (pixels[~red] == FILL).all()
    rows, cols = np.nonzero(red)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (6 + 1, 6 + 10, 2, 21)
    empty = Instance(encode_mask(np.zeros((H, W), np.uint8)), (0, 0, 10, 10))
    assert masked_crop(image, empty, 0.1, FILL) is None
    # a degenerate box falls back to the mask's own box
    assert np.asarray(masked_crop(image, rect_instance(20, 10, 40, 20, box=(5, 5, 5, 5)), 0.0, FILL)).shape == (
        20, 20, 3)


def test_fill_template_avoids_double_articles():
    assert fill_template("a photo of a {phrase}", "sushi roll") == "a photo of a sushi roll"
    assert fill_template("a photo of a {phrase}", "the cat") == "a photo of the cat"
    assert fill_template("a photo of a {phrase}", "an object") == "a photo of an object"
    assert fill_template("{phrase}", "a cat") == "a cat"


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_probabilities_equal_the_full_forward(model_dirs, image, kind):
    verifier = ClipMaskVerifier.from_pretrained(str(model_dirs[kind]))
    assert isinstance(verifier, MaskVerifier)
    assert verifier.sigmoid is (kind == "siglip")
    item = VerifyItem(image, "sushi roll", [rect_instance(10, 5, 50, 40), rect_instance(60, 30, 85, 55)],
                      negatives=["nigiri", "sushi roll"])
    texts = verifier.texts(item)
    assert texts == ["sushi roll", "nigiri", "an object", "background"]  # phrase first, no repeats
    [probs] = verifier.probabilities([item])
    prompts = [fill_template(verifier.prompt_template, t) for t in texts]
    pad = dict(padding="max_length", max_length=16) if kind == "siglip" else dict(padding=True)
    for inst, got in zip(item.instances, probs):
        crop = masked_crop(image, inst, verifier.padding, verifier.fill)
        inputs = verifier.processor(text=prompts, images=[crop], return_tensors="pt", **pad)
        with torch.inference_mode():
            logits = verifier.model(**inputs).logits_per_image[0]
        want = logits.sigmoid() if kind == "siglip" else logits.softmax(-1)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-6)
    if kind == "clip":
        assert probs[0].sum() == pytest.approx(1.0, abs=1e-5)


def test_the_winning_text_decides(model_dirs, image):
    """Two items with the same text set and swapped roles: the winner's item is accepted, the other rejected."""
    verifier = ClipMaskVerifier.from_pretrained(str(model_dirs["clip"]), contrast_phrases=(), threshold=0.0)
    inst = rect_instance(10, 5, 50, 40)
    a = VerifyItem(image, "sushi roll", [inst], negatives=["nigiri"])
    b = VerifyItem(image, "nigiri", [inst], negatives=["sushi roll"])
    [[va], [vb]] = verifier.verify_masks([a, b])
    assert va.accept_score + vb.accept_score == pytest.approx(1.0, abs=1e-5)
    winner, loser = (va, vb) if va.accept_score > vb.accept_score else (vb, va)
    win_text, lose_text = ("sushi roll", "nigiri") if winner is va else ("nigiri", "sushi roll")
    assert (winner.option, loser.option) == ("accept", "reject")
    assert winner.score == pytest.approx(winner.accept_score)
    assert loser.score == pytest.approx(1 - loser.accept_score)
    assert loser.reason.startswith(
        f"{win_text!r} outscores {lose_text!r} ({winner.accept_score:.2f} vs {loser.accept_score:.2f}")
    # the same winner below the threshold becomes a reject that says so
    strict = ClipMaskVerifier.from_pretrained(str(model_dirs["clip"]), contrast_phrases=(),
                                              threshold=min(1.0, winner.accept_score + 0.01))
    [[v]] = strict.verify_masks([a if winner is va else b])
    assert v.option == "reject" and v.accept_score == pytest.approx(winner.accept_score)
    assert v.reason.startswith(f"accept score {winner.accept_score:.3f} < threshold")


def test_empty_mask_is_rejected_without_running_the_model(model_dirs, image):
    verifier = ClipMaskVerifier.from_pretrained(str(model_dirs["clip"]))
    empty = Instance(encode_mask(np.zeros((H, W), np.uint8)), (0, 0, 10, 10))
    verifier.model.get_image_features = None  # would fail if called
    [[v], []] = verifier.verify_masks([VerifyItem(image, "cat", [empty]), VerifyItem(image, "dog", [])])
    assert (v.option, v.accept_score, v.reason) == ("reject", 0.0, "empty mask: nothing to crop")


def test_batches_crops_and_encodes_each_text_once(model_dirs, image):
    verifier = ClipMaskVerifier.from_pretrained(str(model_dirs["clip"]), batch_size=2)
    reference = ClipMaskVerifier.from_pretrained(str(model_dirs["clip"]), batch_size=32)
    calls = {"text": [], "image": []}
    model = verifier.model
    text_fn, image_fn = model.get_text_features, model.get_image_features
    model.get_text_features = lambda **kw: calls["text"].append(len(kw["input_ids"])) or text_fn(**kw)
    model.get_image_features = lambda **kw: calls["image"].append(len(kw["pixel_values"])) or image_fn(**kw)
    items = [
        VerifyItem(image, "cat", [rect_instance(0, 0, 30, 30), rect_instance(30, 0, 60, 30)], negatives=["dog"]),
        VerifyItem(image, "dog", [rect_instance(0, 30, 30, 60)], negatives=["cat", "fox"]),
        VerifyItem(image, "cat", [rect_instance(60, 0, 90, 30), rect_instance(60, 30, 90, 60)]),
    ]
    got = verifier.verify_masks(items)
    # distinct texts: cat, dog, an object, background, fox -> 5 encoded once, 2 at a time; 5 crops, 2 at a time
    assert calls == {"text": [2, 2, 1], "image": [2, 2, 1]}
    want = reference.verify_masks(items)
    for got_row, want_row in zip(got, want):
        assert [v.option for v in got_row] == [v.option for v in want_row]
        np.testing.assert_allclose([v.accept_score for v in got_row], [v.accept_score for v in want_row], atol=1e-5)


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        ClipMaskVerifier.from_pretrained(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="not a CLIP/SigLIP dual encoder"):
        ClipMaskVerifier(torch.nn.Linear(2, 2), None)
