"""Copy-paste: cut instances out of a labelled dataset and paste them onto background images from a pool.

Each image is one background with 1..k pasted cut-outs (scale and position jitter, optional feathered edges). The
labels are exact by construction: a pasted instance's mask is the set of pixels where its alpha is >= 0.5 and no
later paste covers it (alpha >= 0.5). A placement that would leave an earlier paste with less than `min_visible`
of its label pixels visible is tried again elsewhere (a few times) and otherwise not pasted at all, so every
instance in the image is in the labels and no label is a sliver. In the provenance, "xy" is the top-left corner
(x, y) of the resized cut-out's box in the produced image, "pasted_px" its label pixels as pasted and
"visible_px" those left visible at the end.

The instance dataset (SA-Co or COCO JSON) is read on first use (`setup` or `produce`), never by `plan()`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from sam3_model.configs import PATH
from sam3_model.errors import ConfigError, ImageError
from sam3_model.images import load_image
from sam3_model.records import RLE, decode_mask, encode_mask

from .base import ExactInstance, ProducedImage, SourceSkip, Task
from .pool import PoolConfig, describe_task, list_pool, open_pool_image

PLACEMENT_TRIES = 10  # positions tried per paste before giving up on it
PICK_TRIES = 5  # cut-outs tried per paste when one cannot be used (source image unreadable, too small)
ALPHA_LABEL = 0.5  # a pixel belongs to a paste where its alpha is at least this
SOURCE_CACHE = 16  # decoded source images kept per process


@dataclass
class CopyPasteConfig:
    """Which instances to cut out, where to paste them, and how."""

    instances: str = field(metadata=PATH)  # the labelled dataset the cut-outs come from (SA-Co or COCO JSON with masks)
    backgrounds: PoolConfig  # the images pasted onto (assumed to hold no instance of the pasted phrases)
    instances_format: Literal["auto", "coco", "saco"] = "auto"  # format of `instances` ("auto": detect)
    images: str | None = field(default=None, metadata=PATH)  # image root of `instances` (None: the file's own convention)
    num_images: int = 100  # images in the plan
    per_image: tuple[int, int] = (1, 3)  # min and max cut-outs pasted per image
    scale: tuple[float, float] = (0.5, 1.5)  # cut-out resize factor range (relative to its size in its image)
    blend: Literal["gaussian", "none"] = "gaussian"  # "gaussian": feathered edges (blurred mask as alpha);
    #                                                  "none": hard paste
    blend_sigma: float = 1.0  # gaussian feathering sigma in pixels
    min_visible: float = 0.3  # every paste keeps at least this fraction of its pixels visible (else re-placed)
    min_pixels: int = 16  # a cut-out with fewer label pixels after resizing is not pasted
    seed: int = 0  # every image is drawn from (seed, index)
    phrases: list[str] | None = None  # paste only these phrases (None: the ontology's phrases)
    exhaustive: bool = True  # the pasted phrases' labels are exhaustive (backgrounds hold none of them)


@dataclass
class _Cutout:
    """One instance of the dataset that can be pasted."""

    phrase: str
    image_path: Path | str  # a local path or a URL
    instance_index: int  # index of the instance among its phrase's instances in that image
    mask: RLE


class CopyPasteSource:
    """Pastes instance cut-outs onto pool backgrounds; labels exact by construction."""

    name = "copy_paste"

    def __init__(self, config: CopyPasteConfig, ontology: Any) -> None:
        self.config = config
        self.ontology = ontology
        lo, hi = config.per_image
        if not 1 <= lo <= hi:
            raise ConfigError(f"copy_paste: per_image must be [min, max] with 1 <= min <= max, got "
                              f"{list(config.per_image)}")
        if not 0 < config.scale[0] <= config.scale[1]:
            raise ConfigError(f"copy_paste: scale must be [min, max] with 0 < min <= max, got {list(config.scale)}")
        if not 0 <= config.min_visible <= 1:
            raise ConfigError(f"copy_paste: min_visible must be in [0, 1], got {config.min_visible}")
        if config.blend_sigma <= 0 and config.blend == "gaussian":
            raise ConfigError(f"copy_paste: blend_sigma must be > 0, got {config.blend_sigma}")
        if config.num_images < 0:
            raise ConfigError(f"copy_paste: num_images must be >= 0, got {config.num_images}")
        self.phrases: list[str] = list(config.phrases) if config.phrases is not None else list(ontology.phrases())
        self._backgrounds: list[Task] | None = None
        self._cutouts: list[_Cutout] | None = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    # --- planning -------------------------------------------------------------------------------------------

    def backgrounds(self) -> list[Task]:
        """The background pool, listed once (sorted)."""
        if self._backgrounds is None:
            self._backgrounds = list_pool(self.config.backgrounds)
        return self._backgrounds

    def plan(self) -> list[Task]:
        """num_images tasks {"key", "seed", "index", "background": a pool task} (the background drawn here)."""
        pool = self.backgrounds()
        tasks = []
        for i in range(self.config.num_images):
            pick = int(np.random.default_rng([self.config.seed, i, 0]).integers(len(pool)))
            background = {k: v for k, v in pool[pick].items() if k != "key"}
            tasks.append({"key": f"copy_paste-{i:06d}", "seed": self.config.seed, "index": i,
                          "background": background})
        return tasks

    # --- the instance library -------------------------------------------------------------------------------

    def setup(self, device: str) -> None:
        """Read the instance dataset (no model to load)."""
        self.cutouts()

    def cutouts(self) -> list[_Cutout]:
        """Every pasteable instance (with a mask, of an allowed phrase), in file order; read once."""
        if self._cutouts is None:
            from adapt.data.readers import read_dataset

            cfg = self.config
            result = read_dataset(cfg.instances, cfg.instances_format, cfg.images, check_image_files=False)
            allowed = set(self.phrases)
            cutouts = [
                _Cutout(group.phrase, sample.image_path, j, rle)
                for sample in result.samples
                for group in sample.phrases
                if group.phrase in allowed and group.masks is not None
                for j, rle in enumerate(group.masks)
            ]
            if not cutouts:
                raise ConfigError(f"copy_paste: {cfg.instances} has no instance with a mask of the phrases "
                                  f"{sorted(allowed)}")
            self._cutouts = cutouts
        return self._cutouts

    def _source_pixels(self, path: Path | str) -> np.ndarray:
        key = str(path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            pixels = np.asarray(load_image(path, str(path)))  # as displayed, like the masks of every reader
        except ImageError as err:
            raise ImageError(f"{path}: cannot decode ({err})") from None
        self._cache[key] = pixels
        if len(self._cache) > SOURCE_CACHE:
            self._cache.popitem(last=False)
        return pixels

    # --- producing ------------------------------------------------------------------------------------------

    def produce(self, tasks: Sequence[Task]) -> list[ProducedImage | SourceSkip]:
        """Paste each task's cut-outs onto its background (randomness from (seed, index) only)."""
        return [self._produce_one(task) for task in tasks]

    def _cut(self, cutout: _Cutout, scale: float,
             max_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float, int] | None:  # fmt: skip
        """(rgb (h, w, 3), alpha (h, w), scale used, feather padding) of a cut-out resized by about `scale` (less
        when it would not fit the background), or None when it cannot be used (mask of another size, too small)."""
        source = self._source_pixels(cutout.image_path)
        mask = decode_mask(cutout.mask).astype(bool)
        if mask.shape != source.shape[:2] or not mask.any():
            return None
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = source[y0:y1, x0:x1].astype(np.float32)
        crop_mask = mask[y0:y1, x0:x1].astype(np.float32)
        pad = int(math.ceil(3 * self.config.blend_sigma)) if self.config.blend == "gaussian" else 0
        limit = min((max_hw[0] - 2 * pad) / crop.shape[0], (max_hw[1] - 2 * pad) / crop.shape[1])
        scale = min(scale, limit)  # fit inside the background
        h, w = int(round(crop.shape[0] * scale)), int(round(crop.shape[1] * scale))
        if h < 1 or w < 1:
            return None
        m = _resize(crop_mask, h, w)
        # resize colour premultiplied by the mask, so no pixel of the source's surroundings bleeds into the cut-out
        premult = np.stack([_resize(crop[..., c] * crop_mask, h, w) for c in range(3)], -1)
        valid = m > 1e-3
        if not valid.any():
            return None
        rgb = premult / np.maximum(m, 1e-3)[..., None]
        hard = (m >= 0.5).astype(np.float32)
        if pad:
            from scipy.ndimage import gaussian_filter

            hard = np.pad(hard, pad)
            valid = np.pad(valid, pad)
            rgb = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)))
            alpha = gaussian_filter(hard, self.config.blend_sigma, mode="constant")
        else:
            alpha = hard
        if pad and not valid.all():  # the feathered rim: the nearest cut-out pixel's colour, never the source's
            from scipy.ndimage import distance_transform_edt

            _, (iy, ix) = distance_transform_edt(~valid, return_indices=True)
            rgb = rgb[iy, ix]
        if int((alpha >= ALPHA_LABEL).sum()) < max(1, self.config.min_pixels):
            return None
        return np.clip(rgb, 0, 255), alpha, h / crop.shape[0], pad

    def _produce_one(self, task: Task) -> ProducedImage | SourceSkip:
        cfg = self.config
        background = dict(task["background"])
        try:
            image, _ = open_pool_image(background)
        except ImageError as err:
            return SourceSkip(task["key"], str(err))
        canvas = np.asarray(image, np.float32).copy()
        height, width = canvas.shape[:2]
        owner = np.full((height, width), -1, np.int32)  # which paste each pixel shows (alpha >= 0.5)
        label_area: list[int] = []
        pasted: list[dict[str, Any]] = []
        cutouts = self.cutouts()
        rng = np.random.default_rng([int(task["seed"]), int(task["index"]), 1])
        count = int(rng.integers(cfg.per_image[0], cfg.per_image[1] + 1))
        for _ in range(count):
            for _pick in range(PICK_TRIES):
                index = int(rng.integers(len(cutouts)))
                scale = float(rng.uniform(*cfg.scale))
                cutout = cutouts[index]
                try:
                    cut = self._cut(cutout, scale, (height, width))
                except ImageError:
                    cut = None
                if cut is not None:
                    break
            else:
                continue
            rgb, alpha, used_scale, pad = cut
            label = alpha >= ALPHA_LABEL
            n_label = int(label.sum())
            ch, cw = alpha.shape
            new_id = len(pasted)
            visible = np.bincount(owner[owner >= 0], minlength=new_id)
            for _try in range(PLACEMENT_TRIES):
                y0 = int(rng.integers(0, height - ch + 1))
                x0 = int(rng.integers(0, width - cw + 1))
                covered = owner[y0:y0 + ch, x0:x0 + cw][label]
                hidden = np.bincount(covered[covered >= 0], minlength=new_id)
                if all(visible[j] - hidden[j] >= max(1.0, cfg.min_visible * label_area[j])
                       for j in np.flatnonzero(hidden)):
                    break
            else:
                continue
            region = canvas[y0:y0 + ch, x0:x0 + cw]
            region[:] = alpha[..., None] * rgb + (1 - alpha[..., None]) * region
            owner[y0:y0 + ch, x0:x0 + cw][label] = new_id
            label_area.append(n_label)
            pasted.append({"phrase": cutout.phrase, "source_image": str(cutout.image_path),
                           "instance_index": cutout.instance_index, "scale": round(used_scale, 6),
                           "xy": [x0 + pad, y0 + pad], "pasted_px": n_label, "visible_px": None})
        pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        for i, entry in enumerate(pasted):
            entry["visible_px"] = int((owner == i).sum())
        exact = [ExactInstance(p["phrase"], encode_mask(owner == i)) for i, p in enumerate(pasted)]
        exact_phrases = list(dict.fromkeys(p["phrase"] for p in pasted)) if cfg.exhaustive else []
        provenance = {"kind": "copy_paste", "background": describe_task(background), "seed": int(task["seed"]),
                      "index": int(task["index"]), "pasted": pasted}
        return ProducedImage(task["key"], Image.fromarray(pixels), provenance, exact=exact,
                             exact_phrases=exact_phrases)


def _resize(channel: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of one float channel."""
    if channel.shape == (h, w):
        return channel.astype(np.float32)
    return np.asarray(Image.fromarray(channel.astype(np.float32)).resize((w, h), Image.BILINEAR),
                      np.float32)

