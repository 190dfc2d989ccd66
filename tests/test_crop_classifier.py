"""The crop-classifier verifier: trained on human-labelled objects, it tells the toy patterns apart."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from sam3_model.errors import ModelLoadError
from sam3_model.records import Instance, decode_mask, encode_mask
from synth.sources.toy import render_toy_image
from verifiers.base import VerifyItem
from verifiers.crop_classifier import CropClassifierConfig, CropClassifierVerifier, LabelledObject, \
    train_crop_classifier
from verifiers.geometric import mask_box

PHRASES = ["striped circle", "dotted circle"]
ATTRS = [{"shape": "circle", "pattern": "striped", "colour": None},
         {"shape": "circle", "pattern": "dotted", "colour": None}]


def toy_examples(seed: int, n: int) -> list[tuple[Image.Image, list[tuple[LabelledObject, str]]]]:
    """Toy images of striped and dotted circles (and distractors), with each object's labels and true pattern."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        pixels, objects = render_toy_image(rng, 84, 84, (1, 3), "noise", 0.25, 0.4, ATTRS, 0.9)
        labelled = []
        for obj in objects:
            name = f"{obj.pattern} {obj.shape}"
            pos = frozenset({name}) & set(PHRASES)
            labelled.append((LabelledObject(encode_mask(obj.mask), pos, frozenset(PHRASES) - pos), name))
        out.append((Image.fromarray(pixels), labelled))
    return out


@pytest.fixture(scope="module")
def trained():
    train = toy_examples(0, 60)
    verifier, report = train_crop_classifier([(img, [o for o, _ in objs]) for img, objs in train], PHRASES,
                                             CropClassifierConfig(epochs=25))
    return verifier, report


def test_it_learns_the_pattern_of_held_out_objects(trained):
    verifier, report = trained
    assert report["examples"] > 100 and report["train_accuracy"] > 0.9
    items, truth = [], []
    for image, objects in toy_examples(1, 30):
        for obj, name in objects:
            if name in PHRASES:
                box = mask_box(decode_mask(obj.mask).astype(bool))
                inst = Instance(mask=obj.mask, box_xyxy_px=box, score=0.9)
                items.append(VerifyItem(image=image, phrase="striped circle", instances=[inst]))
                truth.append(name == "striped circle")
    verdicts = [v[0] for v in verifier.verify_masks(items)]
    accuracy = np.mean([v.accepted == t for v, t in zip(verdicts, truth)])
    assert len(items) > 20 and accuracy > 0.85  # a dotted circle asked as "striped circle" is rejected
    assert all(0 <= v.accept_score <= 1 and v.verifier == "crop_classifier" for v in verdicts)


def test_unknown_phrases_are_not_judged_and_save_load_round_trips(trained, tmp_path):
    verifier, _ = trained
    image, objects = toy_examples(2, 1)[0]
    mask = objects[0][0].mask
    inst = Instance(mask=mask, box_xyxy_px=(0.0, 0.0, 1.0, 1.0), score=0.9)
    [[verdict]] = verifier.verify_masks([VerifyItem(image=image, phrase="red bar", instances=[inst])])
    assert verdict.accepted and "outside the classifier's vocabulary" in verdict.reason
    verifier.save(tmp_path / "v")
    loaded = CropClassifierVerifier.from_pretrained(tmp_path / "v")
    item = VerifyItem(image=image, phrase="dotted circle", instances=[inst])
    assert loaded.verify_masks([item])[0][0].accept_score == pytest.approx(
        verifier.verify_masks([item])[0][0].accept_score, abs=1e-6)
    with pytest.raises(ModelLoadError, match="train a crop classifier"):
        CropClassifierVerifier.from_pretrained(tmp_path / "missing")


def test_training_runs_through_lightning_and_leaves_torch_flags_alone(monkeypatch):
    fitted, fit = [], L.Trainer.fit

    def recording_fit(self, *args, **kwargs):
        fitted.append(self)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "fit", recording_fit)
    data = [(img, [o for o, _ in objs]) for img, objs in toy_examples(3, 6)]
    config = CropClassifierConfig(epochs=2, batch_size=8)
    deterministic, benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    verifier, report = train_crop_classifier(data, PHRASES, config)
    [trainer] = fitted
    assert trainer.global_step == 2 * math.ceil(report["examples"] / 8)
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == (deterministic, benchmark)
    again, report_again = train_crop_classifier(data, PHRASES, config)  # seeded: the same weights and report
    assert report_again == report
    for key, value in verifier.net.state_dict().items():
        assert torch.equal(value, again.net.state_dict()[key]), key
