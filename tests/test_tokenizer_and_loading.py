"""The offline tokenizer equals the official SAM 3 tokenizer; models and processors load and round-trip offline."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image
from transformers import Sam3Processor

from sam3_model.errors import ModelLoadError
from sam3_model.loading import load_model
from sam3_model.tokenizer import SAM3_CONTEXT_LENGTH, bpe_vocab_path, build_offline_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STRINGS = [
    "a photo of a cat",
    "Red Traffic LIGHT",
    "dog's tail, wagging!",
    "it's a can't-miss 3-pack (x2)",
    "person  on\ta   bicycle",
    "1984 model 737-800 jet",
    "  leading and trailing spaces  ",
    "café crème & naïve résumé",
]
LONG = " ".join(f"word{i} tree" for i in range(40))  # far more than 32 tokens


@pytest.fixture(scope="module")
def tokenizer():
    return build_offline_tokenizer()


@pytest.fixture(scope="module")
def official():
    # open_clip's SimpleTokenizer is the same code as sam3/model/tokenizer_ve.py (lower-case, ftfy, truncate + eot)
    return SimpleTokenizer(bpe_path=str(bpe_vocab_path()), context_length=SAM3_CONTEXT_LENGTH)


def test_canonical_ids(tokenizer):
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize("text", STRINGS)
def test_ids_equal_official_tokenizer(tokenizer, official, text):
    ours = tokenizer(text, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    ref = official([text])[0]  # (32,), padded with 0
    n = int(ours["attention_mask"][0].sum())
    assert n == int((ref != 0).sum())
    assert ours["input_ids"][0, :n].tolist() == ref[:n].tolist()
    assert ours["input_ids"].shape == (1, 32)


def test_truncation_matches_official(tokenizer, official):
    ours = tokenizer(LONG, padding="max_length", max_length=32, truncation=True)["input_ids"]
    ref = official([LONG])[0].tolist()
    assert len(ours) == 32 and ours[0] == 49406 and ours[-1] == 49407
    assert ours == ref  # official truncates to 32 and makes the last token eot


def test_load_tiny_offline():
    model, processor = load_model("tiny")
    assert not model.training
    assert processor.image_processor.size == {"height": 112, "width": 112}
    enc = processor(images=[Image.new("RGB", (90, 60))], text=["cat"], return_tensors="pt")
    assert enc["pixel_values"].shape == (1, 3, 112, 112)
    assert enc["input_ids"].shape == (1, 32)


def test_save_and_reload_is_identical(tmp_path):
    model, processor = load_model("tiny", seed=3)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model2, processor2 = load_model(str(tmp_path))
    sd1, sd2 = model.state_dict(), model2.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    enc = processor(images=[image], text=["a red car"], return_tensors="pt")
    enc2 = processor2(images=[image], text=["a red car"], return_tensors="pt")
    assert all(torch.equal(enc[k], enc2[k]) for k in enc)
    with torch.inference_mode():
        out = model(pixel_values=enc["pixel_values"], input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        out2 = model2(pixel_values=enc2["pixel_values"], input_ids=enc2["input_ids"],
                      attention_mask=enc2["attention_mask"])
    for key in ("pred_logits", "pred_boxes", "presence_logits", "pred_masks"):  # same weights, separate passes
        torch.testing.assert_close(out[key], out2[key], rtol=0, atol=1e-6, msg=key)


def test_processor_round_trip(tmp_path):
    _, processor = load_model("tiny")
    processor.save_pretrained(tmp_path)
    reloaded = Sam3Processor.from_pretrained(tmp_path)
    assert reloaded.image_processor.size == processor.image_processor.size
    assert reloaded.image_processor.mask_size == processor.image_processor.mask_size
    texts = STRINGS + [LONG]
    kw = dict(padding="max_length", max_length=32, truncation=True)
    assert reloaded.tokenizer(texts, **kw)["input_ids"] == processor.tokenizer(texts, **kw)["input_ids"]


def test_different_seeds_differ():
    a, _ = load_model("tiny", seed=0)
    b, _ = load_model("tiny", seed=1)
    assert not torch.equal(a.detr_decoder.query_embed.weight, b.detr_decoder.query_embed.weight)


def test_hub_id_offline_is_one_actionable_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_model("sam3-adapt-tests/no-such-model")
    message = str(info.value)
    assert "\n" not in message and "local directory" in message


def test_missing_path_raises(tmp_path):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_directory_without_processor_gets_an_offline_processor(tmp_path):
    from sam3_model.loading import load_model

    model, _ = load_model("tiny")
    model.save_pretrained(tmp_path)  # weights only, as many fine-tuning scripts leave them
    _, processor = load_model(str(tmp_path))
    assert processor.image_processor.size == {"height": 112, "width": 112}
    assert processor.tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
