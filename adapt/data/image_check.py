"""Check that every sample's image exists, decodes, and has the size its annotation file declares.

Decoding is the cheap kind: JPEGs are decoded at 1/8 scale (PIL's draft mode still reads the whole stream, so a
truncated file fails), other formats in full. The size compared is the displayed one, after the EXIF orientation
(as labelme, Roboflow and ultralytics annotate, and as every image reader here loads it). An image given as an
fsspec URL is read through fsspec.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from tqdm import tqdm

from sam3_model import storage
from sam3_model.images import displayed_size

from .records import DatasetProblem, ImageSample, ReadResult

PROGRESS_OVER = 200  # show a progress bar above this many images
MAX_WORKERS = 4  # decoding releases the GIL; a few threads are enough to keep the disk busy


def check_images(result: ReadResult, file: str) -> ReadResult:
    """Drop the samples whose image is missing, does not decode, or has another size; each becomes a problem."""
    samples = result.samples
    workers = max(1, min(MAX_WORKERS, os.cpu_count() or 1, len(samples)))
    quiet = len(samples) <= PROGRESS_OVER or os.environ.get("TQDM_DISABLE") == "1"  # tqdm's own switch, honoured
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(samples), desc="checking images", unit="img", disable=quiet) as bar:
        messages = []
        for message in pool.map(image_problem, samples):
            messages.append(message)
            bar.update(1)
    kept = [s for s, m in zip(samples, messages) if m is None]
    problems = [
        DatasetProblem(file, f"image {s.image_id!r} ({s.image_path})", m, s.image_id)
        for s, m in zip(samples, messages)
        if m is not None
    ]
    return ReadResult(kept, list(result.problems) + problems, list(result.notes))


def image_problem(sample: ImageSample) -> str | None:
    """What is wrong with a sample's image file (missing, undecodable, another size), or None when it is fine."""
    path = sample.image_path
    try:
        if not storage.is_file(path):
            return "image file not found" if not storage.exists(path) else "image path is not a file"
    except OSError as err:  # an unreachable remote folder, a permission refused
        return f"image cannot be reached ({type(err).__name__}: {err})"
    try:
        with storage.open_binary(path) as handle, Image.open(handle) as img:
            width, height = displayed_size(img)
            if (width, height) != (sample.width, sample.height):
                rotated = " after its EXIF orientation" if (width, height) != img.size else ""
                return (f"image is {width}x{height} (width x height){rotated}, the annotation file says "
                        f"{sample.width}x{sample.height}")  # fmt: skip
            width, height = img.size
            img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))  # JPEG only; a no-op otherwise
            img.load()
    except Exception as err:  # noqa: BLE001 (PIL raises OSError, SyntaxError, ValueError... on bad files)
        return f"image does not decode ({type(err).__name__}: {err})"
    return None
