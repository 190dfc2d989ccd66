"""The validation panel as W&B media: each image with toggleable mask and box layers (predictions, ground truth).

`panel_media` turns `(image, predictions, ground truth)` entries into what `wandb.Image(image, masks=..., boxes=...,
caption=...)` takes. One class id per phrase (the same ids in both layers, so a phrase has one colour), class
labels are the phrases, and each layer is one (H, W) class map. Small images are upscaled by a whole factor
(nearest neighbour for the class maps) until their short side reaches `min_side`, and every image of one panel
is padded (bottom, right) to one size: W&B draws a list of images of different sizes wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sam3_model.prompting import prompt_text
from sam3_model.records import ConceptResult, Instance, decode_mask

MAX_CLASSES = 127  # W&B writes mask PNGs through int8: class ids above 127 would be lost


@dataclass
class PanelMedia:
    """One panel image ready for `wandb.Image`: the (upscaled, padded) picture, its layers and caption."""

    image: Image.Image
    masks: dict[str, dict[str, Any]]  # layer -> {"mask_data": (H, W) uint8 class map, "class_labels": {id: phrase}}
    boxes: dict[str, dict[str, Any]]  # layer -> {"box_data": [...], "class_labels": {id: phrase}}
    caption: str


def panel_media(entries: Sequence[tuple[Image.Image, Sequence[ConceptResult], Sequence[ConceptResult] | None]],
                min_side: int = 256) -> list[PanelMedia]:
    """W&B media for `(image, predictions, ground truth or None)` entries, all of one size."""
    factors = [max(1, math.ceil(min_side / max(1, min(image.size)))) for image, _, _ in entries]
    width = max((image.width * k for (image, _, _), k in zip(entries, factors)), default=0)
    height = max((image.height * k for (image, _, _), k in zip(entries, factors)), default=0)
    return [_one(image, list(predictions), list(truths) if truths is not None else None, k, (height, width))
            for (image, predictions, truths), k in zip(entries, factors)]


def _one(image: Image.Image, predictions: list[ConceptResult], truths: list[ConceptResult] | None, k: int,
         canvas_hw: tuple[int, int]) -> PanelMedia:
    layers = {"predictions": predictions, **({"ground_truth": truths} if truths is not None else {})}
    class_ids = _class_ids(layers.values())
    labels = {cid: phrase for phrase, cid in class_ids.items()}
    shape = (image.height, image.width)
    canvas = Image.new("RGB", (canvas_hw[1], canvas_hw[0]))
    big = image.convert("RGB")
    if k > 1:
        big = big.resize((image.width * k, image.height * k), Image.Resampling.BICUBIC)
    canvas.paste(big, (0, 0))
    masks, boxes = {}, {}
    for name, results in layers.items():
        scored = name == "predictions"
        small = _class_map(results, class_ids, shape, scored)  # (H, W)
        big_map = np.zeros(canvas_hw, dtype=np.uint8)  # (H', W'): nearest-neighbour upscale, then padding
        big_map[: shape[0] * k, : shape[1] * k] = small.repeat(k, axis=0).repeat(k, axis=1)
        masks[name] = {"mask_data": big_map, "class_labels": dict(labels)}
        boxes[name] = {"box_data": _box_data(results, class_ids, k, scored), "class_labels": dict(labels)}
    return PanelMedia(canvas, masks, boxes, _caption(predictions, truths))


def _class_ids(layers: Any) -> dict[str, int]:
    """Class id (1, 2, ...; 0 is background) of every phrase with an instance in some layer, in order of first
    appearance; phrases beyond MAX_CLASSES are left out of the panel."""
    ids: dict[str, int] = {}
    for results in layers:
        for result in results:
            phrase = prompt_text(result.prompt)
            if result.instances and phrase not in ids and len(ids) < MAX_CLASSES:
                ids[phrase] = len(ids) + 1
    return ids


def _class_map(results: list[ConceptResult], class_ids: dict[str, int], shape: tuple[int, int],
               scored: bool) -> np.ndarray:
    """One layer's (H, W) uint8 class map. Overlapping instances must share one class per pixel: predictions are
    painted in ascending score, so the highest-scoring instance wins; ground truth (no scores) is painted largest
    first, so the smaller instance wins and one lying inside another stays visible."""
    painted: list[tuple[float, np.ndarray, int]] = []
    for result in results:
        cid = class_ids.get(prompt_text(result.prompt))
        for inst in result.instances if cid is not None else []:
            mask = decode_mask(inst.mask).astype(bool)  # (H, W)
            if mask.shape != shape:
                continue  # a mask of another image size cannot be drawn here
            painted.append((inst.score if scored else -float(mask.sum()), mask, cid))
    out = np.zeros(shape, dtype=np.uint8)
    for _, mask, cid in sorted(painted, key=lambda item: item[0]):
        out[mask] = cid
    return out


def _box_data(results: list[ConceptResult], class_ids: dict[str, int], k: int, scored: bool) -> list[dict]:
    """W&B box entries, in pixels of the upscaled image; predictions carry their score."""
    data = []
    for result in results:
        phrase = prompt_text(result.prompt)
        if phrase not in class_ids:
            continue
        for inst in result.instances:
            data.append(_box(inst, phrase, class_ids[phrase], k, scored))
    return data


def _box(inst: Instance, phrase: str, cid: int, k: int, scored: bool) -> dict:
    x0, y0, x1, y1 = (float(v) * k for v in inst.box_xyxy_px)
    box: dict[str, Any] = {"position": {"minX": x0, "minY": y0, "maxX": x1, "maxY": y1}, "domain": "pixel",
                           "class_id": cid, "box_caption": phrase}
    if scored:
        box["box_caption"] = f"{phrase} {inst.score:.2f}"
        box["scores"] = {"score": float(inst.score)}
    return box


def _caption(predictions: list[ConceptResult], truths: list[ConceptResult] | None) -> str:
    """`image 7 (predicted/annotated): cat 2/3, dog 0/1`, phrases with an instance in some layer only (a panel
    image may be asked dozens of absent phrases); without ground truth, `image 7: cat (2)`."""
    results = predictions or truths or []
    image_id = results[0].image_id if results else "?"
    counts: dict[str, list[int]] = {}
    for column, layer in enumerate((predictions, truths or [])):
        for result in layer:
            counts.setdefault(prompt_text(result.prompt), [0, 0])[column] += len(result.instances)
    shown = {phrase: n for phrase, n in counts.items() if sum(n) > 0}
    if not shown:
        return f"image {image_id}: no instances"
    if truths is None:
        return f"image {image_id}: " + ", ".join(f"{p} ({n})" for p, (n, _) in shown.items())
    return f"image {image_id} (predicted/annotated): " + ", ".join(f"{p} {n}/{t}" for p, (n, t) in shown.items())
