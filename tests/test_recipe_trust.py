"""What makes a recipe's answer trustworthy: retention on general concepts, hard-negative discrimination, semantic
verification calibrated on human labels (the food recipe's own verify section), the adversarial hard-negative
rule, data-engine rounds, and intervals that say which differences are signal."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from recipes.config import RECIPES_DIR, load_recipe
from recipes.data import Dataset, hold_out
from recipes.runner import RecipeRun
from sam3_adapt.cli import main
from sam3_model.records import encode_mask
from synth.merge import MergeSettings, easy_negatives
from synth.ontology import ontology_from_mapping
from test_recipe_run import REDUCED, TOY
from tiny_clip import build_tiny_siglip

ARMS = ["zero-shot", "pl", "syn", "hq", "syn+hq"]


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    """The reduced demo, two data-engine rounds, verifier thresholds calibrated on hq.train."""
    out = tmp_path_factory.mktemp("rounds")
    recipe = load_recipe("demo", {**REDUCED, "arms": ARMS, "rounds": 2, "calibration": {"hq_images": 8}})
    said: list[str] = []
    run = RecipeRun(recipe, out, progress=False, say=said.append)
    return out, run.run(), said, run


def test_every_run_is_scored_on_the_general_test_set_too(two_rounds):
    out, outputs, _, _ = two_rounds
    rows = list(csv.DictReader(open(out / "results.csv", newline="")))
    zero = next(r for r in rows if r["arm"] == "zero-shot")
    for row in rows:
        assert -1 <= float(row["general_cgF1"]) <= 1 and 0 <= float(row["general_AP"]) <= 1
        change = float(row["general_cgF1"]) - float(zero["general_cgF1"])
        assert float(row["general_change"]) == pytest.approx(change, abs=2e-4)
        assert float(row["cgF1_low"]) <= float(row["cgF1"]) + 1e-9 <= float(row["cgF1_high"]) + 2e-9
        assert row["hn_IL_MCC"] != "" and 0 <= float(row["hn_FPR"]) <= 1
        assert (out / "runs" / row["run"] / "pairs-general-test.npz").is_file()
    assert (out / "tradeoff.png").stat().st_size > 1000
    text = (out / "results.md").read_text()
    assert "| general cgF1 | change on general |" in text and "hard-negative IL_MCC" in text
    assert "## Which differences are signal" in text and "general cgF1, syn - zero-shot" in text
    fit = (out / "runs" / "syn-n6-s0" / "fit.yaml").read_text()
    assert "general-test" in fit  # the fit config that retrains a run validates on both sets


def test_round_two_is_labelled_by_round_one_best_model(two_rounds):
    out, outputs, said, _ = two_rounds
    rows = outputs.rows
    first = [r for r in rows if int(r["round"]) == 1 and r["arm"] != "zero-shot"]
    best = max(first, key=lambda r: float(r["cgF1"]))  # one seed per group: the best group's best run
    second = [r for r in rows if int(r["round"]) == 2]
    assert sorted(r["arm"] for r in second) == ["pl", "syn", "syn+hq"]  # hq and zero-shot do not change
    assert all(r["run"].endswith("-r2") for r in second)
    syn2 = json.loads((out / "synth" / "pool-r2" / "pl.json").read_text())
    teachers = {a["provenance"]["teacher"]["checkpoint"] for a in syn2["annotations"]}
    assert teachers == {best["model"]} and best["model"].startswith(str(out / "runs"))
    syn1 = json.loads((out / "synth" / "pool" / "pl.json").read_text())
    assert {a["provenance"]["teacher"]["checkpoint"] for a in syn1["annotations"]} != teachers
    assert any(f"round 2: the teacher is round 1's best, {best['run']}" in line for line in said)
    assert "syn (round 2) - syn at 6 images" in (out / "results.md").read_text()


def test_thresholds_are_calibrated_on_hq_train_before_the_pool_is_judged(two_rounds):
    out, _, _, run = two_rounds
    sample = json.loads((out / "calibration" / "sample.json").read_text())
    assert sample["mask"] and {e["label"] for e in sample["mask"]} <= {"accept", "reject"}
    assert (out / "calibration" / "calibration.md").is_file()
    thresholds = json.loads((out / "calibration" / "thresholds.json").read_text())["thresholds"]
    text = (out / "results.md").read_text()
    assert "syn was judged by: geometric, crop_classifier" in text
    assert set(thresholds) == {"crop_classifier"}  # the only verifier with a threshold: judged at the new one
    threshold = thresholds["crop_classifier"]
    assert run.verify.crop_classifier.threshold == threshold != 0.5
    syn = json.loads((out / "synth" / "pool" / "syn.json").read_text())
    scores = [v["accept_score"] for a in syn["annotations"] for v in a["provenance"]["verifiers"]
              if v["verifier"] == "crop_classifier"]
    assert scores and min(scores) >= threshold
    assert f"verifier thresholds calibrated on 8 hq.train images (accept precision >= 0.9): crop_classifier " \
           f"{threshold:.3f}" in text
    report = json.loads((out / "verifier" / "report.json").read_text())
    assert report["images"] <= 16 - 8  # the crop classifier never trained on the calibration images


def test_general_held_out_images_never_reach_training(tmp_path):
    coco = {"images": [{"id": 900 + i, "file_name": f"img{i}.jpg", "width": 8, "height": 8} for i in range(10)],
            "annotations": [{"id": 5000 + i, "image_id": 900 + i, "category_id": 3, "bbox": [1, 1, 2, 2],
                             "area": 4, "iscrowd": 0} for i in range(10)],
            "categories": [{"id": 3, "name": "cup"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    train, test = hold_out(Dataset(str(tmp_path / "coco.json"), None, "coco"), 3, tmp_path / "split")
    a, b = json.loads(Path(train.path).read_text()), json.loads(Path(test.path).read_text())
    assert len(b["images"]) == 3 and len(a["images"]) == 7
    assert not {i["file_name"] for i in a["images"]} & {i["file_name"] for i in b["images"]}
    assert {x["image_id"] for x in b["annotations"]} == {i["id"] for i in b["images"]}
    assert train.images == test.images == str(tmp_path)
    # the choice depends on the file names, not on their order in the file
    coco["images"].reverse()
    (tmp_path / "reversed.json").write_text(json.dumps(coco))
    _, again = hold_out(Dataset(str(tmp_path / "reversed.json"), None, "coco"), 3, tmp_path / "split2")
    assert {i["file_name"] for i in json.loads(Path(again.path).read_text())["images"]} == \
        {i["file_name"] for i in b["images"]}


def test_a_general_section_in_the_old_shape_is_read_as_train(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nontology: {concepts: [a]}\nhq: {train: {path: t.json}, test: {path: t.json}}\n"
                      "general: {path: g.json}\nmixes: [none, general]\narms: [zero-shot, hq]\n")
    config = load_recipe(str(recipe))
    assert config.general.train.path == str(tmp_path / "g.json") and config.general.test is None
    assert "general.train" in capsys.readouterr().err


def _rle(box: tuple[int, int, int, int]) -> dict:
    mask = np.zeros((20, 20), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return encode_mask(mask)


def _pair(phrase: str, instances: list, candidates: list = (), rejected: bool = False) -> dict:
    verdict = {"rejected_by": "clip" if rejected else None, "verdicts": []}
    return {"phrase": phrase, "instances": [{"mask": m} for m in instances],
            "candidates": [{"mask": m} for m in candidates],
            "verification": {"instances": [verdict] * len(instances), "pair": {"verdicts": [], "rejected_by": None}}}


def test_the_adversarial_rule_keeps_only_negatives_the_teacher_confuses():
    ontology = ontology_from_mapping({"concepts": [{"name": "green circle", "parent": "circle"},
                                                   {"name": "purple circle", "parent": "circle"},
                                                   {"name": "green square", "hard_negatives": ["lime"]}]})
    circle = _rle((2, 2, 10, 10))
    record = {"pairs": [
        _pair("green circle", [circle]),  # accepted: purple circle is its sibling
        _pair("purple circle", [circle], rejected=True),  # the teacher confused them: a hard negative, kept
        _pair("green square", []),  # nothing confusable with it is present: an ordinary negative, kept
        _pair("lime", []),  # not confusable with anything present: kept
    ]}
    settings = MergeSettings("t")
    assert easy_negatives(record, ontology, settings) == {}
    record["pairs"][1] = _pair("purple circle", [], candidates=[_rle((12, 12, 18, 18))])  # elsewhere: easy
    easy = easy_negatives(record, ontology, settings)
    assert list(easy) == ["purple circle"] and "green circle" in easy["purple circle"]
    assert easy_negatives(record, ontology, MergeSettings("t", hard_negatives="all")) == {}


def test_the_food_recipe_verifies_with_its_semantic_verifier(tmp_path, capsys):
    """The food recipe's own verify and calibration sections, with tiny stand-in models and toy images."""
    siglip = build_tiny_siglip(tmp_path / "siglip")
    toy_ontology = {"concepts": [{"name": "green circle", "parent": "circle"},
                                 {"name": "purple circle", "parent": "circle"}]}
    overrides = {"base_model": str(RECIPES_DIR / "demo_base"), "ontology": toy_ontology, "verify": {"clip": {"model": str(siglip)}},
                 "hq": {"train": {"path": None, "toy": {**TOY, "num_images": 6, "seed": 1}},
                        "test": {"path": None, "toy": {**TOY, "num_images": 4}}},
                 "pool": {"source": {"pool": None, "toy": {**TOY, "num_images": 4, "seed": 2}}},
                 "calibration": {"hq_images": 4}, "general": None, "mixes": ["none"],
                 "arms": ["zero-shot", "pl", "syn", "hq"],
                 "synth": {"accelerator": "cpu", "devices": 1, "shard_size": 4}}
    recipe = load_recipe("food", overrides)
    assert recipe.verify.clip.prompt_template == "a photo of {phrase}" and recipe.calibration.target_precision == 0.9
    run = RecipeRun(recipe, tmp_path / "out", progress=False, say=lambda _: None)
    run.calibrate(None, run.data()["hq"])
    found = run.synth()
    decisions = [json.loads(line) for line in open(tmp_path / "out" / "synth" / "pool" / "decisions.jsonl")]
    summary = json.loads((tmp_path / "out" / "synth" / "pool" / "summary.json").read_text())
    assert "clip" in summary["verify"]["mask"] and summary["verify"]["mask"]["clip"]["judged"] > 0
    assert Path(found["syn"].path).is_file() and decisions
    assert (tmp_path / "out" / "calibration" / "sample.json").is_file()
    capsys.readouterr()
    assert main(["recipe", "check", "food"]) == 2  # the data are not here
    assert "verify.clip.model: model google/siglip-base-patch16-224" in capsys.readouterr().out
