"""The demo recipe end to end at a reduced size, the run plan, and the results files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from recipes.config import load_recipe
from recipes.data import Dataset
from recipes.jobs import COLUMNS, GENERAL_TEST_SET, TEST_SET
from recipes.results import REPORT_COLUMNS, group_rows, results_markdown
from recipes.runner import RecipeRun

TOY = {"size": 84, "objects": [1, 3], "min_object": 0.2, "max_object": 0.4}

# Every stage, a few images each: the shipped base model, toy HQ / pool / generated images, the trained verifier.
REDUCED = {
    "hq": {"train": {"toy": {**TOY, "num_images": 16, "seed": 11}},
           "test": {"toy": {**TOY, "num_images": 12, "seed": 12}}},
    "pool": {"source": {"toy": {**TOY, "num_images": 12, "seed": 13}}},
    "general": {"test": {"toy": {**TOY, "num_images": 6, "seed": 16}}},
    "generator": {"source": {"generate": {"num_images": 4, "steps": 10}}},  # the shipped diffusion model
    "arms": ["zero-shot", "pl", "syn", "hq", "syn+hq", "gen"],
    "mixes": ["none"],
    "sizes": [6],
    "train": {"steps": 2, "parallel_jobs": 1, "threads_per_job": None, "max_minutes": None},
    "verifier_training": {"epochs": 2},
    "synth": {"shard_size": 8},
}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One reduced demo run (and a rerun that must skip everything)."""
    out = tmp_path_factory.mktemp("demo")
    recipe = load_recipe("demo", REDUCED)
    first = RecipeRun(recipe, out, progress=False, say=lambda _: None).run()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    said: list[str] = []
    second = RecipeRun(recipe, out, progress=False, say=said.append).run()
    return out, first, second, stamps, said


