"""Generate source: tiny random Stable Diffusion and unconditional (DDIM, DDPM) pipelines saved to disk and loaded by
path (offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_model.errors import ConfigError, ModelLoadError
from synth.ontology import ontology_from_mapping
from synth.sources import GenerateConfig, GenerateSource, InpaintConfig, PoolConfig, ProducedImage, SourceSkip
from tiny_diffusion import build_tiny_sd, build_tiny_unconditional

ONTOLOGY = ontology_from_mapping({"concepts": ["forklift", "pallet jack", {"name": "hand truck",
                                                                            "hard_negatives": ["trolley"]}]})


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_sd")
    return {"t2i": str(build_tiny_sd(root / "t2i")), "inpaint": str(build_tiny_sd(root / "inpaint", inpaint=True))}


def _config(pipeline: str, **kw) -> GenerateConfig:
    base = dict(pipeline=pipeline, images_per_concept=2, steps=2, height=64, width=64, batch_size=4)
    return GenerateConfig(**(base | kw))


def test_plan_is_deterministic_and_stable_per_concept(tmp_path: Path) -> None:
    source = GenerateSource(_config(str(tmp_path / "unused"), images_per_concept=3), ONTOLOGY)
    tasks = source.plan()  # no model is loaded to plan
    assert len(tasks) == 9 and tasks == GenerateSource(_config(str(tmp_path / "unused"), images_per_concept=3),
                                                       ONTOLOGY).plan()
    assert len({t["key"] for t in tasks}) == 9
    assert all(t["concept"] in t["prompt"] and isinstance(t["seed"], int) for t in tasks)
    assert "trolley" not in {t["concept"] for t in tasks}  # concepts only, not hard negatives
    only = GenerateSource(_config("x", images_per_concept=3, concepts=["hand truck"]), ONTOLOGY).plan()
    assert only == [t for t in tasks if t["concept"] == "hand truck"]  # restricting does not shift the others
    with pytest.raises(ConfigError, match="not in the ontology"):
        GenerateSource(_config("x", concepts=["crane"]), ONTOLOGY)
    with pytest.raises(ConfigError, match="concept"):
        GenerateSource(_config("x", prompt_templates=["a photo"]), ONTOLOGY)


def test_same_task_same_pixels_alone_or_in_a_batch(pipelines: dict[str, str]) -> None:
    source = GenerateSource(_config(pipelines["t2i"], negative_prompt="blurry"), ONTOLOGY)
    tasks = source.plan()
    source.setup("cpu")
    batch = source.produce(tasks[:4])
    alone = source.produce([tasks[2]])[0]
    assert all(isinstance(r, ProducedImage) and r.image.size == (64, 64) and r.image.mode == "RGB" for r in batch)
    assert np.array_equal(np.asarray(alone.image), np.asarray(batch[2].image))
    assert not np.array_equal(np.asarray(batch[0].image), np.asarray(batch[1].image))
    prov = alone.provenance
    assert prov["kind"] == "generated" and prov["pipeline"] == pipelines["t2i"]
    assert prov["pipeline_class"] == "StableDiffusionPipeline"
    assert prov["prompt"] == tasks[2]["prompt"] and prov["seed"] == tasks[2]["seed"]
    assert prov["negative_prompt"] == "blurry" and prov["steps"] == 2 and prov["concept"] == tasks[2]["concept"]
    assert alone.exact == [] and alone.exact_phrases == [] and alone.file is None


def test_inpaint_into_pool_backgrounds(pipelines: dict[str, str], tmp_path: Path) -> None:
    backgrounds = tmp_path / "bg"
    backgrounds.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(((48, 80), (90, 60))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(backgrounds / f"bg{i}.png")
    (backgrounds / "bad.png").write_bytes(b"junk")
    inpaint = InpaintConfig(backgrounds=PoolConfig(folder=str(backgrounds)), region=(0.3, 0.5))
    source = GenerateSource(_config(pipelines["inpaint"], images_per_concept=2, concepts=["forklift", "pallet jack"],
                                    inpaint=inpaint), ONTOLOGY)
    tasks = source.plan()
    for task in tasks:
        x0, y0, x1, y1 = task["region_xyxy_px"]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and 0.3 * 64 - 1 <= x1 - x0 <= 0.5 * 64 + 1
    results = source.produce(tasks)
    for task, result in zip(tasks, results):
        if task["background"]["path"].endswith("bad.png"):
            assert isinstance(result, SourceSkip) and "bad.png" in result.reason
        else:
            assert isinstance(result, ProducedImage) and result.image.size == (64, 64)
            assert result.provenance["region_xyxy_px"] == task["region_xyxy_px"]
            assert result.provenance["background"] == task["background"]["path"]
            assert result.provenance["pipeline_class"] == "StableDiffusionInpaintPipeline"
    good = [i for i, r in enumerate(results) if isinstance(r, ProducedImage)]
    assert good, "every background drawn was the broken one"
    again = source.produce([tasks[good[-1]]])[0]
    assert np.array_equal(np.asarray(again.image), np.asarray(results[good[-1]].image))


def test_missing_pipeline_is_model_load_error(tmp_path: Path) -> None:
    source = GenerateSource(_config(str(tmp_path / "no-such-pipeline")), ONTOLOGY)
    with pytest.raises(ModelLoadError) as err:
        source.setup("cpu")
    assert "no-such-pipeline" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_unconditional_pipeline_draws_the_domain_same_image_alone_or_in_a_batch(kind: str, tmp_path: Path) -> None:
    path = str(build_tiny_unconditional(tmp_path / kind, kind))
    config = GenerateConfig(pipeline=path, num_images=5, steps=3, height=24, width=24, batch_size=4, seed=7)
    source = GenerateSource(config, ONTOLOGY)
    tasks = source.plan()  # no model is loaded to plan
    assert tasks == GenerateSource(config, ONTOLOGY).plan() and len({t["key"] for t in tasks}) == 5
    assert all(t["concept"] is None and t["prompt"] is None for t in tasks)
    assert len({t["seed"] for t in tasks}) == 5
    source.setup("cpu")
    results = source.produce(tasks)  # a batch of 4, then 1
    alone = source.produce([tasks[2]])[0]
    assert all(isinstance(r, ProducedImage) and r.image.size == (24, 24) and r.image.mode == "RGB" for r in results)
    assert np.array_equal(np.asarray(alone.image), np.asarray(results[2].image))
    assert not np.array_equal(np.asarray(results[0].image), np.asarray(results[1].image))
    prov = alone.provenance
    assert prov["kind"] == "generated" and prov["unconditional"] is True and prov["pipeline"] == path
    assert prov["pipeline_class"] == ("DDIMPipeline" if kind == "ddim" else "DDPMPipeline")
    assert prov["concept"] is None and prov["prompt"] is None and prov["seed"] == tasks[2]["seed"]
    assert prov["steps"] == 3 and (prov["height"], prov["width"]) == (24, 24)
    assert alone.exact == [] and alone.exact_phrases == []


def test_bad_unconditional_configs_are_one_line(pipelines: dict[str, str], tmp_path: Path) -> None:
    path = str(build_tiny_unconditional(tmp_path / "ddim"))
    bad = [dict(num_images=-1), dict(num_images=4, concepts=["forklift"]),
           dict(num_images=4, inpaint=InpaintConfig(backgrounds=PoolConfig(folder=str(tmp_path))))]
    for kw in bad:
        with pytest.raises(ConfigError) as err:
            GenerateSource(_config(path, **kw), ONTOLOGY)
        assert "num_images" in str(err.value) and "\n" not in str(err.value)
    # the pipeline's kind must match: an unconditional one needs num_images, a prompted one refuses it
    for pipeline, kw, words in ((path, {}, "DDIMPipeline"), (pipelines["t2i"], dict(num_images=2), "takes a prompt")):
        source = GenerateSource(_config(pipeline, **kw), ONTOLOGY)
        with pytest.raises(ConfigError) as err:
            source.setup("cpu")
        assert words in str(err.value) and "num_images" in str(err.value) and "\n" not in str(err.value)
