"""`sam3-adapt synth ...` from the command line, and bad input: counted and reported, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from tiny_vlm import build_tiny_vlm

from sam3_adapt.cli import main
from adapt.data.readers import read_dataset
from synth_helpers import ONTOLOGY

TINY_TEACHER = {"model": "tiny", "threshold": 0.2, "candidate_threshold": 0.05}


def _write_config(path: Path, **sections) -> Path:
    data = {"ontology": ONTOLOGY, "teacher": TINY_TEACHER, "run": {"shard_size": 2, "progress": False}, **sections}
    path.write_text(yaml.safe_dump(data))
    return path


def _pool(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((80, 96, 3)) * 255).astype(np.uint8)).save(folder / f"photo{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    return folder


def test_synth_run_on_a_pool_counts_an_undecodable_image_and_labels_the_rest(tmp_path: Path, capsys) -> None:
    _pool(tmp_path / "photos")
    config = _write_config(tmp_path / "synth.yaml", source={"pool": {"folder": "photos"}},
                           verify={"geometric": {}})
    assert main(["synth", "run", str(config), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| generate | 4 tasks | 3 images | 1 skipped |" in printed
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["generate"]["skipped"] == 1 and "broken.jpg" in summary["generate"]["skipped_examples"][0]
    pl = read_dataset(tmp_path / "out/pl.json")
    assert len(pl.samples) == 3 and not pl.problems
    assert not (tmp_path / "out/exact.json").exists()  # a real pool has no exact labels
    pool_files = {p.name for p in (tmp_path / "out/images").iterdir()}
    assert len(pool_files) == 3 and all(name.endswith(".png") for name in pool_files)


def test_synth_stages_one_by_one_then_merge(tmp_path: Path, capsys) -> None:
    config = _write_config(tmp_path / "synth.yaml", source={"toy": {"num_images": 2}})
    out = str(tmp_path / "out")
    for stage in ("generate", "label", "verify"):
        assert main(["synth", stage, str(config), "--out", out]) == 0
    assert "verify: 1 shard(s) processed" in capsys.readouterr().out
    assert main(["synth", "merge", str(config), "--out", out]) == 0
    assert (tmp_path / "out/syn.json").is_file() and (tmp_path / "out/exact.json").is_file()


def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump({"ontology": {"concepts": []}, "source": {"toy": {"num_images": 1}}}))
    assert main(["synth", "run", str(empty), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no concepts" in err
    typo = _write_config(tmp_path / "typo.yaml", source={"toy": {"num_imgs": 1}})
    assert main(["synth", "run", str(typo), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "typo.yaml: unknown key 'source.toy.num_imgs'; did you mean 'source.toy.num_images'?" in err and err.count("\n") == 1
    config = _write_config(tmp_path / "synth.yaml", source={"toy": {"num_images": 1}})
    assert main(["synth", "verify", str(config), "--out", str(tmp_path / "o3")]) == 2
    assert "synth generate" in capsys.readouterr().err
    no_source = _write_config(tmp_path / "nosource.yaml", source={})
    assert main(["synth", "run", str(no_source), "--out", str(tmp_path / "o4")]) == 2
    assert "set exactly one of pool, toy, copy_paste, generate" in capsys.readouterr().err


def test_vlm_answers_that_match_no_option_are_counted_not_fatal(tmp_path: Path) -> None:
    vlm_dir = build_tiny_vlm(tmp_path / "vlm")
    config = _write_config(tmp_path / "synth.yaml", source={"toy": {"num_images": 2}},
                           verify={"vlm": {"model": str(vlm_dir), "mode": "generate", "max_new_tokens": 3}})
    assert main(["synth", "run", str(config), "--out", str(tmp_path / "out")]) == 0
    records = [r for f in sorted((tmp_path / "out/stages/verify").glob("shard-*"))
               for r in json.loads(f.read_text())["records"]]
    verdicts = [v for r in records for p in r["pairs"]
                for v in p["verification"]["pair"]["verdicts"]
                + [v for i in p["verification"]["instances"] for v in i["verdicts"]]]
    unparsed = sum(v["option"] == "unparsed" for v in verdicts)
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    counted = sum(c.get("unparsed", 0) for kind in ("mask", "exhaustivity") for c in summary["verify"][kind].values())
    assert unparsed > 0 and counted == unparsed
    assert summary["verify"]["unparsed_examples"]
    assert "matched no option" in (tmp_path / "out/summary.md").read_text()


def test_synth_calibrate_measures_the_configured_verifiers_against_an_oracle_sample(tmp_path: Path, capsys) -> None:
    from synth.engine import SynthRun
    from synth.oracle import write_oracle_sample
    from synth_helpers import toy_config

    run = SynthRun(toy_config(tmp_path, num_images=4, teacher={"threshold": 0.1, "candidate_threshold": 0.05}),
                   tmp_path / "out")
    run.generate()
    run.label()
    sample = write_oracle_sample(run.run_dir, run.num_shards)
    data = json.loads(sample.read_text())
    assert len(data["exhaustivity"]) == 4 * 3 and {e["label"] for e in data["mask"]} <= {"accept", "reject"}
    config = _write_config(tmp_path / "synth.yaml", source={"toy": {"num_images": 4}},
                           verify={"geometric": {}, "teacher_confidence": {}})
    assert main(["synth", "calibrate", str(config), "--human", str(sample), "--out", str(tmp_path / "cal")]) == 0
    report = json.loads((tmp_path / "cal/calibration.json").read_text())["verifiers"]
    assert set(report) == {"mv:geometric", "ev:teacher_confidence"}
    assert report["mv:geometric"]["n"] == len(data["mask"])
    assert report["ev:teacher_confidence"]["n"] == 12
    assert (tmp_path / "cal/calibration.png").is_file()
    assert "ev:teacher_confidence" in capsys.readouterr().out


def test_generated_images_are_labelled_and_record_prompt_and_seed(tmp_path: Path) -> None:
    from tiny_diffusion import build_tiny_sd

    build_tiny_sd(tmp_path / "tiny-sd")
    config = _write_config(tmp_path / "synth.yaml", source={"generate": {
        "pipeline": "tiny-sd", "images_per_concept": 1, "steps": 2, "height": 64, "width": 64,
        "negative_prompt": "blurry"}}, verify={"geometric": {}})
    assert main(["synth", "run", str(config), "--out", str(tmp_path / "out")]) == 0
    pl = json.loads((tmp_path / "out/pl.json").read_text())
    assert len({p["file_name"] for p in pl["images"]}) == 2  # one image per concept
    sources = [a["provenance"]["source"] for a in pl["annotations"]]
    assert sources and all(s["kind"] == "generated" and s["negative_prompt"] == "blurry" and "seed" in s
                           and s["concept"] in s["prompt"] for s in sources)


def test_copy_paste_with_exact_labels_needs_no_teacher(tmp_path: Path) -> None:
    from fabricate import make_coco_dataset

    instances = make_coco_dataset(tmp_path / "hq", num_images=3)
    _pool(tmp_path / "backgrounds", n=2)
    config = tmp_path / "synth.yaml"
    config.write_text(yaml.safe_dump({
        "ontology": {"concepts": ["red square", "blue disc"]},
        "source": {"copy_paste": {"instances": str(instances), "backgrounds": {"folder": "backgrounds"},
                                  "num_images": 3, "blend": "none"}},
        "labels": "exact", "run": {"progress": False}}))
    assert main(["synth", "run", str(config), "--out", str(tmp_path / "out")]) == 0
    pl, exact = (json.loads((tmp_path / f"out/{v}.json").read_text()) for v in ("pl", "exact"))
    assert [(p["file_name"], p["text_input"]) for p in pl["images"]] == \
        [(p["file_name"], p["text_input"]) for p in exact["images"]]
    assert len(pl["annotations"]) == len(exact["annotations"]) > 0
    assert all(a["provenance"]["teacher"] is None and a["provenance"]["source"]["kind"] == "copy_paste"
               for a in pl["annotations"])