def test_demo_runs_every_stage_and_writes_the_documented_results(demo_run):
    out, first, _, _, _ = demo_run
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == (*COLUMNS, *REPORT_COLUMNS)
    assert list(COLUMNS[:7]) == ["arm", "train_images", "seed", "cgF1", "pmF1", "IL_MCC", "AP"]
    assert [r["arm"] for r in rows] == ["zero-shot", "pl", "syn", "hq", "syn+hq", "gen"]
    for row in rows:
        assert 0.0 <= float(row["pmF1"]) <= 1.0 and 0.0 <= float(row["AP"]) <= 1.0
        assert -1.0 <= float(row["IL_MCC"]) <= 1.0  # an MCC, so cgF1 = pmF1 x IL_MCC can be negative too
        assert float(row["cgF1"]) == pytest.approx(float(row["pmF1"]) * float(row["IL_MCC"]), abs=0.1)
        assert 0.0 <= float(row["general_pmF1"]) <= 1.0  # every run, zero-shot too, scored on the general test
        assert float(row["cgF1_low"]) <= float(row["cgF1"]) <= float(row["cgF1_high"])
        assert float(row["general_cgF1_low"]) <= float(row["general_cgF1"]) <= float(row["general_cgF1_high"])
        assert (out / "runs" / row["run"] / f"pairs-{TEST_SET}.npz").is_file()
        assert (out / "runs" / row["run"] / f"pairs-{GENERAL_TEST_SET}.npz").is_file()
    trained = [r for r in rows if r["arm"] != "zero-shot"]
    assert all(int(r["steps"]) == 2 and 0 < int(r["train_images"]) <= 6 for r in trained)
    syn_hq = next(r for r in rows if r["arm"] == "syn+hq")
    assert int(syn_hq["train_images"]) == 6  # 3 SYN + 3 HQ images

    text = (out / "results.md").read_text()
    assert ("| arm | train images | seeds | domain cgF1 | gain over zero-shot | general cgF1 | change on general |"
            in text and "scaling.png" in text and "tradeoff.png" in text and "## Which differences are signal" in text)
    for picture in ("scaling.png", "tradeoff.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the data engine's datasets, with provenance, and the trained verifier in the chain
    for name in ("pl.json", "syn.json", "decisions.jsonl", "summary.json"):
        assert (out / "synth" / "pool" / name).is_file()
    mask_verifiers = json.loads((out / "synth" / "pool" / "summary.json").read_text())["verify"]["mask"]
    assert list(mask_verifiers) == ["geometric", "crop_classifier"]  # the verifier trained on HQ is in the chain
    assert (out / "verifier" / "crop_classifier.safetensors").is_file()
    assert (out / "synth" / "gen" / "syn.json").is_file()
    # W&B: one offline run per training (and zero-shot) plus the summary run
    assert len(list(out.glob("runs/*/wandb/offline-run-*"))) == len(rows)
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    assert json.loads((out / "recipe.json").read_text())["recipe"]["name"] == "demo"
    assert set(first.timings) == {"data", "verifier", "calibrate", "synth", "train", "report", "export"}


def test_the_best_arm_is_exported_for_transformers(demo_run):
    from transformers import Sam3Model, Sam3Processor

    out, first, _, _, _ = demo_run
    assert first.export == out / "export"
    model = Sam3Model.from_pretrained(out / "export")
    processor = Sam3Processor.from_pretrained(out / "export")
    assert model.config.detr_decoder_config.num_queries > 0 and processor.tokenizer is not None
    chosen = json.loads((out / "export.json").read_text())
    rows = [r for r in first.rows if r["arm"] != "zero-shot"]
    assert chosen["cgF1"] == max(float(r["cgF1"]) for r in rows)
    assert "README.md" in {p.name for p in (out / "export").iterdir()}


def test_a_rerun_skips_finished_work(demo_run):
    out, first, second, stamps, said = demo_run
    assert second.rows == first.rows
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")} == stamps
    assert any("6 of 6 runs already finished" in line for line in said)
    assert second.timings["train"] < 5


def test_mixing_plans_general_data_one_to_one(tmp_path):
    recipe = load_recipe("demo", {"arms": ["zero-shot", "syn", "syn+hq"], "mixes": ["none", "general"],
                                  "sizes": [10, 40], "seeds": [0, 1]})
    fake = {k: Dataset(str(tmp_path / f"{k}.json"), None, "saco") for k in ("hq", "test", "syn", "pl", "general")}
    jobs = RecipeRun(recipe, tmp_path, progress=False).jobs(fake)
    names = [j.name for j in jobs]
    assert names[0] == "zero-shot" and len(jobs) == 1 + 2 * 2 * 2 * 2
    assert "syn+hq+general-n40-s1" in names
    mixed = next(j for j in jobs if j.name == "syn+hq+general-n40-s1")
    assert [(d.name, d.max_images, d.weight) for d in mixed.train_data] == [
        ("syn", 20, 0.5), ("hq", 20, 0.5), ("general", None, 1.0)]
    assert mixed.domain_data == ["syn", "hq"]
    plain = next(j for j in jobs if j.name == "syn-n10-s0")
    assert [(d.name, d.max_images) for d in plain.train_data] == [("syn", 10)]


def test_results_markdown_reports_mean_spread_and_gain():
    rows = [{"arm": "zero-shot", "mix": "none", "train_images": 0, "seed": 0, "cgF1": 0.1, "pmF1": 0.2,
             "IL_MCC": 0.5, "AP": 0.05, "run": "zero-shot"}]
    rows += [{"arm": "hq", "mix": "general", "train_images": 50, "requested_images": 50, "seed": s, "cgF1": c,
              "pmF1": 0.5, "IL_MCC": 0.8, "AP": 0.3, "run": f"hq+general-n50-s{s}"} for s, c in ((0, 0.3), (1, 0.5))]
    [zero, hq] = group_rows(rows)
    assert hq.mean("cgF1") == pytest.approx(0.4) and hq.spread("cgF1") == pytest.approx(0.1414, abs=1e-4)
    text = results_markdown(rows, "t")
    assert "| hq + general 1:1 | 50 | 2 | 0.400 | +0.300 |" in text  # without pair tables: no interval
    assert "Best: **hq + general 1:1** with 50 images" in text


def test_the_shipped_demo_base_is_a_plain_transformers_checkpoint():
    from transformers import Sam3Model

    base = Path(load_recipe("demo").base_model)
    training = json.loads((base / "training.json").read_text())
    model = Sam3Model.from_pretrained(base)
    assert model.config.vision_config.backbone_config.image_size == training["training"]["size"]
    assert training["test_metrics"]["val/cgF1"] > 0.1  # it learned its general concepts


def test_each_run_writes_the_fit_config_that_retrains_it(demo_run, tmp_path):
    """`sam3-adapt fit --config runs/<run>/fit.yaml` trains the arm again: same steps, same test scores."""
    import yaml

    from sam3_adapt.cli import main

    out, first, _, _, _ = demo_run
    row = next(r for r in first.rows if r["arm"] == "hq")
    config = yaml.safe_load((out / "runs" / row["run"] / "fit.yaml").read_text())
    assert config["model"]["trainable"]["mode"] == "full" and config["trainer"]["max_steps"] == 2
    config["trainer"]["default_root_dir"] = str(tmp_path / "again")
    config["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger"}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(tmp_path / "fit.yaml")]) == 0
    import csv

    (metrics,) = (tmp_path / "again").glob("version_*/metrics.csv")
    last = [r for r in csv.DictReader(metrics.open()) if r.get(f"val/{TEST_SET}/cgF1")][-1]
    for column in ("cgF1", "pmF1", "IL_MCC", "AP", "general_cgF1", "general_AP"):  # both validation sets
        name, test_set = (column[8:], GENERAL_TEST_SET) if column.startswith("general_") else (column, TEST_SET)
        key = f"val/{test_set}/{'AP_mask' if name == 'AP' else name}"
        assert float(last[key]) == pytest.approx(float(row[column]), abs=1e-3), column
