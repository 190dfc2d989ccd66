"""The data engine on several ranks inside a recipe: the stages run on 2 spawned CPU ranks, the recipe itself runs
once (Lightning's script launcher would re-run the whole `recipe run` in every rank), and the datasets are
byte-identical to a 1-rank run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def _recipe(out: Path, devices: int) -> str:
    sets = [f"--{key}={json.dumps(value)}" for key, value in RECIPE.items()]
    synth = {"shard_size": 3, "accelerator": "cpu", "devices": devices, "progress": False}
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    done = subprocess.run([str(CLI), "recipe", "run", "demo", "--out", str(out), "--quiet", *sets,
                           f"--synth={json.dumps(synth)}"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


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


def test_two_synth_ranks_in_a_recipe_write_what_one_rank_writes(tmp_path):
    two = _recipe(tmp_path / "two", 2)
    # every step once: no rank re-ran the recipe
    assert [line for line in two.splitlines() if line.startswith("[")] == [
        "[data] ...", "[verifier] ...", "[calibrate] ...", "[synth] ...", "[train] ...", "[report] ...", "[export] ..."]
    pool_one, pool_two = _one_rank_pool(tmp_path / "one"), tmp_path / "two" / "synth" / "pool"
    for stage in ("generate", "label", "verify"):  # 10 images in 4 shards of 3, shared by the 2 ranks
        ranks = [json.loads(p.read_text()) for p in sorted((pool_two / "stages" / stage / "ranks").glob("*.json"))]
        assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)], stage
        assert sorted(s for r in ranks for s in r["shards"]) == [0, 1, 2, 3] and all(r["shards"] for r in ranks)
        assert ranks[0]["pid"] != ranks[1]["pid"]
    for name in ("pl.json", "syn.json"):
        assert (pool_two / name).read_bytes() == (pool_one / name).read_bytes(), name
    assert (tmp_path / "two" / "results.csv").read_text() .count("syn-n4-s0") == 1
