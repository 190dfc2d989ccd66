"""One language for every verb: each runs from a YAML `--config` and from the same values as dotted overrides, with
identical results; `--print_config` writes the config a verb would run; `--help` answers without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fabricate import make_coco_dataset
from sam3_adapt.cli import VERBS, main

CLI = Path(sys.executable).with_name("sam3-adapt")


def _nested(keys: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict = {}
    for key, value in keys.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _run_both(tmp_path: Path, verb: list[str], keys: dict, out_key: str, positional: list[str] = ()) -> tuple:
    """Run `verb` once with `keys` in a YAML config and once as overrides; the two output paths (in folders named
    by how the verb ran, or next to an absolute `out_key` value with that prefix)."""
    outs = []
    for how in ("config", "overrides"):
        given = Path(keys[out_key])
        out = given.with_name(f"{how}-{given.name}") if given.is_absolute() else tmp_path / how / given.name
        values = {**keys, out_key: str(out)}
        if how == "config":
            config = tmp_path / "verb.yaml"
            config.write_text(yaml.safe_dump(_nested(values)))
            argv = [*verb, *positional, "--config", str(config)]
        else:
            argv = [*verb, *positional, *[f"--{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                         for k, v in values.items()]]
        assert main(argv) == 0, argv
        outs.append(out)
    return tuple(outs)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_coco_dataset(tmp_path_factory.mktemp("coco"), 3, seed=4)


def test_predict_and_eval_from_a_config_or_overrides(data, tmp_path):
    image = str(data.parent / "images" / "img001.png")
    a, b = _run_both(tmp_path, ["predict"], {"model": "tiny", "image": [image], "prompt": ["red square", "blue disc"],
                                             "threshold": 0.0, "top_k": 2, "out": "p.json"}, "out")
    assert json.loads(a.read_text()) == json.loads(b.read_text()) and json.loads(a.read_text())
    m1, m2 = _run_both(tmp_path, ["eval"], {"gt": [str(data)], "pred": str(a), "iou_type": "bbox",
                                           "out": "m.json"}, "out")
    assert json.loads(m1.read_text()) == json.loads(m2.read_text())


def test_export_info_and_overfit_from_a_config_or_overrides(tmp_path, capsys):
    a, b = _run_both(tmp_path, ["export"], {"model": "tiny", "out": "exported"}, "out")
    assert (a / "config.json").read_text() == (b / "config.json").read_text()
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    (tmp_path / "info.yaml").write_text("model: tiny\nlora_rank: 4\n")
    capsys.readouterr()
    assert main(["info", "--config", str(tmp_path / "info.yaml")]) == 0
    from_config = capsys.readouterr().out
    assert main(["info", "--model=tiny", "--lora_rank=4"]) == 0
    assert capsys.readouterr().out == from_config and "r=4" in from_config
    a, b = _run_both(tmp_path, ["overfit"], {"model": "tiny", "steps": 3, "lr": 0.001, "out": "overfit"}, "out")
    assert (a / "losses.csv").read_text() == (b / "losses.csv").read_text()
    assert json.loads((a / "report.json").read_text())["steps"] == 3


def test_convert_and_synth_from_a_config_or_overrides(tmp_path):
    images, labels = tmp_path / "yolo" / "images", tmp_path / "yolo" / "labels"
    images.mkdir(parents=True), labels.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(images / "a.png")
    (labels / "a.txt").write_text("0 0.1 0.2 0.5 0.2 0.5 0.8\n")
    (tmp_path / "yolo" / "data.yaml").write_text("names: [crack]\n")
    a, b = _run_both(tmp_path, ["convert", "yolo"], {"images": str(images), "labels": str(labels),
                                                     "names": str(tmp_path / "yolo" / "data.yaml"),
                                                     "out": str(tmp_path / "yolo" / "c.json")}, "out")
    assert json.loads(a.read_text())["annotations"] == json.loads(b.read_text())["annotations"]
    keys = {"ontology": {"concepts": [{"name": "red square"}]}, "labels": "exact",
            "source": {"toy": {"num_images": 2, "size": 56, "seed": 3}},
            "run": {"shard_size": 2, "progress": False, "accelerator": "cpu"}}
    config = tmp_path / "synth.yaml"
    config.write_text(yaml.safe_dump(keys))
    assert main(["synth", "run", str(config), "--out", str(tmp_path / "s1")]) == 0
    flat = {"ontology": json.dumps(keys["ontology"]), "labels": "exact", "source.toy.num_images": "2",
            "source.toy.size": "56", "source.toy.seed": "3", "run.shard_size": "2", "run.progress": "false",
            "run.accelerator": "cpu"}
    assert main(["synth", "run", *[f"--{k}={v}" for k, v in flat.items()], "--out", str(tmp_path / "s2")]) == 0
    assert (tmp_path / "s1" / "exact.json").read_bytes() == (tmp_path / "s2" / "exact.json").read_bytes()
    # an override on top of the file, with the same spelling as in fit (`--source.toy.seed=5` changes the images)
    assert main(["synth", "run", str(config), "--source.toy.seed=5", "--out", str(tmp_path / "s3")]) == 0
    assert (tmp_path / "s3" / "exact.json").read_bytes() != (tmp_path / "s1" / "exact.json").read_bytes()


def test_recipe_check_and_print_config(tmp_path, capsys):
    capsys.readouterr()
    assert main(["recipe", "check", "demo", "--train.steps=50", "--sizes=[20]"]) == 0
    first = capsys.readouterr().out
    (tmp_path / "o.yaml").write_text(yaml.safe_dump({"train": {"steps": 50}, "sizes": [20]}))
    assert main(["recipe", "check", "demo", "--config", str(tmp_path / "o.yaml")]) == 0
    assert capsys.readouterr().out == first
    with pytest.raises(SystemExit) as done:
        main(["recipe", "run", "demo", "--train.steps=50", "--out", str(tmp_path / "x"), "--print_config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["steps"] == 50 and printed["train"]["trainable"]["mode"] == "full"
    assert Path(printed["base_model"]).is_absolute()  # paths were made absolute at load


def test_fit_from_a_config_or_overrides(data, tmp_path):
    import torch

    keys = {"model.model": "tiny", "data.train": [{"path": str(data)}], "data.num_workers": 0,
            "trainer.max_steps": 2, "trainer.logger": False, "trainer.accelerator": "cpu",
            "trainer.enable_progress_bar": False, "trainer.default_root_dir": "run"}
    a, b = _run_both(tmp_path, ["fit"], keys, "trainer.default_root_dir")
    first = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    second = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_help_is_fast_and_imports_no_torch():
    """Every verb but fit/validate/test (LightningCLI must import Lightning) answers --help without torch."""
    code = ("import sys; from sam3_adapt.cli import main, VERBS\n"
            "for verb, entry in VERBS.items():\n"
            "    if verb in ('fit', 'validate', 'test'): continue\n"
            "    for sub in (entry if isinstance(entry, dict) else [None]):\n"
            "        try: main([verb, *([sub] if sub else []), '--help'])\n"
            "        except SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'a verb help imported torch'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(VERBS) >= 11


def test_old_spellings_still_work_or_name_the_new_one(tmp_path, capsys):
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    out = tmp_path / "p.json"
    assert main(["predict", "--model", "tiny", "--image", str(image), str(image), "--prompt", "a",
                 "--top-k", "1", "--threshold", "0", "--official-text-prompt", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())) == 2  # --image a b, --top-k, a bare boolean flag
    capsys.readouterr()
    assert main(["info", "--model", "sam3"]) == 2
    assert "sam3-random" in capsys.readouterr().err
    assert main(["predict", "--modle", "tiny"]) == 2
    assert "did you mean --model?" in capsys.readouterr().err


def test_fit_names_the_option_it_does_not_know(tmp_path, capsys):
    assert main(["fit", "--data.bach_size=2"]) == 2
    assert "unknown option --data.bach_size; did you mean --data.batch_size?" in capsys.readouterr().err
    config = tmp_path / "fit.yaml"
    config.write_text("model:\n  optimizer:\n    lrr: 0.1\n")
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}:" in err and "'model.optimizer.lrr'; did you mean model.optimizer.lr?" in err
    assert err.count("\n") == 1
