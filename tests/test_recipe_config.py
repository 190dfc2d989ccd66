"""Recipes as files: the built-in recipes load, `recipe check` says what is missing and where to get it, a bad
recipe fails with one line naming the file and the key, and dotted overrides merge into a recipe."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from sam3_adapt.cli import main
from recipes.check import check_message, check_recipe
from recipes.config import ARMS, BUILTIN, RECIPES_DIR, RecipeConfig, load_recipe
from recipes.data import synth_config
from sam3_model.errors import ConfigError

REAL = ("food", "medical", "industrial")
COCO = {"images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}], "annotations": [],
        "categories": [{"id": 1, "name": "striped circle"}]}


@pytest.fixture
def empty_hf_cache(monkeypatch, tmp_path):
    """An empty Hugging Face cache, so that no Hub model counts as downloaded on any machine."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def hub_offline(monkeypatch, empty_hf_cache):
    """No Hub: a Hub model that is not cached is missing."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def hub_online(monkeypatch, empty_hf_cache):
    """The Hub can be reached: a Hub model that is not cached is downloaded on first use (nothing is fetched here)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


def write_recipe(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ready_recipe(folder: Path) -> dict:
    """A recipe mapping for `folder` with every file and folder it names created there (check tests existence)."""
    data = folder / "data"
    (data / "pool").mkdir(parents=True)
    (data / "general" / "images").mkdir(parents=True)
    (folder / "models" / "sd").mkdir(parents=True)  # a local diffusers folder, relative to the recipe
    for name in ("train", "test", "general/general"):
        (data / f"{name}.json").write_text(json.dumps(COCO))
    return {
        "name": "mine",
        "base_model": "tiny",  # a preset: built in code, nothing to download
        "ontology": {"concepts": [{"name": "striped circle", "parent": "circle"}]},
        "hq": {"train": {"path": "data/train.json", "get": "run the converter"},
               "test": {"path": "data/test.json"}},
        "pool": {"source": {"pool": {"folder": "data/pool"}}, "get": "copy the photos"},
        "generator": {"source": {"generate": {"pipeline": "models/sd", "images_per_concept": 2}}},
        "general": {"train": {"path": "data/general/general.json", "images": "data/general/images"}},
        "verify": {"geometric": {}},
        "arms": list(ARMS),
        "mixes": ["none", "general"],
        "sizes": [2],
    }


# ----- the built-in recipes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_recipe_loads_with_valid_data_engine_sections(name):
    recipe = load_recipe(name)
    assert isinstance(recipe, RecipeConfig) and recipe.name == name
    if isinstance(recipe.ontology, str):  # its relative paths were made absolute next to the YAML file, at load
        assert Path(recipe.ontology).is_absolute()
    for images in (recipe.pool, recipe.generator):  # the data-engine config each image source becomes
        if images is not None:
            config = synth_config(recipe, images, None, progress=False)
            assert config.load_ontology().phrases()


@pytest.mark.parametrize("name", REAL)
def test_the_real_recipes_run_the_papers_study_on_sam3_and_a_gpu(name):
    recipe = load_recipe(name)
    assert recipe.base_model == "facebook/sam3"
    assert (recipe.train.accelerator, recipe.train.trainable.mode, recipe.train.precision) == ("gpu", "lora", "bf16-mixed")
    assert recipe.synth.accelerator == "gpu" and recipe.train.parallel_jobs == 1
    assert recipe.arms == list(ARMS) and recipe.mixes == ["none", "general"] and recipe.seeds == [0, 1, 2]
    assert recipe.sizes == sorted(recipe.sizes) and len(recipe.sizes) == 3
    for ref in (recipe.hq.train, recipe.hq.test):  # converted public data, with where to get it
        assert ref.toy is None and ref.path.endswith(".json")
        assert Path(ref.path).is_relative_to(RECIPES_DIR)  # made absolute at load, next to the recipe file
        assert "https://" in ref.get and "sam3-adapt convert" in ref.get
    assert recipe.pool is not None and recipe.pool.get and recipe.pool.source.pool is not None
    assert recipe.generator.source.generate.pipeline == "stabilityai/sd-turbo"  # a Hub id stays one
    general = recipe.general  # the 1:1 mix, and 500 images held out of it: every run is scored on them
    assert general.train is not None and "cocodataset.org" in general.train.get and general.held_out == 500
    assert general.has_test and "--general=null" in general.train.get
    assert recipe.verify.clip.model == "google/siglip-base-patch16-224"  # semantic verification by default
    assert recipe.calibration is not None and recipe.calibration.hq_images > 0 and recipe.calibration.human is None
    teacher = recipe.teacher_config()
    assert (teacher.model, teacher.threshold, teacher.parent_prompt) == ("facebook/sam3", 0.5, "fallback")
    assert recipe.verify.geometric is not None and recipe.verify.teacher_confidence is not None
    assert recipe.tracking.project == f"sam3-adapt-{name}"
    concepts = recipe.ontology["concepts"]
    assert concepts and all(c.get("parent") for c in concepts)


def test_the_real_recipes_data_engine_sources_are_checked_on_load():
    with pytest.raises(ConfigError, match=r"food\.yaml: unknown key 'generator\.source\.generate\.pipline'; did you "
                                          r"mean 'generator\.source\.generate\.pipeline'\?"):
        load_recipe("food", {"generator": {"source": {"generate": {"pipline": "x"}}}})


# ----- recipe check ---------------------------------------------------------------------------------------------
def test_check_names_each_missing_file_of_food_and_where_to_get_it(hub_offline):
    recipe = load_recipe("food")
    findings = {f.key: f for f in check_recipe(recipe)}
    for split in ("train", "test"):
        found = findings[f"hq.{split}"]
        assert found.fatal
        assert str(RECIPES_DIR / "data" / "food" / "FoodSeg103" / f"{split}.json") in found.what
        assert "https://xiongweiwu.github.io/foodseg103.html" in found.get
        assert (f"sam3-adapt convert foodseg103 --root data/food/FoodSeg103 --split {split} "
                f"--out data/food/FoodSeg103/{split}.json") in found.get
    assert findings["pool.source.pool.folder"].fatal and "FoodSeg103" in findings["pool.source.pool.folder"].get
    assert "hf download facebook/sam3" in findings["base_model"].get and findings["base_model"].fatal
    assert findings["generator.source.generate.pipeline"].fatal
    assert findings["general.train"].fatal and "cocodataset.org" in findings["general.train"].get
    assert findings["verify.clip.model"].fatal  # offline here; listed among the downloads online
    message = check_message(recipe, list(findings.values()), "food")
    assert message.splitlines()[0] == f"recipe food: {len(findings)} missing:"
    assert all(f"  {f.line()}" in message.splitlines() for f in findings.values())


def test_recipe_check_cli_exits_2_and_prints_the_missing_files_and_their_source(hub_offline, capsys):
    assert main(["recipe", "check", "food"]) == 2
    out = capsys.readouterr().out
    assert f"hq.train: annotation file {RECIPES_DIR / 'data/food/FoodSeg103/train.json'} not found." in out
    assert f"hq.test: annotation file {RECIPES_DIR / 'data/food/FoodSeg103/test.json'} not found." in out
    assert "Get it: FoodSeg103 from https://xiongweiwu.github.io/foodseg103.html" in out
    assert "--split test --out data/food/FoodSeg103/test.json" in out


def test_overrides_point_a_builtin_recipe_at_your_files_and_hub_models_download_on_first_use(hub_online, tmp_path,
                                                                                              capsys):
    data = tmp_path / "FoodSeg103"
    (data / "Images" / "img_dir" / "train").mkdir(parents=True)
    for split in ("train", "test"):
        (data / f"{split}.json").write_text(json.dumps(COCO))
    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    (tmp_path / "coco" / "val.json").write_text(json.dumps(COCO))
    sets = [f"hq.train.path={data / 'train.json'}", f"hq.test.path={data / 'test.json'}",
            f"pool.source.pool.folder={data / 'Images/img_dir/train'}", "mixes=[none]",
            f"general.train.path={tmp_path / 'coco' / 'val.json'}", f"general.train.images={tmp_path / 'coco' / 'val2017'}"]
    assert main(["recipe", "check", "food", *[f"--{s}" for s in sets]]) == 0
    out = capsys.readouterr().out
    assert out.startswith("recipe food: ready; 3 model(s) will be downloaded")
    assert "base_model: model facebook/sam3 is not in the local Hugging Face cache." in out
    assert "generator.source.generate.pipeline: model stabilityai/sd-turbo" in out
    assert "verify.clip.model: model google/siglip-base-patch16-224" in out  # the semantic verifier


def test_a_recipe_with_its_data_present_is_ready_and_a_preset_base_needs_no_download(hub_offline, tmp_path,
                                                                                     monkeypatch, capsys):
    path = write_recipe(tmp_path / "study", ready_recipe(tmp_path / "study"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths resolve against the recipe's folder, not the working directory
    recipe = load_recipe(path)
    assert check_recipe(recipe) == []
    assert main(["recipe", "check", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "recipe mine: ready."


def test_check_reports_only_what_is_missing_with_its_get_text(hub_offline, tmp_path):
    folder = tmp_path / "study"
    path = write_recipe(folder, ready_recipe(folder))
    (folder / "data" / "train.json").unlink()
    (folder / "data" / "test.json").unlink()
    (folder / "data" / "pool").rmdir()
    lines = [f.line() for f in check_recipe(load_recipe(path))]
    assert lines == [f"hq.train: annotation file {folder / 'data/train.json'} not found. Get it: run the converter",
                     f"hq.test: annotation file {folder / 'data/test.json'} not found.",
                     f"pool.source.pool.folder: image folder {folder / 'data/pool'} not found. Get it: copy the photos"]


def test_check_skips_what_the_chosen_arms_and_mixes_do_not_use(hub_offline, tmp_path):
    folder = tmp_path / "study"
    path = write_recipe(folder, ready_recipe(folder))
    for item in ("data/pool", "models/sd", "data/general/images"):
        (folder / item).rmdir()
    assert len(check_recipe(load_recipe(path))) == 3
    assert check_recipe(load_recipe(path, {"arms": ["zero-shot", "hq"], "mixes": ["none"]})) == []


def test_hub_ids_with_dots_are_hub_models_and_paths_are_local_folders(hub_online, tmp_path):
    folder = tmp_path / "study"
    path = write_recipe(folder, ready_recipe(folder))
    recipe = load_recipe(path, {"generator": {"source": {"generate": {"pipeline": "black-forest-labs/FLUX.1-schnell"}}},
                                "verify": {"vlm": {"model": "Qwen/Qwen2.5-VL-3B-Instruct"},
                                           "clip": {"model": "./models/clip"}}})
    findings = {f.key: f for f in check_recipe(recipe)}
    for key, model in (("generator.source.generate.pipeline", "black-forest-labs/FLUX.1-schnell"),
                       ("verify.vlm.model", "Qwen/Qwen2.5-VL-3B-Instruct")):
        assert not findings[key].fatal and findings[key].what == f"model {model} is not in the local Hugging Face cache"
    assert findings["verify.clip.model"].fatal
    assert findings["verify.clip.model"].what == "model directory models/clip not found"


def test_check_finds_a_missing_toy_ontology_file(hub_offline, tmp_path):
    folder = tmp_path / "study"
    data = ready_recipe(folder)
    data["general"] = {"train": {"toy": {"num_images": 4}, "ontology": "general-ontology.yaml"}}
    path = write_recipe(folder, data)
    assert [f.line() for f in check_recipe(load_recipe(path))] == [
        f"general.train.ontology: {folder / 'general-ontology.yaml'} not found."]
    (folder / "general-ontology.yaml").write_text("concepts: [{name: circle}]\n")
    assert check_recipe(load_recipe(path)) == []


# ----- bad recipes ----------------------------------------------------------------------------------------------
def _drop_pool(data: dict) -> None:
    del data["pool"]
    data["arms"] = ["zero-shot", "syn", "hq"]


BAD = {
    "unknown arm": ({"arms": ["zero-shot", "finetune"]}, ["arms: unknown arm(s) 'finetune'"]),
    "general mix without general data": ({"mixes": ["none", "general"]}, ["mixes: 'general' needs general.train"]),
    "syn arm without a pool": (_drop_pool, ["arms: 'syn' needs a pool section"]),
    "wrong type": ({"train": {"steps": "many"}}, ["train.steps: expected an integer, got 'many'"]),
    "path and toy": ({"hq": {"train": {"path": "t.json", "toy": {"num_images": 2}}}},
                     ["hq.train: a dataset needs exactly one of path"]),
    "unknown key": ({"trian": {"steps": 5}}, ["unknown key 'trian'"]),
    "bad pool source key": ({"pool": {"source": {"pool": {"foldr": "photos"}}}},
                            ["unknown key 'pool.source.pool.foldr'; did you mean 'pool.source.pool.folder'?"]),
    "bad teacher value": ({"teacher": {"threshold": "high"}}, ["teacher.threshold: expected a number, got 'high'"]),
    "steps below one": ({"train": {"steps": 0}}, ["train.steps must be >= 1, got 0"]),
}


def _bad_recipe(folder: Path, change) -> Path:
    data = {"name": "bad", "ontology": {"concepts": [{"name": "polyp"}]},
            "hq": {"train": {"path": "train.json"}, "test": {"path": "test.json"}},
            "pool": {"source": {"pool": {"folder": "photos"}}},
            "arms": ["zero-shot", "pl", "syn", "hq"], "mixes": ["none"]}
    data = copy.deepcopy(data)
    if callable(change):
        change(data)
    else:
        for key, value in change.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    return write_recipe(folder, data)


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_recipe_is_one_config_error_naming_the_file_and_key(case, tmp_path):
    change, expected = BAD[case]
    path = _bad_recipe(tmp_path, change)
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for text in expected:
        assert text in message


@pytest.mark.parametrize("case", ["unknown arm", "syn arm without a pool", "wrong type", "path and toy"])
def test_the_cli_says_a_bad_recipe_in_one_line_without_a_traceback(case, tmp_path, capsys):
    path = _bad_recipe(tmp_path, BAD[case][0])
    assert main(["recipe", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(f"sam3-adapt: error: {path}: ") and BAD[case][1][0] in captured.err


def test_the_cli_says_a_missing_recipe_file_in_one_line(tmp_path, capsys):
    assert main(["recipe", "check", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such recipe file" in err and "demo, food, medical, industrial" in err


# ----- overrides ------------------------------------------------------------------------------------------------
def test_load_recipe_merges_overrides_key_by_key():
    shipped = yaml.safe_load((RECIPES_DIR / "demo.yaml").read_text())
    recipe = load_recipe("demo", {"train": {"steps": 50}, "sizes": [20, 40], "hq": {"train": {"toy": {"num_images": 5}}}})
    assert recipe.train.steps == 50 and recipe.sizes == [20, 40]
    assert recipe.train.batch_size == shipped["train"]["batch_size"]  # siblings of an overridden key stay
    assert recipe.train.optimizer.lr == shipped["train"]["optimizer"]["lr"]
    assert recipe.train.accelerator == shipped["train"]["accelerator"]
    train_toy, test_toy = shipped["hq"]["train"]["toy"], shipped["hq"]["test"]["toy"]
    assert recipe.hq.train.toy.num_images == 5 and recipe.hq.train.toy.seed == train_toy["seed"]  # merged key by key
    assert (recipe.hq.test.toy.num_images, recipe.hq.test.toy.seed) == (test_toy["num_images"], test_toy["seed"])
    assert load_recipe("demo").train.steps == shipped["train"]["steps"]  # the file itself is untouched


def test_an_unknown_override_is_one_line_with_the_closest_key(capsys):
    assert main(["recipe", "check", "demo", "--train.stpes=50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--train.stpes" in err and "did you mean --train.steps?" in err


def test_the_old_set_spelling_still_works(capsys):
    assert main(["recipe", "check", "demo", "--set", "train.steps=50", "--set", "sizes=[20, 40]"]) == 0
    assert "recipe demo" in capsys.readouterr().out


def test_an_override_is_checked_like_the_file(capsys):
    assert main(["recipe", "check", "demo", "--train.steps=lots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "demo.yaml: train.steps: expected an integer, got 'lots'" in err
