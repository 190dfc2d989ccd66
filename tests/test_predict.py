"""Concept segmentation on the tiny preset: feature reuse equals the plain forward, post-processing, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from sam3_model.errors import ConfigError, ImageError, PromptError
from sam3_model.loading import load_model
from sam3_model.predict import ConceptSegmenter, to_coco_results, write_coco_results
from sam3_model.prompting import prompt_tensors, validate_prompt
from sam3_model.records import ConceptPrompt, decode_mask

os.environ.setdefault("HF_HUB_OFFLINE", "1")

H, W = 60, 90  # a non-square image: the model input is a stretched 112 x 112 square
PHRASES = ["a cat", "red traffic light", "dog"]
EXEMPLAR = ConceptPrompt(boxes_xyxy_px=[(10, 10, 40, 30), (50, 20, 80, 50)], box_labels=[1, 0])


@pytest.fixture(scope="module")
def tiny():
    model, processor = load_model("tiny", seed=0)
    return model.eval(), processor


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def plain(tiny, image):
    """Every instance of each of PHRASES in `image` (threshold 0, prompts batched together)."""
    return segmenter(tiny, threshold=0.0)([image], PHRASES)[0]


def segmenter(tiny, **kw):
    return ConceptSegmenter(*tiny, **kw)


def sorted_rows(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.lexsort(boxes.T[::-1])]


def test_feature_reuse_equals_plain_forward(tiny, image, plain):
    model, processor = tiny
    results = plain
    pixel_values = processor(images=[Image.fromarray(image)], return_tensors="pt")["pixel_values"]
    for phrase, result in zip(PHRASES, results):
        tokens = processor.tokenizer([phrase], padding="max_length", max_length=32, return_tensors="pt")
        with torch.inference_mode():
            out = model(pixel_values=pixel_values, **tokens)
        scores = (out.pred_logits.sigmoid() * out.presence_logits.sigmoid())[0]  # (Q,)
        boxes = (out.pred_boxes[0] * torch.tensor([W, H, W, H])).clamp(min=0)  # (Q, 4) xyxy px
        boxes = torch.minimum(boxes, torch.tensor([W, H, W, H], dtype=boxes.dtype))
        got_scores = np.array([i.score for i in result.instances])
        assert len(result.instances) == len(scores)
        np.testing.assert_allclose(got_scores, np.sort(scores.numpy())[::-1], atol=1e-5)
        got_boxes = np.array([i.box_xyxy_px for i in result.instances])
        np.testing.assert_allclose(sorted_rows(got_boxes), sorted_rows(boxes.numpy()), atol=1e-4)
        assert result.presence == pytest.approx(float(out.presence_logits.sigmoid()), abs=1e-5)


def test_vision_features_computed_once_per_image(tiny, image, monkeypatch):
    model, _ = tiny
    calls = {"vision": 0, "forward": 0}
    original = model.get_vision_features

    def counting(*args, **kwargs):
        calls["vision"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "get_vision_features", counting)
    handle = model.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    try:
        results = segmenter(tiny, prompt_batch_size=2)([image, image[:40]], PHRASES)
    finally:
        handle.remove()
    assert calls == {"vision": 2, "forward": 4}  # 2 images x ceil(3 / 2) prompt batches
    assert [len(r) for r in results] == [3, 3]
    assert results[1][0].image_size == (40, W)


def test_batch_size_does_not_change_results(tiny, image, plain):
    one = segmenter(tiny, threshold=0.0, prompt_batch_size=1)([image], PHRASES)[0]
    for a, b in zip(one, plain):
        np.testing.assert_allclose([i.score for i in a.instances], [i.score for i in b.instances], atol=1e-5)


def test_top_k_sorted_and_within_image(tiny, image):
    results = segmenter(tiny, threshold=0.0, top_k=5)([image], PHRASES)[0]
    for result in results:
        scores = [i.score for i in result.instances]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert 0.0 <= result.presence <= 1.0 and all(0.0 < s <= 1.0 for s in scores)
        assert result.image_size == (H, W)
        for inst in result.instances:
            x0, y0, x1, y1 = inst.box_xyxy_px
            assert 0 <= x0 <= x1 <= W and 0 <= y0 <= y1 <= H
            assert inst.mask["size"] == [H, W] and decode_mask(inst.mask).shape == (H, W)


def test_threshold_is_strict_and_filters(tiny, image, plain):
    cut = float(np.median([i.score for i in plain[0].instances]))
    kept = segmenter(tiny, threshold=cut)([image], PHRASES[:1])[0]
    assert all(i.score > cut for i in kept[0].instances)
    assert len(kept[0].instances) == sum(i.score > cut for i in plain[0].instances)
    assert segmenter(tiny, threshold=1.0)([image], PHRASES[:1])[0][0].instances == []


def test_masks_match_mask_threshold(tiny, image):
    loose = segmenter(tiny, threshold=0.0, top_k=3, mask_threshold=0.1)([image], ["a cat"])[0][0]
    tight = segmenter(tiny, threshold=0.0, top_k=3, mask_threshold=0.9)([image], ["a cat"])[0][0]
    for a, b in zip(loose.instances, tight.instances):
        assert decode_mask(a.mask).sum() >= decode_mask(b.mask).sum()
        assert np.all(decode_mask(a.mask) >= decode_mask(b.mask))  # the tight mask is inside the loose one


def test_exemplar_boxes_and_mixed_batches(tiny, image, plain):
    text_only = plain[0]
    mixed = segmenter(tiny, threshold=0.0)([image], ["a cat", EXEMPLAR,
                                                     ConceptPrompt("a cat", [(5.0, 5.0, 30.0, 40.0)])])[0]
    assert [r.prompt for r in mixed][1] is EXEMPLAR and len(mixed[1].instances) == 20
    # a text-only prompt gives the same result whether or not box prompts share its call
    np.testing.assert_allclose([i.score for i in mixed[0].instances], [i.score for i in text_only.instances],
                               atol=1e-5)
    assert not np.allclose([i.score for i in mixed[2].instances], [i.score for i in text_only.instances])


def test_prompt_tensors_match_processor(tiny):
    _, processor = tiny
    prompts = [ConceptPrompt("cat"), ConceptPrompt(None, [(10, 20, 30, 60)]),
               ConceptPrompt("dog", [(0, 0, 200, 100), (10, 10, 20, 20)], [1, 0])]
    ours = prompt_tensors(processor, prompts, [(100, 200)])
    assert ours["input_boxes"].shape == (3, 2, 4) and ours["input_ids"].shape == (3, 32)
    assert ours["input_boxes"][1, 0].tolist() == pytest.approx([0.1, 0.4, 0.1, 0.4])
    assert ours["input_boxes_labels"].tolist() == [[-10, -10], [1, -10], [1, 0]]
    assert ours["input_boxes"][0].abs().sum() == 0 and ours["input_boxes"][1, 1].abs().sum() == 0
    ref = processor(images=[Image.new("RGB", (200, 100))] * 2, text=[None, "dog"],
                    input_boxes=[[[10, 20, 30, 60]], [[0, 0, 200, 100], [10, 10, 20, 20]]],
                    input_boxes_labels=[[1], [1, 0]], return_tensors="pt")
    torch.testing.assert_close(ours["input_boxes"][1:][ours["input_boxes_labels"][1:] != -10],
                               ref["input_boxes"][ref["input_boxes_labels"] != -10])
    assert torch.equal(ours["input_ids"][1:], ref["input_ids"])  # box-only prompts read "visual"
    assert "input_boxes" not in prompt_tensors(processor, prompts[:1], [(100, 200)])


def test_official_text_prompt_adds_geometry_token(tiny, image, plain):
    _, processor = tiny
    inputs = prompt_tensors(processor, [ConceptPrompt("cat"), ConceptPrompt("dog")], [(H, W)],
                            official_text_prompt=True)
    assert inputs["input_boxes"].tolist() == [[[0.0] * 4]] * 2 and inputs["input_boxes_labels"].tolist() == [[-10]] * 2
    official = segmenter(tiny, threshold=0.0, official_text_prompt=True)([image], PHRASES)[0]
    for a, b in zip(plain, official):
        assert len(b.instances) == 20
        assert not np.allclose([i.score for i in a.instances], [i.score for i in b.instances], atol=1e-4)


def test_coco_results_conventions(tiny, image, tmp_path):
    results = segmenter(tiny, threshold=0.0, top_k=4)([image, image], [PHRASES[:2], PHRASES[1:]],
                                                      image_ids=[[11, 12], 7])
    assert [[r.image_id for r in rs] for rs in results] == [[11, 12], [7, 7]]
    saco = to_coco_results(results)
    assert len(saco) == 16 and {e["image_id"] for e in saco} == {11, 12, 7}
    for entry in saco:
        assert set(entry) == {"image_id", "category_id", "score", "bbox", "segmentation", "area"}
        assert entry["category_id"] == 1 and all(0.0 <= v <= 1.0 for v in entry["bbox"])
        assert isinstance(entry["segmentation"]["counts"], str) and entry["segmentation"]["size"] == [H, W]
        assert 0.0 <= entry["area"] <= 1.0
    ids = {"a cat": 3, "red traffic light": 5, "dog": 9}
    coco = to_coco_results(results, "coco", category_ids=ids)
    assert [e["category_id"] for e in coco] == [3] * 4 + [5] * 8 + [9] * 4
    for s, c in zip(saco, coco):
        np.testing.assert_allclose(c["bbox"], np.array(s["bbox"]) * [W, H, W, H], rtol=1e-6, atol=1e-4)
        assert c["area"] == pytest.approx(s["area"] * H * W)
    with pytest.raises(ConfigError):
        to_coco_results(results, "coco", category_ids={"a cat": 1})
    with pytest.raises(ConfigError):
        to_coco_results(results, "voc")

    path = write_coco_results(results, tmp_path / "out" / "preds.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(saco))
    assert os.listdir(path.parent) == ["preds.json"]  # no temporary file left behind


def test_inputs_of_every_kind(tiny, image, plain, tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(image).save(path)
    seg = segmenter(tiny, threshold=0.0, top_k=2)
    by_kind = seg([Image.fromarray(image).convert("L").convert("RGB"), Image.fromarray(image), str(path)], ["a cat"])
    expected = [i.score for i in plain[0].instances[:2]]
    assert [i.score for i in by_kind[1][0].instances] == pytest.approx(expected, abs=1e-6)
    assert [i.score for i in by_kind[2][0].instances] == pytest.approx(expected, abs=1e-6)
    assert [i.score for i in by_kind[0][0].instances] != pytest.approx(expected, abs=1e-6)  # really another image
    assert seg([image], []) == [[]]


def test_bad_image_file_names_the_file(tiny, tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"this is not a jpeg at all")
    with pytest.raises(ImageError, match="x.jpg"):
        segmenter(tiny)([bad], ["cat"])
    with pytest.raises(ImageError, match="missing.png"):
        segmenter(tiny)([tmp_path / "missing.png"], ["cat"])
    with pytest.raises(ImageError, match="image 1"):
        segmenter(tiny)([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32)], ["cat"])


@pytest.mark.parametrize("prompt, pattern", [
    (ConceptPrompt(""), "empty phrase"),
    (ConceptPrompt("   "), "empty phrase"),
    (ConceptPrompt(None), "empty phrase"),
    (ConceptPrompt("cat", [(10, 10, 10, 20)]), "zero or negative area"),
    (ConceptPrompt("cat", [(30, 10, 20, 20)]), "zero or negative area"),
    (ConceptPrompt("cat", [(10, 10, W + 1, 20)]), "outside"),
    (ConceptPrompt("cat", [(-1, 10, 20, 20)]), "outside"),
    (ConceptPrompt("cat", [(10, 10, 20, float("nan"))]), "finite"),
    (ConceptPrompt("cat", [(10, 10, 20, 20)], [1, 0]), "1 boxes but 2 box labels"),
    (ConceptPrompt("cat", [(10, 10, 20, 20)], [2]), "must be 1"),
])
def test_invalid_prompts(tiny, image, prompt, pattern):
    with pytest.raises(PromptError, match=pattern) as info:
        segmenter(tiny)([image], [ConceptPrompt("dog"), prompt])
    assert "image 0, prompt 1" in str(info.value) and "\n" not in str(info.value)


def test_validate_prompt_accepts_edges():
    validate_prompt(ConceptPrompt("cat", [(0, 0, W, H)]), (H, W), "here")
    validate_prompt(ConceptPrompt("cat", [(0, 0, W + 5e-4, H)]), (H, W), "here")  # within the tolerance
    validate_prompt(ConceptPrompt(None, [(1, 1, 2, 2)]), (H, W), "here")
