"""The data engine on several ranks inside a recipe: the stages run on 2 spawned CPU ranks, the recipe itself runs
once (Lightning's script launcher would re-run the whole `recipe run` in every rank), and the datasets are
byte-identical to a 1-rank run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = Path(sys.executable).with_name("sam3-adapt")
TOY = {"size": 84, "objects": [1, 3], "min_object": 0.2, "max_object": 0.4}
RECIPE = {
    "hq": {"train": {"toy": {**TOY, "num_images": 6, "seed": 11}}, "test": {"toy": {**TOY, "num_images": 4, "seed": 12}}},
    "pool": {"source": {"toy": {**TOY, "num_images": 10, "seed": 13}}},
    "general": {"test": None, "held_out": 0},
    "arms": ["syn"], "mixes": ["none"], "sizes": [4], "verifier_training": None,
    "train": {"steps": 1, "parallel_jobs": 1, "threads_per_job": 1},
    "tracking": {"wandb": "disabled"},
}


def _recipe(out: Path, devices: int, *extra: str) -> str:
    sets = [f"--{key}={json.dumps(value)}" for key, value in RECIPE.items()]
    synth = {"shard_size": 3, "accelerator": "cpu", "devices": devices, "progress": False}
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    log = out.parent / f"{out.name}.log"  # a file: the cluster path's tasks inherit it
    with open(log, "w") as handle:
        code = subprocess.run([str(CLI), "recipe", "run", "demo", "--out", str(out), "--quiet", *sets,
                               f"--synth={json.dumps(synth)}", *extra], env=env, stdout=handle,
                              stderr=subprocess.STDOUT, timeout=600).returncode
    assert code == 0, log.read_text()[-3000:]
    return log.read_text()


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory) -> Path:
    return _one_rank_pool(tmp_path_factory.mktemp("one"))


def _assert_two_ranks_wrote_what_one_rank_wrote(pool_two: Path, pool_one: Path) -> None:
    for stage in ("generate", "label", "verify"):  # 10 images in 4 shards of 3, shared by the 2 ranks
        ranks = [json.loads(p.read_text()) for p in sorted((pool_two / "stages" / stage / "ranks").glob("*.json"))]
        assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)], stage
        assert sorted(s for r in ranks for s in r["shards"]) == [0, 1, 2, 3] and all(r["shards"] for r in ranks)
        assert ranks[0]["pid"] != ranks[1]["pid"]
    for name in ("pl.json", "syn.json"):
        assert (pool_two / name).read_bytes() == (pool_one / name).read_bytes(), name


def _one_rank_pool(out: Path) -> Path:
    """The recipe's data engine on one rank, in this process (its steps up to synth only)."""
    from recipes.config import load_recipe
    from recipes.runner import RecipeRun

    run = RecipeRun(load_recipe("demo", {**RECIPE, "synth": {"shard_size": 3, "accelerator": "cpu", "devices": 1,
                                                             "progress": False}}), out, progress=False,
                    say=lambda _: None)
    hq = run.data()["hq"]
    run.calibrate(run.verifier(hq), hq)
    run.synth()
    return out / "synth" / "pool"


def test_two_synth_ranks_in_a_recipe_write_what_one_rank_writes(tmp_path, one_rank):
    two = _recipe(tmp_path / "two", 2)
    # every step once: no rank re-ran the recipe
    assert [line for line in two.splitlines() if line.startswith("[")] == [
        "[data] ...", "[verifier] ...", "[calibrate] ...", "[synth] ...", "[train] ...", "[report] ...", "[export] ..."]
    _assert_two_ranks_wrote_what_one_rank_wrote(tmp_path / "two" / "synth" / "pool", one_rank)
    assert (tmp_path / "two" / "results.csv").read_text().count("syn-n4-s0") == 1


def test_on_a_cluster_the_engine_is_one_job_whose_tasks_are_its_ranks(tmp_path, one_rank, monkeypatch):
    """train.launcher: slurm: the engine's stages run as one job of synth.num_nodes x synth.devices tasks
    (submitit's local executor here: 1 node x 2 tasks), and the recipe merges their shards."""
    from recipes.config import load_recipe
    from recipes.runner import RecipeRun

    said: list[str] = []
    recipe = load_recipe("demo", {**RECIPE, "synth": {"shard_size": 3, "accelerator": "cpu", "devices": 2},
                                  "train": {**RECIPE["train"], "launcher": "slurm",
                                            "slurm": {"executor": "local", "poll_seconds": 0.5}}})
    run = RecipeRun(recipe, tmp_path, progress=False, say=said.append)
    hq = run.data()["hq"]
    run.calibrate(run.verifier(hq), hq)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job's tasks inherit this process's environment
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = run.synth()
    assert found is not None and Path(found["syn"].path).is_file()
    assert any("synth:pool: submitted as job" in line and "(1 node(s) x 2 rank(s), local)" in line for line in said)
    _assert_two_ranks_wrote_what_one_rank_wrote(tmp_path / "synth" / "pool", one_rank)
    assert set(json.loads((tmp_path / "slurm" / "submitted.json").read_text())) == {"synth:pool"}
    assert run.synth() is not None and said[-1].startswith("synth:pool")  # finished: merged again, not resubmitted
