"""The demo's gen arm end to end: the shipped DDPM (recipes/demo_gen) draws the images, the teacher labels them,
an arm trains on them and is scored, through `sam3-adapt recipe run demo` at a reduced size."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from recipes.config import load_recipe

TOY = {"size": 84, "objects": [1, 3], "min_object": 0.2, "max_object": 0.4}
GENERATED = 12
OVERRIDES = {  # the demo's own generator (pipeline, size, seed), fewer images and denoising steps
    "hq.train": {"toy": {**TOY, "num_images": 16, "seed": 11}},
    "hq.test": {"toy": {**TOY, "num_images": 8, "seed": 12}},
    "generator.source.generate.num_images": GENERATED,
    "generator.source.generate.steps": 20,
    "arms": ["zero-shot", "gen"], "mixes": ["none"], "sizes": [6],
    "train": {"steps": 2, "parallel_jobs": 1, "threads_per_job": None},
    "verifier_training": {"epochs": 2}, "synth": {"shard_size": 16}, "tracking": {"wandb": "disabled"},
}


def test_the_shipped_generator_is_a_small_diffusers_pipeline():
    generate = load_recipe("demo").generator.source.generate
    folder = Path(generate.pipeline)
    assert folder.is_dir() and folder.name == "demo_gen"  # resolved next to the recipe
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "DDIMPipeline"
    weights = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert 0 < weights < 8_000_000
    training = json.loads((folder / "training.json").read_text())
    assert training["steps_done"] > 0 and training["loss"]["last_100"] < training["loss"]["first_100"]
    assert Image.open(folder / "samples.png").size[0] >= 4 * training["training"]["size"]  # a 4 x 4 grid


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sam3_adapt.cli import main

    out = tmp_path_factory.mktemp("gen") / "out"
    sets = [f"--{key}={json.dumps(value)}" for key, value in OVERRIDES.items()]
    assert main(["recipe", "run", "demo", "--out", str(out), "--quiet", *sets]) == 0
    return out


def test_the_gen_arm_trains_on_images_the_ddpm_drew_and_the_teacher_labelled(gen_run: Path):
    gen = gen_run / "synth" / "gen"
    images = sorted((gen / "images").rglob("*.png"))
    assert len(images) == GENERATED and all(Image.open(p).size == (84, 84) for p in images)
    pl = json.loads((gen / "pl.json").read_text())
    sources = [a["provenance"]["source"] for a in pl["annotations"]]
    assert sources, "the teacher found no instance in any generated image"
    for source in sources:  # every pseudo-label comes from an image the diffusers pipeline drew
        assert source["kind"] == "generated" and source["pipeline_class"] == "DDIMPipeline"
        assert source["unconditional"] is True and source["concept"] is None
        assert Path(source["pipeline"]).name == "demo_gen" and source["steps"] == 20
    with open(gen_run / "results.csv", newline="") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"zero-shot", "gen"}
    assert math.isfinite(float(rows["gen"]["cgF1"])) and int(rows["gen"]["train_images"]) > 0
