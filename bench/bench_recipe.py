"""Benchmark: the demo recipe's wall time, and a recipe's training time per arm estimated from measured steps.

    python bench/bench_recipe.py demo                       # end-to-end `sam3-adapt recipe run demo`, timed
    python bench/bench_recipe.py arm-time --recipe food     # step time of the recipe's fine-tuning preset
        [--model sam3-random] [--device cuda] [--batch-size 8] [--phrases 8] [--steps 3]

`arm-time` builds the recipe's `Sam3FineTuner` (mode, LoRA, lrs, precision) on `--model` (default: the `sam3-random`
preset, the architecture of `facebook/sam3` with random weights: step time does not depend on the weights), times
`--steps` optimizer steps (after one warm-up) on a fabricated batch of `--batch-size` images with `--phrases`
phrases each (one negative), and one evaluation forward; the per-arm estimate is
`train.steps x step time + test images x forward time per image`, per run and for all of an arm's runs
(sizes x seeds x mixes). Results: docs/benchmarks.md, section "Recipes".
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_model  # noqa: E402


def bench_demo(out: Path, extra: list[str]) -> dict:
    """Run the demo recipe in a fresh folder; wall time, the runner's step timings and the headline numbers."""
    start = time.perf_counter()
    subprocess.run(["sam3-adapt", "recipe", "run", "demo", "--out", str(out), "--quiet", *extra], check=True,
                   env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    import csv

    rows = list(csv.DictReader(open(out / "results.csv")))
    zero = next(float(r["cgF1"]) for r in rows if r["arm"] == "zero-shot")
    return {"wall_seconds": round(wall, 1), "steps": json.loads((out / "timings.json").read_text()),
            "zero_shot_cgF1": zero,
            "cgF1": {f"{r['arm']}/{r['mix']}/n{r['train_images']}": float(r["cgF1"]) for r in rows}}


def bench_arm_time(args: argparse.Namespace) -> dict:
    """Measured step and evaluation-forward times of the recipe's preset, and the per-arm estimate."""
    from bench.bench_fit_overhead import fabricate_coco, fixed_batch
    from recipes.config import load_recipe
    from recipes.jobs import TrainJob, _memory, _module
    from adapt.data.datamodule import DatasetSpec
    from adapt.training.optim import build_optimizer

    recipe = load_recipe(args.recipe)
    settings = recipe.train
    job = TrainJob(name="bench", arm="hq", mix="none", size=0, seed=0, base_model=args.model, out_dir="",
                   test=DatasetSpec(path=""), settings=settings, recipe=recipe.name)
    module = _module(job, _memory(job)).to(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        coco = fabricate_coco(Path(tmp), args.batch_size, args.phrases, instances=3)
        batch = fixed_batch(coco, module.image_size, args.batch_size, module.processor.tokenizer).to(args.device)
    optimizer = build_optimizer(module.model, module.optimizer_config)
    dtype = torch.bfloat16 if settings.precision.startswith("bf16") else None
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def step() -> float:
        sync()
        t = time.perf_counter()
        with torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss, _ = module.batch_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 0.1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t

    module.train()
    step()  # warm-up
    times = [step() for _ in range(args.steps)]
    module.eval()
    with torch.no_grad(), torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype is not None):
        sync()
        t = time.perf_counter()
        module.model.get_vision_features(pixel_values=batch.pixel_values)
        sync()
        eval_per_image = (time.perf_counter() - t) / args.batch_size
    step_s = statistics.median(times)
    scale = settings.batch_size / args.batch_size  # linear in images per step when the batch is smaller
    per_run = settings.steps * step_s * scale + args.test_images * eval_per_image
    runs_per_arm = len(recipe.sizes) * len(recipe.seeds) * len(recipe.mixes)
    return {"recipe": recipe.name, "model": args.model, "device": args.device,
            "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_model(),
            "mode": settings.trainable.mode, "precision": settings.precision, "measured_batch": args.batch_size,
            "phrases_per_image": args.phrases, "image_size": module.image_size,
            "step_seconds": [round(t, 3) for t in times], "step_seconds_median": round(step_s, 3),
            "recipe_batch": settings.batch_size, "recipe_steps": settings.steps,
            "vision_forward_per_image_s": round(eval_per_image, 3), "test_images": args.test_images,
            "estimate_per_run_hours": round(per_run / 3600, 2), "runs_per_arm": runs_per_arm,
            "estimate_per_arm_hours": round(runs_per_arm * per_run / 3600, 2)}


def main() -> None:
    """Parse the mode and print its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    demo = modes.add_parser("demo")
    demo.add_argument("--out", type=Path, default=None, help="run folder (default: a fresh temporary one)")
    demo.add_argument("overrides", nargs="*", help="recipe overrides, as `recipe run`'s (--train.steps=100)")
    arm = modes.add_parser("arm-time")
    arm.add_argument("--recipe", default="food")
    arm.add_argument("--model", default="sam3-random")
    arm.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    arm.add_argument("--batch-size", type=int, default=8)
    arm.add_argument("--phrases", type=int, default=8)
    arm.add_argument("--steps", type=int, default=3)
    arm.add_argument("--test-images", type=int, default=1000, help="held-out images evaluated per run")
    arm.add_argument("--threads", type=int, default=None)
    args, unknown = parser.parse_known_args()
    if args.mode == "demo":  # `--key=value` overrides pass through to the recipe
        args.overrides = [*args.overrides, *unknown]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.mode == "demo":
        out = args.out or Path(tempfile.mkdtemp(prefix="demo-bench-"))
        report = bench_demo(out, args.overrides)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        report = bench_arm_time(args)
    report["cpu"] = cpu_model()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
