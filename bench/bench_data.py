"""Benchmark: images per second of the training data path (PhraseDataset + TrainTransform, masks included).

Fabricates --images JPEGs (default 1600 x 1200, 10 instances with RLE masks, 3 phrases + 2 hard negatives
each) in a temporary folder, then measures at --image-size (default 1008):

  (a) one process: `dataset[i]` for every image (the figure per DataLoader worker), with a breakdown into
      image decoding, mask decoding, the transform, and the rest (splitting, hard negatives);
  (b) a DataLoader with --workers workers, batch --batch-size and the PhraseCollator (offline tokenizer):
      from creating the iterator to the last batch (worker start-up included) and after the first batch.

Prints a table and writes JSON (--json). Results: docs/benchmarks.md, section "Data loading".

    python bench/bench_data.py                     # ~30 s on a 2-core machine
    python bench/bench_data.py --images 256 --workers 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapt.data.batch import PhraseCollator
from adapt.data.dataset import PhraseDataset
from adapt.data.records import ImageSample, PhraseInstances
from adapt.data.transforms import AugmentConfig, TrainTransform
from sam3_model.images import load_image
from sam3_model.records import encode_mask
from sam3_model.tokenizer import build_offline_tokenizer

VOCABULARY = [f"thing {i}" for i in range(200)]


def fabricate(folder: Path, n: int, width: int, height: int, instances: int, phrases: int,
              with_masks: bool, seed: int = 0) -> list[ImageSample]:
    """n JPEG images with smooth content and `instances` ellipses split over `phrases` phrases."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    samples = []
    for i in range(n):
        base = np.stack([(xx / width * 255), (yy / height * 255), ((xx + yy) / (width + height) * 255)], -1)
        image = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        groups: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(phrases)]
        for j in range(instances):
            mask = np.zeros((height, width), np.uint8)
            center = (int(rng.integers(100, width - 100)), int(rng.integers(100, height - 100)))
            axes = (int(rng.integers(20, 200)), int(rng.integers(20, 200)))
            cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            image[mask.astype(bool)] = color
            ys, xs = np.nonzero(mask)
            box_xywh = np.array([xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()], np.float32)
            groups[j % phrases].append((box_xywh, mask))
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        asked = [PhraseInstances(f"object {k}", np.stack([b for b, _ in g]) if g else np.zeros((0, 4), np.float32),
                                 [encode_mask(m) for _, m in g] if with_masks else None)
                 for k, g in enumerate(groups)]
        samples.append(ImageSample(path, width, height, asked, image_id=i, dataset="bench"))
    return samples


def time_single_process(dataset: PhraseDataset, transform: TrainTransform) -> dict:
    """(a) dataset[i] over every image, then the same work split into its parts."""
    for i in range(min(2, len(dataset))):  # warm-up
        dataset[i]
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    total = time.perf_counter() - start
    parts = {"image decode": 0.0, "mask decode": 0.0, "transform": 0.0}
    for sample in dataset.samples:
        t0 = time.perf_counter()
        image = np.asarray(load_image(sample.image_path, where="bench"))
        t1 = time.perf_counter()
        masks = dataset._masks(sample, sample.phrases, image.shape[:2]) if dataset.has_masks else None  # (T, H, W)
        t2 = time.perf_counter()
        boxes = np.concatenate([p.boxes_xywh_px for p in sample.phrases])
        transform(image, np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1), masks)
        t3 = time.perf_counter()
        parts["image decode"] += t1 - t0
        parts["mask decode"] += t2 - t1
        parts["transform"] += t3 - t2
    n = len(dataset)
    ms = {k: 1000 * v / n for k, v in parts.items()}
    ms["rest"] = max(0.0, 1000 * total / n - sum(ms.values()))
    return {"images_per_s": n / total, "ms_per_image": 1000 * total / n, "breakdown_ms": ms}


def time_loader(dataset: PhraseDataset, workers: int, batch_size: int) -> dict:
    """(b) a DataLoader with the PhraseCollator: one pass over the dataset."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True,
                        collate_fn=PhraseCollator(build_offline_tokenizer()))
    start = time.perf_counter()
    stamps, queries = [], 0
    for batch in loader:
        stamps.append(time.perf_counter())
        queries += batch.num_queries
    total = stamps[-1] - start
    steady = stamps[-1] - stamps[0]
    steady_images = len(dataset) - batch_size
    gaps = np.diff(stamps) * 1000 if len(stamps) > 1 else np.zeros(1)
    return {"images_per_s": len(dataset) / total, "steady_images_per_s": steady_images / steady if steady else None,
            "first_batch_s": stamps[0] - start, "batches": len(stamps), "queries": queries,
            "median_batch_gap_ms": float(statistics.median(gaps))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--phrases", type=int, default=3)
    parser.add_argument("--negatives", type=int, default=2, help="hard negatives per image")
    parser.add_argument("--image-size", type=int, default=1008)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--no-masks", action="store_true", help="box-only data")
    parser.add_argument("--augment", action="store_true", help="also hflip 0.5 and colour jitter 0.2")
    parser.add_argument("--json", type=Path, default=Path("outputs/bench_data.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    np.random.seed(0)
    load_start = os.getloadavg()[0]
    augment = AugmentConfig(hflip=0.5, color_jitter=0.2) if args.augment else AugmentConfig()
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        samples = fabricate(Path(folder), args.images, args.width, args.height, args.instances, args.phrases,
                            not args.no_masks)
        fabricate_s = time.perf_counter() - t0
        transform = TrainTransform(args.image_size, augment)
        dataset = PhraseDataset(samples, transform, hard_negatives=VOCABULARY, negatives_per_image=args.negatives)
        single = time_single_process(dataset, transform)
        loader = time_loader(dataset, args.workers, args.batch_size)
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "single_process": single,
        "dataloader": loader,
        "fabricate_s": fabricate_s,
        "load_avg": [load_start, os.getloadavg()[0]],
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "cv2_threads": cv2.getNumThreads(), "processor": platform.processor()},
    }
    masks = "no masks" if args.no_masks else "masks"
    print(f"{args.images} images {args.width}x{args.height}, {args.instances} instances ({masks}), "
          f"{args.phrases} phrases + {args.negatives} hard negatives, canvas {args.image_size}, "
          f"load avg {load_start:.2f} -> {report['load_avg'][1]:.2f}")
    print("| path | images/s | ms/image |\n|---|---:|---:|")
    print(f"| one process (per worker) | {single['images_per_s']:.1f} | {single['ms_per_image']:.1f} |")
    print(f"| DataLoader, {args.workers} workers, batch {args.batch_size}, collator, whole pass "
          f"| {loader['images_per_s']:.1f} | {1000 / loader['images_per_s']:.1f} |")
    if loader["steady_images_per_s"]:
        print(f"| same, after the first batch ({loader['first_batch_s']:.2f} s) "
              f"| {loader['steady_images_per_s']:.1f} | {1000 / loader['steady_images_per_s']:.1f} |")
    print("one-process breakdown (ms/image): " + ", ".join(f"{k} {v:.1f}" for k, v in single["breakdown_ms"].items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
