"""End to end through the CLI: fit on a fabricated COCO dataset, resume, export, predict, bad input, W&B, DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sam3_adapt.cli import main
from fabricate import make_coco_dataset

TESTS = Path(__file__).parent


def _config(tmp: Path, train: Path, val: Path, **overrides) -> Path:
    config = {
        "model": {"model": "tiny", "phrase_chunk_size": 2,
                  "trainable": {"mode": "lora", "lora": {"preset": "all_attn_heads", "r": 4, "alpha": 8}}},
        "data": {"train": [{"path": str(train), "hard_negatives": ["cat", "dog", "tree"], "negatives_per_image": 2}],
                 "val": [{"path": str(val)}], "batch_size": 2, "num_workers": 0},
        "trainer": {"max_steps": 4, "val_check_interval": 2, "check_val_every_n_epoch": None,
                    "log_every_n_steps": 1, "default_root_dir": str(tmp / "run"), "enable_progress_bar": False,
                    "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger"}},
    }
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        config[section][name] = value
    path = tmp / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_coco_dataset(root / "train", 6, seed=0), make_coco_dataset(root / "val", 4, seed=1)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, data):
    """One short fit (4 steps, validation every 2), shared by the tests that read its outputs."""
    tmp = tmp_path_factory.mktemp("fit")
    config = _config(tmp, *data)
    assert main(["fit", "--config", str(config)]) == 0
    return tmp, config


def _metrics(run: Path) -> list[dict[str, str]]:
    (csv_path,) = sorted(run.glob("version_*/metrics.csv"))[:1]
    return list(csv.DictReader(csv_path.open()))


def test_fit_logs_every_term_and_validation_metrics_and_saves_checkpoints(fitted):
    tmp, _ = fitted
    run = tmp / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert any(p.name.startswith("best-step") for p in (run / "checkpoints").iterdir())
    rows = _metrics(run)
    keys = {k for row in rows for k, v in row.items() if v}
    for key in ("train/loss", "train/o2o/loss_ce/layer0", "train/o2o/loss_presence/layer1",
                "train/o2m/loss_bbox/layer1", "train/o2o/loss_mask/layer1", "train/o2o/loss_dice/layer1",
                "val/loss", "val/cgF1", "val/pmF1", "val/IL_MCC", "val/cgF1_box", "val/AP_box", "val/AP_mask"):
        assert key in keys, key
    assert any(k.startswith("lr-AdamW") for k in keys)  # learning rate per parameter group
    assert "perf/data_wait_fraction" in keys
    val_rows = [r for r in rows if r.get("val/cgF1")]
    assert len(val_rows) == 2 and all(0.0 <= float(r["val/cgF1"]) <= 1.0 for r in val_rows)
    assert list(run.glob("version_*/panels/*.png"))  # validation images with predicted masks


def test_resume_from_last_continues_the_step_count_and_optimizer(fitted):
    tmp, config = fitted
    last = tmp / "run" / "checkpoints" / "last.ckpt"
    before = torch.load(last, weights_only=True)
    assert before["global_step"] == 4
    assert main(["fit", "--config", str(config), "--trainer.max_steps=6", "--ckpt_path", "last"]) == 0
    after = torch.load(last, weights_only=True)
    assert after["global_step"] == 6
    lr_scheduler = after["lr_schedulers"][0]
    assert lr_scheduler["last_epoch"] == 6  # the schedule went on from step 4, not from 0
    changed = [k for k in before["state_dict"] if "lora_" in k and not torch.equal(before["state_dict"][k],
                                                                                   after["state_dict"][k])]
    assert changed


def _served(out: Path) -> list[tuple[int, int, list[int]]]:
    lines = [json.loads(line) for line in (out / "batches.jsonl").read_text().splitlines()]
    return [(r["step"], r["epoch"], r["images"]) for r in lines]


def test_resume_mid_epoch_continues_the_same_data_stream(data, tmp_path):
    """2 steps + resume to 5 trains on the same images, in the same order, as 5 uninterrupted steps."""
    record = "--trainer.callbacks+=recording_callbacks.RecordTrainingBatches"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    args = ["--trainer.val_check_interval=2", "--trainer.limit_val_batches=1"]
    assert main(["fit", "--config", str(_config(straight, *data)), *args, "--trainer.max_steps=5", record,
                 f"--trainer.callbacks.out_dir={straight}"]) == 0
    config = _config(resumed, *data)
    assert main(["fit", "--config", str(config), *args, "--trainer.max_steps=2", record,
                 f"--trainer.callbacks.out_dir={resumed}"]) == 0
    assert main(["fit", "--config", str(config), *args, "--trainer.max_steps=5", "--ckpt_path", "last", record,
                 f"--trainer.callbacks.out_dir={resumed}"]) == 0
    assert len(_served(straight)) == 5  # 3 batches per epoch: the resume point (step 2) is mid-epoch
    assert _served(resumed) == _served(straight)


def test_export_checkpoint_merged_adapter_and_video_then_predict(fitted, tmp_path, capsys):
    from transformers import Sam3Model

    from adapt.training.checkpoints import load_fine_tuner

    tmp, _ = fitted
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    merged, adapter, video = tmp_path / "merged", tmp_path / "adapter", tmp_path / "video"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(merged)]) == 0
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(adapter), "--adapter-only"]) == 0
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert "val/cgF1" in (merged / "README.md").read_text()  # the card carries the best validation score

    module = load_fine_tuner(ckpt)
    exported = Sam3Model.from_pretrained(merged).eval()
    inputs = {"pixel_values": torch.randn(1, 3, 112, 112), "input_ids": torch.randint(0, 49408, (1, 32)),
              "attention_mask": torch.ones(1, 32, dtype=torch.long)}
    with torch.no_grad():
        expected = module.model(**inputs).pred_logits
        got = exported(**inputs).pred_logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)  # the export is the trained model

    from PIL import Image

    picture = tmp_path / "p.png"
    Image.new("RGB", (120, 90), (200, 30, 30)).save(picture)
    preds = tmp_path / "preds.json"
    assert main(["predict", "--model", str(merged), "--image", str(picture), "--prompt", "red square",
                 "--threshold", "0", "--top-k", "3", "--out", str(preds)]) == 0
    entries = json.loads(preds.read_text())
    assert len(entries) == 3 and all(e["phrase"] == "red square" for e in entries)

    # The tiny preset's FPN (32 wide) cannot drive a video tracker (its width must be a multiple of 64 above 64):
    # the video export refuses with one line (tests/test_export.py exports video from a wider detector).
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(video), "--video"]) == 2
    assert "tracker" in capsys.readouterr().err and not video.exists()


def test_print_config_and_overrides(data, tmp_path, capsys):
    config = _config(tmp_path, *data)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--trainer.devices=1", "--model.trainable.mode=full", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["trainable"]["mode"] == "full"
    assert printed["checkpoint"]["monitor"] == "val/cgF1" and printed["last_checkpoint"]["filename"] == "last"
    assert printed["trainer"]["gradient_clip_val"] == 0.1


def test_two_validation_and_two_test_sets_are_logged_by_name_and_pooled(data, tmp_path):
    train, val = data
    sets = [{"path": str(val)}, {"path": str(train), "name": "general"}]  # stems: "annotations" and a name
    config = _config(tmp_path, train, val, **{"data.val": sets})
    assert main(["fit", "--config", str(config), "--trainer.max_steps=2", "--trainer.val_check_interval=2"]) == 0
    row = [r for r in _metrics(tmp_path / "run") if r.get("val/cgF1")][-1]
    for name in ("annotations", "general"):
        for key in ("loss", "cgF1", "pmF1", "IL_MCC", "AP_mask"):
            assert row.get(f"val/{name}/{key}"), (name, key)
    # the pooled loss is the image-weighted mean of the two sets' losses (4 and 6 images)
    pooled = (4 * float(row["val/annotations/loss"]) + 6 * float(row["val/general/loss"])) / 10
    assert float(row["val/loss"]) == pytest.approx(pooled, rel=1e-5)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert main(["test", "--config", str(config), "--data.test", json.dumps(sets), "--ckpt_path", str(ckpt)]) == 0
    rows = [r for path in (tmp_path / "run").glob("version_*/metrics.csv") for r in csv.DictReader(path.open())]
    assert any(r.get("test/general/cgF1") and r.get("test/annotations/cgF1") and r.get("test/cgF1") for r in rows)


def _bad_dataset(root: Path) -> Path:
    path = make_coco_dataset(root, 5, seed=3)
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = "../escape.png"
    data["images"][1]["file_name"] = "images/missing.png"
    (root / "images" / "broken.png").write_bytes(b"not a png")
    data["images"][2]["file_name"] = "images/broken.png"
    data["annotations"].append({"id": 999, "image_id": 4, "category_id": 77, "bbox": [1, 1, 5, 5], "iscrowd": 0,
                                "segmentation": [[1, 1, 6, 1, 6, 6]]})
    path.write_text(json.dumps(data))
    return path


def test_bad_input_stops_before_training_or_is_skipped_and_counted(data, tmp_path, capsys):
    bad = _bad_dataset(tmp_path / "bad")
    config = _config(tmp_path, bad, data[1])
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4 bad entries" in err[0] and str(bad) in err[0]
    assert "escape.png" in err[0] and "missing.png" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any step

    assert main(["fit", "--config", str(config), "--data.on_error=skip", "--trainer.max_steps=1",
                 "--trainer.val_check_interval=1"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    rows = _metrics(tmp_path / "run")
    skipped = [float(r["data/skipped_entries"]) for r in rows if r.get("data/skipped_entries")]
    assert skipped == [4.0]


def test_wandb_offline_run_has_the_logged_keys_config_panel_and_best_checkpoint_and_no_api_key(data, tmp_path,
                                                                                               monkeypatch):
    from wandb_records import read_run

    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # where W&B stages artifact files
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    config = _config(tmp_path, *data, **{"trainer.logger": {  # the default logger of `fit`, offline
        "class_path": "adapt.training.loggers.Sam3WandbLogger", "init_args": {"project": "t", "offline": True}}})
    assert main(["fit", "--config", str(config), "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                 "--trainer.logger.init_args.log_model=true"]) == 0
    import wandb

    wandb.finish()  # what the end of the process does: flush the offline run (then `wandb sync` uploads it)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(secret.encode() not in p.read_bytes() for p in files)
    run = read_run(runs[0])
    keys = {k for row in run.history for k in row}
    for key in ("train/loss", "train/o2o/loss_ce/layer0", "val/cgF1", "val/AP_box", "perf/data_wait_fraction",
                "lr-AdamW/rest", "val/predictions._type"):
        assert key in keys, key

    # the whole resolved config, nested as in --print_config: model, data, trainer, checkpoints, seed
    assert run.config["model"]["model"] == "tiny" and run.config["model"]["trainable"]["lora"]["r"] == 4
    assert run.config["data"]["batch_size"] == 2 and run.config["data"]["val"][0]["path"] == str(data[1])
    assert run.config["trainer"]["max_steps"] == 2 and run.config["trainer"]["gradient_clip_val"] == 0.1
    assert run.config["checkpoint"]["monitor"] == "val/cgF1" and run.config["seed_everything"] == 0

    # the validation panel: prediction and ground-truth mask layers, phrases as class labels, upscaled
    (row,) = [r for r in run.history if "val/predictions._type" in r]
    assert min(row["val/predictions.width"], row["val/predictions.height"]) >= 256
    assert all(set(m) == {"predictions", "ground_truth"} for m in row["val/predictions.all_masks"])
    labels = run.config["_wandb"]["mask/class_labels"]
    truth_labels = labels["val/predictions_wandb_delimeter_ground_truth"]["value"]
    assert truth_labels and set(truth_labels.values()) <= {"red square", "blue disc", "green bar"}
    assert list(runs[0].glob("files/media/images/val/predictions_*.png"))

    # log_model: the best checkpoint (by val/cgF1), not last.ckpt, recorded as a model artifact
    (artifact,) = run.artifacts
    assert artifact.type == "model" and artifact.name == f"model-{runs[0].name.rsplit('-', 1)[1]}"
    assert "best" in artifact.aliases
    assert json.loads(artifact.metadata)["original_filename"].startswith("best-step")
    assert [entry.path for entry in artifact.manifest.contents] == ["model.ckpt"]


def test_ddp_two_cpu_processes_keep_identical_parameters(data, tmp_path):
    config = _config(tmp_path, *data)
    digest = tmp_path / "digest"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1")
    cli = Path(sys.executable).with_name("sam3-adapt")
    command = [str(cli), "fit", "--config", str(config), "--trainer.accelerator=cpu", "--trainer.devices=2",
               "--trainer.precision=32-true", "--trainer.max_steps=3",
               "--trainer.callbacks+=recording_callbacks.SaveTrainableParameters",
               f"--trainer.callbacks.out_dir={digest}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = torch.load(digest / "rank0.pt", weights_only=True)
    rank1 = torch.load(digest / "rank1.pt", weights_only=True)
    assert rank0["world_size"] == rank1["world_size"] == 2 and rank0["step"] == rank1["step"] == 3
    assert rank0["params"].keys() == rank1["params"].keys() and rank0["params"]
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), name


def test_a_wandb_run_starts_without_the_deprecated_anonymous_warning(tmp_path, monkeypatch, capfd):
    """Lightning's WandbLogger passes anonymous=None, on which W&B warns in every run (and every recipe job)."""
    from lightning.pytorch.loggers import WandbLogger

    from adapt.training.trainer import build_trainer

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="t")
    build_trainer(logger=logger, accelerator="cpu", devices=1, max_steps=1, quiet=True)
    import wandb

    try:
        assert logger.experiment is not None
    finally:
        wandb.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert "anonymous" not in capfd.readouterr().err
