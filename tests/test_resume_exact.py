"""Crashes: kill -9 mid-epoch and resume ends with the uninterrupted run's weights; SIGTERM saves and exits 143;
an interrupted save's temp file is removed at the next start; checkpoints are never merged into the config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fabricate import make_coco_dataset

TESTS = Path(__file__).parent
CLI = Path(sys.executable).with_name("sam3-adapt")


def _config(tmp: Path, train: Path, val: Path) -> Path:
    """Dropout (DETR), augmentation, hard negatives and a data worker: every kind of randomness a step has."""
    config = {
        "model": {"model": "tiny", "phrase_chunk_size": 2,
                  "trainable": {"mode": "lora", "lora": {"preset": "all_attn_heads", "r": 4, "alpha": 8,
                                                         "dropout": 0.1}}},
        "data": {"train": [{"path": str(train), "hard_negatives": ["cat", "dog", "tree", "car"],
                            "negatives_per_image": 2}],
                 "val": [{"path": str(val)}], "batch_size": 2, "num_workers": 1,
                 "augment": {"hflip": 0.5, "color_jitter": 0.2}},
        "trainer": {"max_steps": 8, "val_check_interval": 2, "check_val_every_n_epoch": None, "limit_val_batches": 1,
                    "log_every_n_steps": 1, "default_root_dir": str(tmp / "run"), "enable_progress_bar": False,
                    "enable_model_summary": False, "accelerator": "cpu",
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger"}},
    }
    path = tmp / "fit.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, *extra: str, cwd: Path, verb: str = "fit") -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run([str(CLI), verb, "--config", str(config), *extra], env=env, capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def _error_line(done: subprocess.CompletedProcess) -> str:
    """The one error line on stderr, exit code 2 (Lightning's INFO lines may precede it; no traceback may)."""
    err = done.stderr
    assert done.returncode == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("sam3-adapt: error:")]
    assert len(errors) == 1 and "Traceback" not in err and err.strip().endswith(errors[0]), err
    return errors[0]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 8
    return ckpt["state_dict"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_coco_dataset(root / "train", 6, seed=0), make_coco_dataset(root / "val", 2, seed=1)


def test_kill_9_mid_epoch_then_resume_ends_with_the_uninterrupted_weights(data, tmp_path):
    straight = _config(tmp_path / "straight", *data)
    assert (done := _fit(straight, cwd=tmp_path)).returncode == 0, done.stderr[-3000:]

    killed = _config(tmp_path / "killed", *data)
    kill = ["--trainer.callbacks+=recording_callbacks.SignalAtStep", "--trainer.callbacks.step=5"]
    done = _fit(killed, *kill, cwd=tmp_path)
    assert done.returncode == -9  # killed after step 5; last.ckpt is step 4, mid-epoch (3 batches an epoch)
    checkpoints = tmp_path / "killed" / "run" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 4
    leftover = checkpoints / f".last.ckpt.tmp-{2**22 + 12345}"  # a save the kill interrupted (no such process)
    leftover.write_bytes(b"half a checkpoint")
    done = _fit(killed, "--ckpt_path", "last", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not leftover.exists()

    expected, resumed = _weights(tmp_path / "straight" / "run"), _weights(tmp_path / "killed" / "run")
    trained = [k for k in expected if "lora_" in k or "scoring" in k or "head" in k]
    assert trained and expected.keys() == resumed.keys()
    worst = max((expected[k].float() - resumed[k].float()).abs().max().item() for k in expected)
    assert worst <= 1e-6, worst
    assert not any(p.name.startswith("best") and "-v" in p.name for p in checkpoints.iterdir())


def test_sigterm_saves_the_step_and_exits_non_zero(data, tmp_path):
    config = _config(tmp_path, *data)
    done = _fit(config, "--trainer.callbacks+=recording_callbacks.SignalAtStep", "--trainer.callbacks.step=3",
                "--trainer.callbacks.signal=SIGTERM", cwd=tmp_path)
    assert done.returncode == 143, done.stderr[-2000:]  # not 0: `fit && export` must not export a half run
    assert "SIGTERM" in done.stderr and "--ckpt_path last" in done.stderr
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] >= 3  # the progress up to the signal is kept


def test_a_checkpoint_never_replaces_the_config(data, tmp_path):
    config = _config(tmp_path, *data)
    assert (done := _fit(config, "--trainer.max_steps=2", "--data.num_workers=0", cwd=tmp_path)).returncode == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    crafted = torch.load(ckpt, weights_only=True)
    crafted["hyper_parameters"]["model"] = "small"  # claims another base model
    torch.save(crafted, tmp_path / "crafted.ckpt")
    done = _fit(config, "--data.num_workers=0", "--ckpt_path", str(tmp_path / "crafted.ckpt"), cwd=tmp_path,
                verb="validate")
    err = _error_line(done)
    assert "model.model='small'" in err and "'tiny'" in err


@pytest.mark.parametrize("content,needle,verb", [
    (b"\x00\x01garbage bytes that are not a checkpoint", "not a readable Lightning checkpoint", "fit"),
    (None, "no such checkpoint file", "validate"),
    ("pickle", "never loaded", "validate"),
    ("foreign", "not a sam3-adapt training checkpoint", "validate"),
])
def test_bad_checkpoint_paths_get_one_line(data, tmp_path, content, needle, verb):
    config = _config(tmp_path, *data)
    path = tmp_path / "x.ckpt"
    if content == "pickle":
        path.write_bytes(_malicious_pickle(tmp_path / "pwned"))
    elif content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"lr": 0.1}}, path)
    elif content is not None:
        path.write_bytes(content)
    err = _error_line(_fit(config, "--data.num_workers=0", "--ckpt_path", str(path), cwd=tmp_path, verb=verb))
    assert needle in err and str(path) in err, err
    assert not (tmp_path / "pwned").exists()


def _malicious_pickle(target: Path) -> bytes:
    """A pickle whose loading would run `touch target` (weights_only loading must refuse it)."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(target),))

    return pickle.dumps({"state_dict": Payload(), "hyper_parameters": {"model": "tiny", "trainable": {}}})


@pytest.mark.parametrize("setup,extra,needle", [
    (lambda tmp: (tmp / "bad.yaml").write_text("model: {model: tiny\n  bad: ["), ["--config", "bad.yaml"],
     "bad.yaml: not valid YAML"),
    (lambda tmp: (tmp / "key.yaml").write_text("model:\n  modle: tiny\n"), ["--config", "key.yaml"],
     "key.yaml: Subcommand 'fit' does not accept option 'model.modle'"),
    (lambda tmp: None, ["--model.model=tiny", "--data.train=[{path: x.json}]", "--trainer.accelerator=gpu"], "gpu"),
])
def test_bad_fit_settings_get_one_line(tmp_path, setup, extra, needle):
    setup(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([str(CLI), "fit", *extra], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert needle in _error_line(done)
