"""Small fabricated datasets on disk (toy shapes on noise) for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from sam3_model.records import encode_mask

CATEGORIES = [(1, "red square"), (2, "blue disc"), (3, "green bar")]  # "green bar" never appears: a negative


def _shape_mask(kind: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(min(h, w) // 5, min(h, w) // 3))
    y0, x0 = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
    mask = np.zeros((h, w), np.uint8)
    if kind == 1:
        mask[y0 : y0 + side, x0 : x0 + side] = 1
    else:
        yy, xx = np.mgrid[:h, :w]
        r = side / 2
        mask[(yy - y0 - r) ** 2 + (xx - x0 - r) ** 2 <= r * r] = 1
    return mask


def make_coco_dataset(root: Path, num_images: int = 6, seed: int = 0, polygons: bool = False,
                      size: tuple[int, int] = (96, 128)) -> Path:
    """Write `root/images/*.png` and `root/annotations.json` (COCO instance JSON, RLE or polygon masks)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    h, w = size
    for i in range(num_images):
        pixels = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        for kind, colour in ((1, (230, 30, 30)), (2, (30, 30, 230))):
            for _ in range(int(rng.integers(0, 3))):
                mask = _shape_mask(kind, h, w, rng)
                pixels[mask.astype(bool)] = colour
                ys, xs = np.nonzero(mask)
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                if polygons:
                    seg = [[float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]]
                else:
                    seg = encode_mask(mask)
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": kind,
                                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                                    "area": float(mask.sum()), "iscrowd": 0, "segmentation": seg})
        name = f"img{i:03d}.png"
        Image.fromarray(pixels).save(root / "images" / name)
        images.append({"id": i + 1, "file_name": f"images/{name}", "height": h, "width": w})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": n} for c, n in CATEGORIES]}
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return path
