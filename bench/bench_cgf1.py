"""cgF1 evaluation speed and peak memory: `adapt.evaluation.cgf1` vs the official `CGF1Evaluator`.

Synthetic SA-Co-like data: N image-phrase pairs, ~70% negative phrases, positives with 1-10 instances,
256x256 RLE masks, predictions near the GTs plus spurious ones (also on negatives). Single process.
Usage: python bench/bench_cgf1.py [--pairs 10000] [--iou-type segm] [--official PATH]
The official file is found as in tests/test_cgf1.py ($SAM3_CGF1_EVAL or the installed `sam3` distribution).
"""

from __future__ import annotations

import argparse
import gc
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import numpy as np
import pycocotools.mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adapt.evaluation.cgf1 import evaluate_pairs, load_predictions, load_saco_truth, official_keys  # noqa: E402


def _rect_rle(rng: np.random.Generator, size: int, near: tuple[int, int, int, int] | None = None) -> tuple[dict, tuple]:
    """A rectangle mask (optionally a jittered copy of `near`) as str-count RLE, and its rectangle."""
    if near is None:
        r0, c0 = (int(v) for v in rng.integers(0, size - 16, 2))
        r1, c1 = r0 + int(rng.integers(8, size - r0)), c0 + int(rng.integers(8, size - c0))
    else:
        r0, r1, c0, c1 = (max(0, min(size, v + int(rng.integers(-4, 5)))) for v in near)
        r1, c1 = max(r1, r0 + 1), max(c1, c0 + 1)
    m = np.zeros((size, size), np.uint8, order="F")
    m[r0:r1, c0:c1] = 1
    rle = mask_utils.encode(m)
    return {"size": rle["size"], "counts": rle["counts"].decode()}, (r0, r1, c0, c1)


def make_data(n_pairs: int, size: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """One SA-Co GT dict and its COCO-results predictions."""
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], []
    for pid in range(1, n_pairs + 1):
        images.append({"id": pid, "file_name": f"{pid}.jpg", "height": size, "width": size, "text_input": f"np{pid}",
                       "is_instance_exhaustive": bool(rng.random() < 0.95)})  # fmt: skip
        n_inst = 0 if rng.random() < 0.7 else int(rng.integers(1, 11))
        for _ in range(n_inst):
            rle, rect = _rect_rle(rng, size)
            anns.append(_ann(len(anns) + 1, pid, rle, size, crowd=rng.random() < 0.05))
            if rng.random() < 0.8:
                preds.append(_pred(pid, _rect_rle(rng, size, rect)[0], size, float(rng.uniform(0.3, 1.0))))
        for _ in range(int(rng.choice([0, 0, 0, 1, 2]))):  # spurious predictions
            preds.append(_pred(pid, _rect_rle(rng, size)[0], size, float(rng.uniform(0.0, 0.8))))
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    return gt, preds


def _ann(aid: int, pid: int, rle: dict, size: int, crowd: bool) -> dict:
    """One GT annotation with a normalised box."""
    x, y, w, h = mask_utils.toBbox(rle).tolist()
    return {"id": aid, "image_id": pid, "category_id": 1, "bbox": [x / size, y / size, w / size, h / size],
            "segmentation": rle, "area": float(mask_utils.area(rle)), "iscrowd": int(crowd)}  # fmt: skip


def _pred(pid: int, rle: dict, size: int, score: float) -> dict:
    """One prediction with a normalised box."""
    x, y, w, h = mask_utils.toBbox(rle).tolist()
    return {"image_id": pid, "category_id": 1, "score": score, "bbox": [x / size, y / size, w / size, h / size],
            "segmentation": rle}  # fmt: skip


def official_path(arg: str | None) -> Path | None:
    """The official cgf1_eval.py: --official, $SAM3_CGF1_EVAL, or the installed `sam3` distribution."""
    env = arg or os.environ.get("SAM3_CGF1_EVAL")
    if env:
        return Path(env)
    try:
        dist = importlib.metadata.distribution("sam3")
    except importlib.metadata.PackageNotFoundError:
        return None
    hits = [f for f in dist.files or [] if str(f).endswith("sam3/eval/cgf1_eval.py")]
    return Path(dist.locate_file(hits[0])) if hits else None


def measure(fn: Callable[[], dict]) -> tuple[dict, float, float]:
    """(result, seconds, peak MiB of Python allocations) of one call."""
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, seconds, peak


def main() -> None:
    """Build the data, time both evaluators, print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iou-type", choices=["segm", "bbox"], default="segm")
    ap.add_argument("--official", default=None)
    ap.add_argument("--no-tracemalloc", action="store_true", help="time without tracemalloc overhead")
    args = ap.parse_args()
    gt, preds = make_data(args.pairs, args.size)
    tmp = Path(tempfile.mkdtemp(prefix="bench_cgf1_"))
    gt_path, pred_path = tmp / "gt.json", tmp / "preds.json"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(json.dumps(preds))
    run = _time if args.no_tracemalloc else measure

    def ours() -> dict:
        truth = load_saco_truth(gt_path)
        return official_keys(evaluate_pairs([truth], load_predictions(pred_path, truth), args.iou_type).metrics,
                             args.iou_type)  # fmt: skip

    rows = [("ours (adapt.evaluation.cgf1)", *run(ours))]
    path = official_path(args.official)
    if path and path.is_file():
        spec = importlib.util.spec_from_file_location("_official_cgf1_eval", path)
        official = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(official)

        def theirs() -> dict:
            with contextlib.redirect_stdout(io.StringIO()):
                return official.CGF1Evaluator(gt_path=str(gt_path), iou_type=args.iou_type).evaluate(str(pred_path))

        rows.append(("official CGF1Evaluator", *run(theirs)))
    n_pos = len({a["image_id"] for a in gt["annotations"]})
    n_neg = len(gt["images"]) - n_pos
    print(f"{args.pairs} pairs ({n_neg} negative), {len(gt['annotations'])} GT, {len(preds)} predictions, "
          f"{args.size}x{args.size} RLE, iou_type={args.iou_type}\n")  # fmt: skip
    mem = "n/a" if args.no_tracemalloc else "peak MiB (tracemalloc)"
    print(f"| evaluator | seconds | {mem} | cgF1 |\n|---|---:|---:|---:|")
    key = f"cgF1_eval_{args.iou_type}_cgF1"
    for name, out, sec, peak in rows:
        print(f"| {name} | {sec:.2f} | {peak:.0f} | {out[key]:.6f} |")
    if len(rows) == 2:
        diff = max(abs(rows[0][1][k] - rows[1][1][k]) for k in rows[1][1])
        print(f"\nspeed-up x{rows[1][2] / rows[0][2]:.1f}; max |ours - official| over all keys = {diff:.2e}")


def _time(fn: Callable[[], dict], repeats: int = 3) -> tuple[dict, float, float]:
    """(result, best seconds of `repeats` calls, nan), each call after a full collection so that no
    evaluator pays the garbage collector for objects the other left behind."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best, float("nan")


if __name__ == "__main__":
    main()
