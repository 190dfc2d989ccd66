"""Benchmark: images per second of each data-engine stage (generate, label, verify), and what batching buys.

Builds tiny random models in a temporary folder (a Stable Diffusion pipeline, CLIP, a LLaVA-style VLM; the
teacher is the `tiny` SAM 3 preset, or --teacher) and times, on --images toy-domain images of --size px with
the 3-phrase toy ontology:

  generate   the toy renderer, and text-to-image with the tiny SD pipeline (--steps, 64 px)
  label      the teacher prompting every ontology phrase on every image (one vision pass per image)
  verify     geometric + teacher-confidence, CLIP (batched), and the VLM in logits mode at batch 1 and 8

Each stage runs through `SynthRun` (Lightning prediction over shards, the real path), so the figures include
shard I/O. Prints a table and writes JSON (--json). Results: docs/benchmarks.md, section "Data engine".

    python bench/bench_synth.py                    # ~2 min on a 2-core machine
    python bench/bench_synth.py --teacher facebook/sam3 --images 64 --size 1008   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from machine import cpu_model  # noqa: E402
from synth.config import synth_config_from_mapping  # noqa: E402
from synth.engine import SynthRun  # noqa: E402
from tiny_clip import build_tiny_clip  # noqa: E402
from tiny_diffusion import build_tiny_sd  # noqa: E402
from tiny_vlm import build_tiny_vlm  # noqa: E402

ONTOLOGY = {"concepts": [{"name": "striped red square", "parent": "red square"},
                         {"name": "blue circle", "hard_negatives": ["blue triangle"]}]}


def _timed_run(tmp: Path, name: str, source: dict, verify: dict, args: argparse.Namespace) -> dict[str, float]:
    """Run generate, label, verify into tmp/name; seconds per stage."""
    config = synth_config_from_mapping({
        "ontology": ONTOLOGY, "source": source, "verify": verify,
        "teacher": {"model": args.teacher, "threshold": 0.2, "candidate_threshold": 0.05},
        "run": {"shard_size": args.shard_size, "progress": False},
    }, f"{name}:", tmp)
    run = SynthRun(config, tmp / name)
    seconds = {}
    for stage in ("generate", "label", "verify"):
        start = time.perf_counter()
        getattr(run, stage)()
        seconds[stage] = time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--teacher", default="tiny")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sd, clip, vlm = build_tiny_sd(tmp / "sd"), build_tiny_clip(tmp / "clip"), build_tiny_vlm(tmp / "vlm")
        toy = {"toy": {"num_images": args.images, "size": args.size}}
        cheap = {"geometric": {}, "teacher_confidence": {}}
        base = _timed_run(tmp, "cheap", toy, cheap, args)
        rows["generate: toy renderer"] = base["generate"]
        rows["label: teacher, 3 phrases/image"] = base["label"]
        rows["verify: geometric + teacher confidence"] = base["verify"]
        gen = _timed_run(tmp, "sd", {"generate": {"pipeline": str(sd), "images_per_concept": args.images // 2,
                                                   "steps": args.steps, "height": 64, "width": 64}}, {}, args)
        rows[f"generate: tiny SD, {args.steps} steps, 64 px"] = gen["generate"]
        rows["verify: CLIP (batch 32)"] = _timed_run(tmp, "clip", toy, {"clip": {"model": str(clip)}}, args)["verify"]
        for batch in (1, 8):
            rows[f"verify: VLM logits, batch {batch}"] = _timed_run(
                tmp, f"vlm{batch}", toy, {"vlm": {"model": str(vlm), "batch_size": batch}}, args)["verify"]
    n = args.images
    print(f"{n} images of {args.size} px, teacher {args.teacher}, {args.threads} thread(s), {cpu_model()}")
    print("| stage | seconds | images/s |\n|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.2f} | {n / seconds:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"images": n, "size": args.size, "teacher": args.teacher,
                                         "threads": args.threads, "cpu": cpu_model(),
                                         "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                                         "seconds": rows}, indent=2))


if __name__ == "__main__":
    main()
